"""Read attribution-graph JSON (circuit-tracer / Neuronpedia), check it at the door, and name its features.

Every graph that enters goes through `check_graph` (`load_graph` for a file, `parse_graph` for text): it
returns the graph or raises one BadInputError naming the file and the field path, e.g.
`graph.json: nodes[3].node_id: expected a string`. What passes is what Neuronpedia's graph schema
(shared/formats/neuronpedia/graph-schema.json) and circuit-tracer 0.5.0's writer and local save allow, and:

- metadata and qParams are objects, nodes and links lists; metadata.slug and metadata.scan are non-empty
  strings; every field the schema or circuit-tracer types has that type where present;
- nowhere a NaN or Infinity (JSON has none), a string with a lone surrogate, or nesting deeper than MAX_DEPTH;
- every node has the schema's required fields: node_id (non-empty), feature_type, jsNodeId and clerp strings,
  feature an integer or null, layer a string or integer, ctx_idx an integer from 0 to 2**63 - 1; its numbers
  are finite;
- every feature node (`is_feature_node`) names its feature: node_id `{layer}_{index}_{pos}` of non-negative
  integers of up to 18 digits, else (schema_version 1) a Cantor-paired `feature` from 0 to 2**63 - 1;
- no two feature nodes, and no two other nodes, share a node_id (circuit-tracer's error id `0_{layer}_{pos}`
  can equal a layer-0 feature's, so one of each may);
- every link's source and target are node ids of the graph and its weight is a finite number;
- qParams.pinnedIds is a list of strings, or a string (JSON list, or comma-separated ids as circuit-tracer's
  frontend saves it); qParams.supernodes a list of [label, node_id, ...] string lists, or a JSON string of one;
  qParams.clerps a list of [key, label] string pairs, or a JSON string of one; any qParams value may be null.
  `load_graph` and `decode_qparams` turn pinnedIds and supernodes into lists and drop null qParams; clerps stays.

`load_graph_model` and `parse_graph_model` do the same and return a featuredb.graph_models.Graph, the form the
tracer and the server work on; `as_graph` makes one of a graph some code already holds as JSON.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NoReturn

from featuredb.errors import BadInputError
from featuredb.graph_models import (NON_FEATURE_TYPES, Graph, Node, field_path, is_error_or_embedding_id,
                                   parse_feature_id)
from featuredb.identity import cantor_unpair

REQUIRED = ("metadata", "qParams", "nodes", "links")
MAX_DEPTH = 64  # circuit-tracer's graphs nest 6 levels deep; deeper is a broken or hostile file
MAX_INT = 2**63 - 1  # layers, feature indices and positions are BIGINTs in the store


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an integer beyond float range
        return False


def _strings(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


# kind -> (what the error says is expected, test)
KINDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "string": ("a string", lambda v: isinstance(v, str)),
    "string?": ("a string or null", lambda v: v is None or isinstance(v, str)),
    "name": ("a non-empty string", lambda v: isinstance(v, str) and v != ""),
    "int": ("an integer", _is_int),
    "int?": ("an integer or null", lambda v: v is None or _is_int(v)),
    "position": ("an integer from 0 to 2**63 - 1", lambda v: _is_int(v) and 0 <= v <= MAX_INT),
    "number": ("a finite number", _is_number),
    "number?": ("a finite number or null", lambda v: v is None or _is_number(v)),
    "layer": ("a string or an integer", lambda v: isinstance(v, str) or _is_int(v)),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "object": ("an object", lambda v: isinstance(v, dict)),
    "object?": ("an object or null", lambda v: v is None or isinstance(v, dict)),
    "strings": ("a list of strings", _strings),
}
# field -> (kind, required)
METADATA_FIELDS = {
    "slug": ("name", True), "scan": ("name", True), "prompt": ("string", False), "prompt_tokens": ("strings", False),
    "transcoder_list": ("strings", False), "schema_version": ("int?", False), "node_threshold": ("number?", False),
    "feature_details": ("object?", False), "info": ("object", False), "generation_settings": ("object", False),
    "pruning_settings": ("object", False), "replacement_score": ("number", False),
    "completeness_score": ("number", False),
}
FEATURE_DETAILS_FIELDS = {k: ("string?", False) for k in
                          ("neuronpedia_source_set", "neuronpedia_lorsa_source_set", "feature_json_base_url")}
QPARAMS_FIELDS = {k: ("string?", False) for k in ("linkType", "clickedId", "sg_pos")}
NODE_FIELDS = {
    "node_id": ("name", True), "feature": ("int?", True), "layer": ("layer", True), "ctx_idx": ("position", True),
    "feature_type": ("string", True), "jsNodeId": ("string", True), "clerp": ("string", True),
    "influence": ("number?", False), "activation": ("number?", False), "token_prob": ("number?", False),
    "is_target_logit": ("bool", False), "run_idx": ("int", False), "reverse_ctx_idx": ("int", False),
    "qk_tracing_results": ("object", False),
}
LINK_FIELDS = {"source": ("string", True), "target": ("string", True), "weight": ("number", True)}


@dataclass(frozen=True)
class FeatureNode:
    """A graph node that is a transcoder feature: its node id, layer, index within the layer and position."""

    node_id: str
    layer: int
    index: int
    ctx_idx: int


def _show(value: Any) -> str:
    """A value for a message: JSON, cut at 60 characters."""
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass
class _Checker:
    where: str

    def fail(self, path: tuple[str | int, ...], message: str) -> NoReturn:
        raise BadInputError(f"{self.where}: {field_path(path)}: {message}")

    def fields(self, obj: dict[str, Any], spec: dict[str, tuple[str, bool]], path: tuple[str | int, ...]) -> None:
        for key, (kind, required) in spec.items():
            if key not in obj:
                if required:
                    self.fail((*path, key), "missing")
                continue
            expected, ok = KINDS[kind]
            if not ok(obj[key]):
                value = obj[key]
                if kind == "strings" and isinstance(value, list):
                    bad = next(i for i, x in enumerate(value) if not isinstance(x, str))
                    self.fail((*path, key, bad), "expected a string")
                self.fail((*path, key), f"expected {expected}")

    def object(self, value: Any, path: tuple[str | int, ...]) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(path, "expected an object")
        return value

    def json_string(self, value: str, path: tuple[str | int, ...]) -> Any:
        try:
            return json.loads(value)
        except (ValueError, RecursionError):
            self.fail(path, "expected a list or a JSON string of one")


def _scan(value: Any, path: tuple[str | int, ...] = (),
          skip: str | None = None) -> tuple[tuple[str | int, ...], str] | None:
    """The path and fault of the first NaN/Infinity, lone surrogate or too-deep nesting in `value` (a dict or list,
    at `path`; its key `skip` left out); None if clean."""
    top = {k: v for k, v in value.items() if k != skip} if isinstance(value, dict) and skip else value
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(top, path)]
    while stack:
        container, path = stack.pop()
        if len(path) >= MAX_DEPTH:
            return path[:3], f"nested more than {MAX_DEPTH} levels deep"
        items = container.items() if isinstance(container, dict) else enumerate(container)
        for key, v in items:
            if isinstance(key, str) and not key.isascii() and _lone_surrogate(key):
                return (*path, key), "not valid Unicode (a lone surrogate)"
            if isinstance(v, float):
                if not math.isfinite(v):
                    return (*path, key), "expected a finite number (JSON has no NaN or Infinity)"
            elif isinstance(v, str):
                if not v.isascii() and _lone_surrogate(v):
                    return (*path, key), "not valid Unicode (a lone surrogate)"
            elif isinstance(v, (dict, list)):
                stack.append((v, (*path, key)))
    return None


def _lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _feature_of(node: dict[str, Any] | Node, cantor: bool) -> tuple[int, int, int] | None:
    """(layer, index, pos) of a feature node from node_id "{layer}_{index}_{pos}", else its Cantor `feature`."""
    if isinstance(node, Node):
        node = {"node_id": node.node_id, "feature": node.feature, "ctx_idx": node.ctx_idx}
    found = parse_feature_id(str(node.get("node_id", "")))
    if found is not None:
        return found
    feature, pos = node.get("feature"), node.get("ctx_idx", 0)
    if cantor and _is_int(feature) and 0 <= feature <= MAX_INT and _is_int(pos) and 0 <= pos <= MAX_INT:
        layer, index = cantor_unpair(feature)
        return layer, index, pos
    return None


def _qparam_list(check: _Checker, value: Any, key: str) -> list[Any]:
    """pinnedIds / supernodes / clerps as a list: null is empty; a string is JSON (pinnedIds: or comma-separated)."""
    path: tuple[str | int, ...] = ("qParams", key)
    if value is None:
        return []
    if isinstance(value, str):
        if not value.strip():
            return []
        if key == "pinnedIds" and not value.lstrip().startswith("["):
            return [p for p in value.split(",") if p]
        value = check.json_string(value, path)
    if not isinstance(value, list):
        check.fail(path, "expected a list or a JSON string of one")
    for i, item in enumerate(value):
        if key == "pinnedIds":
            if not isinstance(item, str):
                check.fail((*path, i), "expected a node id (a string)")
        elif key == "supernodes":
            if not (isinstance(item, list) and item and all(isinstance(x, str) for x in item)):
                check.fail((*path, i), "expected [label, node_id, ...] (strings)")
        elif not (isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item)):
            check.fail((*path, i), "expected [feature key, label] (two strings)")
    return value


def check_graph(graph: Any, where: str) -> dict[str, Any]:
    """Return `graph` if it is a graph this module's docstring accepts; else one BadInputError naming the field."""
    check = _Checker(where)
    if not isinstance(graph, dict):
        raise BadInputError(f"{where}: a graph must be a JSON object")
    missing = [k for k in REQUIRED if k not in graph]
    if missing:
        raise BadInputError(f"{where}: missing required key(s) {', '.join(missing)}")
    meta = check.object(graph["metadata"], ("metadata",))
    qp = check.object(graph["qParams"], ("qParams",))
    nodes, links = graph["nodes"], graph["links"]
    for key, value in (("nodes", nodes), ("links", links)):
        if not isinstance(value, list):
            check.fail((key,), "expected a list")
    fault = _scan(graph, skip="links")  # links are checked one by one below
    if fault:
        check.fail(*fault)
    check.fields(meta, METADATA_FIELDS, ("metadata",))
    if isinstance(meta.get("feature_details"), dict):
        check.fields(meta["feature_details"], FEATURE_DETAILS_FIELDS, ("metadata", "feature_details"))
    check.fields(qp, QPARAMS_FIELDS, ("qParams",))
    for key in ("pinnedIds", "supernodes", "clerps"):
        _qparam_list(check, qp.get(key), key)
    _check_nodes(check, nodes, cantor=meta.get("schema_version") == 1)
    _check_links(check, links, {n["node_id"] for n in nodes})
    return graph


def _check_links(check: _Checker, links: list[Any], ids: set[str]) -> None:
    """Each link's fields, ends and extra keys; the common case (exactly source, target, weight) is fast."""
    for i, link in enumerate(links):
        if type(link) is dict and len(link) == 3:
            s, t, w = link.get("source"), link.get("target"), link.get("weight")
            if (type(s) is str and type(t) is str and s in ids and t in ids  # ids hold only scanned strings
                    and (w - w == 0.0 if type(w) is float else _is_number(w))):
                continue
        check.fields(check.object(link, ("links", i)), LINK_FIELDS, ("links", i))
        for end in ("source", "target"):
            if link[end] not in ids:
                check.fail(("links", i, end), f"no node has the id {_show(link[end])}")
        fault = _scan(link, ("links", i))
        if fault:
            check.fail(*fault)


def _check_nodes(check: _Checker, nodes: list[Any], *, cantor: bool) -> None:
    """Each node's fields, each feature node's feature, and no repeated ids within feature or other nodes."""
    seen: tuple[dict[str, int], dict[str, int]] = ({}, {})
    for i, node in enumerate(nodes):
        check.fields(check.object(node, ("nodes", i)), NODE_FIELDS, ("nodes", i))
        feature = is_feature_node(node)
        if feature and _feature_of(node, cantor) is None:
            check.fail(("nodes", i, "node_id"), "a feature node needs node_id '{layer}_{feature}_{pos}' (integers "
                                                "of up to 18 digits), or metadata.schema_version 1 and a feature "
                                                "from 0 to 2**63 - 1")
        first = seen[feature].setdefault(node["node_id"], i)
        if first != i:
            check.fail(("nodes", i, "node_id"), f"{_show(node['node_id'])} repeats nodes[{first}]")


def decode_qparams(graph: dict[str, Any], where: str = "graph") -> dict[str, Any]:
    """In place: qParams.pinnedIds and supernodes become lists (from null or circuit-tracer's string forms), and
    other null qParams go, as circuit-tracer's frontend drops them on reading (the schema allows no null there)."""
    check = _Checker(where)
    qp = graph["qParams"]
    for key in ("pinnedIds", "supernodes"):
        if key in qp:
            qp[key] = _qparam_list(check, qp[key], key)
    for key in [k for k, v in qp.items() if v is None]:
        del qp[key]
    return graph


def parse_graph(text: str | bytes, where: str) -> dict[str, Any]:
    """Parse graph JSON text, check it and decode its qParams lists; anything wrong is a one-line BadInputError."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8-sig")
        graph = json.loads(text.removeprefix("\ufeff"))
    except UnicodeDecodeError as e:
        raise BadInputError(f"{where}: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise BadInputError(f"{where}:{e.lineno}: malformed JSON ({e.msg})") from None
    except RecursionError:
        raise BadInputError(f"{where}: nested too deeply to be a graph") from None
    except ValueError as e:  # an integer of more than 4,300 digits
        raise BadInputError(f"{where}: malformed JSON ({str(e).split(':')[0]})") from None
    return decode_qparams(check_graph(graph, where), where)


def parse_graph_model(text: str | bytes, where: str) -> Graph:
    """parse_graph's graph as a Graph model: parsed and checked once, here at the door."""
    return Graph.from_checked(parse_graph(text, where))


def load_graph_model(path: str | Path) -> Graph:
    """load_graph's graph as a Graph model: read, parsed and checked once, here at the door."""
    return Graph.from_checked(load_graph(path))


def as_graph(graph: Graph | dict[str, Any], where: str = "graph") -> Graph:
    """A Graph as it is; graph JSON checked (check_graph, its qParams decoded) and made a Graph."""
    if isinstance(graph, Graph):
        return graph
    return Graph.from_checked(decode_qparams(check_graph(graph, where), where))


def load_graph(path: str | Path) -> dict[str, Any]:
    """Read, parse and check a graph file (see the module docstring); anything wrong is a one-line BadInputError."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise BadInputError(f"{p}: no such graph file") from None
    except OSError as e:
        raise BadInputError(f"{p}: cannot read the graph file ({e.strerror or e})") from None
    return parse_graph(data, str(p))


def is_feature_node(node: dict[str, Any] | Node) -> bool:
    """True for transcoder (and lorsa) feature nodes; False for embeddings, logits and both error-node formats."""
    if isinstance(node, Node):
        return node.is_feature
    kind = str(node.get("feature_type", "")).lower()
    if kind in NON_FEATURE_TYPES or "error" in kind:
        return False
    if is_error_or_embedding_id(str(node.get("node_id", ""))):
        return False
    return node.get("feature") is not None


def feature_node_dicts(graph: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """node_id -> node for feature nodes only: circuit-tracer's error ids `0_{layer}_{pos}` can equal a layer-0
    feature's `{layer}_{feature}_{pos}`, so a lookup over all nodes would find the error node."""
    return {n["node_id"]: n for n in graph["nodes"] if is_feature_node(n)}


def feature_nodes(graph: Graph | dict[str, Any]) -> list[FeatureNode]:
    """Every feature node, from node_id "{layer}_{index}_{pos}" (else the Cantor-paired `feature`, schema v1)."""
    if isinstance(graph, Graph):
        cantor, nodes = graph.metadata.schema_version == 1, list(graph.feature_nodes())
    else:
        cantor = graph.get("metadata", {}).get("schema_version") == 1
        nodes = [n for n in graph["nodes"] if is_feature_node(n)]
    out = []
    for node in nodes:
        found = _feature_of(node, cantor)
        if found is None:
            node_id = node.node_id if isinstance(node, Node) else node.get("node_id")
            raise BadInputError(f"node {node_id!r}: expected '{{layer}}_{{feature}}_{{pos}}'")
        out.append(FeatureNode(str(node.node_id if isinstance(node, Node) else node["node_id"]), *found))
    return out


def graph_metadata(graph: Graph | dict[str, Any]) -> dict[str, Any]:
    """The graph's metadata as JSON (a Graph's fields and extras); {} where graph JSON has no metadata object."""
    if isinstance(graph, Graph):
        return graph.metadata.model_dump(exclude_unset=True)
    meta = graph.get("metadata")
    return meta if isinstance(meta, dict) else {}


def graph_model(graph: Graph | dict[str, Any], override: str | None = None) -> str:
    """The model id: --model, else metadata.scan (its last path part, as Neuronpedia ids are short names)."""
    if override:
        return override
    scan = str(graph.metadata.scan if isinstance(graph, Graph) else graph["metadata"]["scan"])
    return scan.split("/")[-1].split("@")[0] if "/" in scan else scan


def graph_source_set(graph: Graph | dict[str, Any], override: str | None = None) -> str | None:
    """The source set: --source-set, metadata.feature_details.neuronpedia_source_set, else transcoder_list."""
    if override:
        return override
    meta = graph_metadata(graph)
    details = meta.get("feature_details") or {}
    if details.get("neuronpedia_source_set"):
        return str(details["neuronpedia_source_set"])
    tl = meta.get("transcoder_list")
    if isinstance(tl, list) and tl:
        first = str(tl[0])
        return first.split("-", 1)[1] if "-" in first and first.split("-", 1)[0].isdigit() else first
    return None
