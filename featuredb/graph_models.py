"""Attribution graphs (circuit-tracer / Neuronpedia graph JSON) as pydantic models, and the node-id schemes.

The models follow circuit-tracer's `circuit_tracer/frontend/graph_models.py` (Metadata, QParams, Node, Link,
Model) field for field and in its order, so a graph circuit-tracer wrote dumps back with its keys where they were;
every model keeps the extra fields real graphs carry (Neuronpedia's feature_details, info, qk_tracing_results,
qParams.clerps ...) and `Graph.to_json` writes only what the graph had (exclude_unset), nulls included.

A graph file is checked and turned into a Graph once, at the door (`featuredb.formats.graph_json.load_graph_model`
and `parse_graph_model`: one-line errors naming the file and the field); `Graph.from_checked` builds the models
from JSON that check already passed, and `Graph.from_json_dict(data, where)` validates with pydantic, its first
error made the same kind of one-line BadInputError. Links stay typed dicts (`Link`): on a 10,000-node,
500,000-link graph a model per link cost 2-4 s to build against 0.06 s for the whole Graph this way.

Node ids, as circuit-tracer 0.5.0 writes them (`Node.feature_node`, `error_node`, `token_node`, `logit_node`):
feature `{layer}_{index}_{ctx}`, error `0_{layer}_{ctx}` (it can equal a layer-0 feature's id), embedding
`E_{token_id}_{ctx}`, logit `{n_layers + 1}_{token_id}_{ctx}`; Neuronpedia's graphs also write error nodes as
`{layer}_-1_{ctx}`.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict

from featuredb.errors import BadInputError

NON_FEATURE_TYPES = {"embedding", "logit", "mlp reconstruction error", "lorsa error", "error"}
MAX_ID_DIGITS = 18  # a node id's numbers fit a BIGINT


def feature_id(layer: int | str, index: int, ctx: int) -> str:
    """A feature node's id, `{layer}_{index}_{ctx}` (circuit-tracer's Node.feature_node)."""
    return f"{layer}_{index}_{ctx}"


def error_id(layer: int | str, ctx: int) -> str:
    """A reconstruction-error node's id as circuit-tracer 0.5.0 writes it, `0_{layer}_{ctx}` (Node.error_node)."""
    return f"0_{layer}_{ctx}"


def embedding_id(token_id: int, ctx: int) -> str:
    """An embedding (input token) node's id, `E_{token_id}_{ctx}` (circuit-tracer's Node.token_node)."""
    return f"E_{token_id}_{ctx}"


def logit_id(n_layers: int, token_id: int, ctx: int) -> str:
    """A logit node's id, `{n_layers + 1}_{token_id}_{ctx}` (circuit-tracer's Node.logit_node)."""
    return f"{n_layers + 1}_{token_id}_{ctx}"


def parse_feature_id(node_id: str) -> tuple[int, int, int] | None:
    """(layer, index, ctx) of an id `{layer}_{index}_{ctx}` of non-negative integers of up to 18 digits, else None."""
    parts = str(node_id).split("_")
    if len(parts) == 3 and all(p.isascii() and p.isdigit() and len(p) <= MAX_ID_DIGITS for p in parts):
        return int(parts[0]), int(parts[1]), int(parts[2])
    return None


def is_error_or_embedding_id(node_id: str) -> bool:
    """True for ids no feature has: embeddings `E_...` and Neuronpedia's error ids `{layer}_-1_{ctx}`."""
    node_id = str(node_id)
    parts = node_id.split("_")
    return node_id.startswith("E_") or (len(parts) == 3 and parts[1] == "-1")


class _Open(BaseModel):
    """A model that keeps whatever extra fields the JSON has, and lets code set fields after reading."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)


class GraphMetadata(_Open):
    """The graph's `metadata` (circuit-tracer's Metadata, plus Neuronpedia's optional fields)."""

    slug: str
    scan: str
    transcoder_list: list[str] | None = None
    prompt_tokens: list[str] | None = None
    prompt: str | None = None
    node_threshold: float | int | None = None
    schema_version: int | None = None
    feature_details: dict[str, Any] | None = None


class QParams(_Open):
    """The graph's `qParams`: pinned ids, supernodes [label, node_id, ...], the frontend's view, saved clerps."""

    pinnedIds: list[str] = []
    supernodes: list[list[str]] = []
    linkType: str | None = None
    clickedId: str | None = None
    sg_pos: str | None = None
    clerps: list[list[str]] | str | None = None  # a JSON string, as the frontends read and save it


class Node(_Open):
    """One graph node (circuit-tracer's Node); `feature` is null or -1 for nodes that are not features."""

    node_id: str
    feature: int | None
    layer: str | int
    ctx_idx: int
    feature_type: str
    token_prob: float | int | None = 0.0
    is_target_logit: bool = False
    run_idx: int = 0
    reverse_ctx_idx: int = 0
    jsNodeId: str
    clerp: str = ""
    influence: float | int | None = None
    activation: float | int | None = None

    feature_id = staticmethod(feature_id)
    error_id = staticmethod(error_id)
    embedding_id = staticmethod(embedding_id)
    logit_id = staticmethod(logit_id)
    parse_feature_id = staticmethod(parse_feature_id)

    @property
    def is_feature(self) -> bool:
        """True for transcoder (and lorsa) feature nodes; False for embeddings, logits and both error-id formats."""
        kind = str(getattr(self, "feature_type", "")).lower()
        if kind in NON_FEATURE_TYPES or "error" in kind:
            return False
        if is_error_or_embedding_id(getattr(self, "node_id", "")):
            return False
        return getattr(self, "feature", None) is not None


@with_config(ConfigDict(extra="allow", strict=True, allow_inf_nan=False))
class Link(TypedDict):
    """One weighted edge from node id `source` to node id `target` (circuit-tracer's Link): a typed dict, not a
    model, as a graph has up to ~500,000 and a model each would cost seconds (circuit-tracer keeps them as dicts)."""

    source: str
    target: str
    weight: float


class Graph(_Open):
    """A whole attribution graph: metadata, qParams, nodes and links (circuit-tracer's Model)."""

    metadata: GraphMetadata
    qParams: QParams
    nodes: list[Node]
    links: list[Link]

    @classmethod
    def from_checked(cls, data: dict[str, Any]) -> Graph:
        """The Graph of JSON that graph_json.check_graph passed: metadata, qParams and nodes validated (cheap),
        the links list taken as it is (check_graph checked each; validating ~500,000 again would cost seconds)."""
        return cls.model_construct(
            metadata=GraphMetadata.model_validate(data["metadata"]), qParams=QParams.model_validate(data["qParams"]),
            nodes=_NODES.validate_python(data["nodes"]), links=data["links"],
            **{k: v for k, v in data.items() if k not in _PARTS})

    @classmethod
    def from_code(cls, data: dict[str, Any]) -> Graph:
        """The Graph of JSON built by code in this process (tests, planted graphs), parts missing or not: no checks."""
        return cls.model_construct(
            metadata=GraphMetadata.model_construct(**(data.get("metadata") or {})),
            qParams=QParams.model_construct(**(data.get("qParams") or {})),
            nodes=[Node.model_construct(**n) for n in data.get("nodes") or []], links=list(data.get("links") or []),
            **{k: v for k, v in data.items() if k not in _PARTS})

    @classmethod
    def from_json_dict(cls, data: Any, where: str = "graph") -> Graph:
        """Validate graph JSON with pydantic; the first error is one BadInputError `{where}: {field}: {problem}`."""
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise BadInputError(f"{where}: {one_line(e)}") from None

    def to_json(self) -> dict[str, Any]:
        """The graph as JSON-ready dicts: the fields it was read with (nulls kept) and those set since."""
        return self.model_dump(mode="json", exclude_unset=True)

    def feature_nodes(self) -> Iterator[Node]:
        """The nodes that are transcoder features (Node.is_feature), in graph order."""
        return (n for n in self.nodes if n.is_feature)

    def feature_node_by_id(self) -> dict[str, Node]:
        """node_id -> node for feature nodes only: an error id `0_{layer}_{ctx}` can equal a layer-0 feature's."""
        return {n.node_id: n for n in self.nodes if n.is_feature}


_PARTS = ("metadata", "qParams", "nodes", "links")


def coerce_graph(graph: Graph | dict[str, Any]) -> Graph:
    """A Graph as it is; graph JSON that code in this process holds (whole or in part) as one, unchecked."""
    return graph if isinstance(graph, Graph) else Graph.from_code(graph)
_NODES = TypeAdapter(list[Node])


# pydantic error type -> what graph_json's checker says for the same fault
_SAID = {"missing": "missing", "string_type": "expected a string", "int_type": "expected an integer",
         "float_type": "expected a number", "bool_type": "expected true or false", "list_type": "expected a list",
         "dict_type": "expected an object", "model_type": "expected an object", "finite_number": "expected a finite number"}


def one_line(error: ValidationError) -> str:
    """`nodes[3].node_id: expected a string`: a pydantic error's first fault as the field path and the problem."""
    first = error.errors(include_url=False)[0]
    problem = _SAID.get(first["type"]) or first["msg"][:1].lower() + first["msg"][1:]
    return f"{field_path(tuple(first['loc']))}: {' '.join(problem.split())}"


def field_path(parts: tuple[str | int, ...]) -> str:
    """`nodes[3].node_id` from ("nodes", 3, "node_id"); odd keys are quoted so the message stays one line."""
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif p.isidentifier() and p.isascii():
            out += f".{p}" if out else p
        else:
            out += f"[{json.dumps(p)}]"
    return out or "(the top level)"
