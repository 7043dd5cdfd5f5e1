"""Read attribution-graph JSON (circuit-tracer / Neuronpedia) and name the features its nodes use."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featuredb.errors import BadInputError
from featuredb.identity import cantor_unpair

REQUIRED = ("metadata", "qParams", "nodes", "links")
NON_FEATURE_TYPES = {"embedding", "logit", "mlp reconstruction error", "lorsa error", "error"}


@dataclass(frozen=True)
class FeatureNode:
    """A graph node that is a transcoder feature: its node id, layer, index within the layer and position."""

    node_id: str
    layer: int
    index: int
    ctx_idx: int


def check_graph(graph: Any, where: str) -> None:
    """A graph needs metadata (with slug and scan), qParams, nodes and links; else a one-line BadInputError."""
    if not isinstance(graph, dict):
        raise BadInputError(f"{where}: a graph must be a JSON object")
    missing = [k for k in REQUIRED if k not in graph]
    if missing:
        raise BadInputError(f"{where}: missing required key(s) {', '.join(missing)}")
    for k in ("scan", "slug"):
        if not isinstance(graph["metadata"], dict) or not graph["metadata"].get(k):
            raise BadInputError(f"{where}: metadata.{k} is missing")


def load_graph(path: str | Path) -> dict[str, Any]:
    """Parse a graph file; a malformed file or missing key is a one-line BadInputError."""
    p = Path(path)
    try:
        graph = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInputError(f"{p}: no such graph file") from None
    except json.JSONDecodeError as e:
        raise BadInputError(f"{p}:{e.lineno}: malformed JSON ({e.msg})") from None
    check_graph(graph, str(p))
    qp = graph["qParams"]
    for k in ("pinnedIds", "supernodes"):  # circuit-tracer's local save writes these as JSON strings
        if isinstance(qp.get(k), str):
            try:
                qp[k] = json.loads(qp[k]) if qp[k] else []
            except json.JSONDecodeError:
                raise BadInputError(f"{p}: qParams.{k} is neither a list nor a JSON string of one") from None
    return graph


def is_feature_node(node: dict[str, Any]) -> bool:
    """True for transcoder (and lorsa) feature nodes; False for embeddings, logits and both error-node formats."""
    kind = str(node.get("feature_type", "")).lower()
    if kind in NON_FEATURE_TYPES or "error" in kind:
        return False
    node_id = str(node.get("node_id", ""))
    parts = node_id.split("_")
    if node_id.startswith("E_") or (len(parts) == 3 and parts[1] == "-1"):
        return False
    return node.get("feature") is not None


def feature_node_dicts(graph: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """node_id -> node for feature nodes only: circuit-tracer's error ids `0_{layer}_{pos}` can equal a layer-0
    feature's `{layer}_{feature}_{pos}`, so a lookup over all nodes would find the error node."""
    return {n["node_id"]: n for n in graph["nodes"] if is_feature_node(n)}


def feature_nodes(graph: dict[str, Any]) -> list[FeatureNode]:
    """Every feature node, from node_id "{layer}_{index}_{pos}" (else the Cantor-paired `feature`, schema v1)."""
    cantor = graph.get("metadata", {}).get("schema_version") == 1
    out = []
    for node in graph["nodes"]:
        if not is_feature_node(node):
            continue
        parts = str(node["node_id"]).split("_")
        try:
            layer, index, pos = int(parts[0]), int(parts[1]), int(parts[-1])
        except (ValueError, IndexError):
            if not cantor:
                raise BadInputError(f"node {node.get('node_id')!r}: expected '{{layer}}_{{feature}}_{{pos}}'") from None
            layer, index = cantor_unpair(int(node["feature"]))
            pos = int(node.get("ctx_idx", 0))
        out.append(FeatureNode(str(node["node_id"]), layer, index, pos))
    return out


def graph_model(graph: dict[str, Any], override: str | None = None) -> str:
    """The model id: --model, else metadata.scan (its last path part, as Neuronpedia ids are short names)."""
    if override:
        return override
    scan = str(graph["metadata"]["scan"])
    return scan.split("/")[-1].split("@")[0] if "/" in scan else scan


def graph_source_set(graph: dict[str, Any], override: str | None = None) -> str | None:
    """The source set: --source-set, metadata.feature_details.neuronpedia_source_set, else transcoder_list."""
    if override:
        return override
    details = graph["metadata"].get("feature_details") or {}
    if details.get("neuronpedia_source_set"):
        return str(details["neuronpedia_source_set"])
    tl = graph["metadata"].get("transcoder_list")
    if isinstance(tl, list) and tl:
        first = str(tl[0])
        return first.split("-", 1)[1] if "-" in first and first.split("-", 1)[0].isdigit() else first
    return None
