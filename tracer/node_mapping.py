"""Map a graph's feature nodes to store features: model from metadata.scan, source set from the graph or options."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from featuredb.errors import BadInputError
from featuredb.formats.graph_json import FeatureNode, feature_nodes
from featuredb.graph_models import Graph
from featuredb.store.graph_identity import resolve_model, resolve_source_set, source_sets
from featuredb.identity import source_id
from featuredb.store.schema import feature_key
from featuredb.store.feature_store import FeatureStore
from featuredb.store.reads import model_ids, present_keys


@dataclass(frozen=True)
class MappedNode:
    """A feature node and the store feature it names."""

    node: FeatureNode
    source: str
    key: str


@dataclass
class NodeMapping:
    """Which store feature each feature node is, and which nodes map to nothing (with why)."""

    model: str
    source_set: str
    mapped: list[MappedNode] = field(default_factory=list)
    unmapped: list[tuple[str, str]] = field(default_factory=list)  # (node_id, reason)
    absent: list[MappedNode] = field(default_factory=list)  # unmapped nodes' would-be features (for --online)


def map_nodes(store: FeatureStore, graph: Graph | dict[str, Any], *, where: str = "graph", model: str | None = None,
              source_set: str | None = None) -> NodeMapping:
    """Resolve model and source set, then look every feature node up in the store."""
    model = resolve_model(store.con, graph, model)
    models = model_ids(store, having="features")
    if model not in models:
        has = ", ".join(models) or "no features at all"
        raise BadInputError(f"{where}: the graph is for model {model!r}, which the store lacks (it has: {has}); "
                            "pass --model to map it to another")
    source_set = resolve_source_set(store.con, graph, model, source_set)
    if source_set is None:
        sets = source_sets(store.con, model)
        raise BadInputError(f"{where}: the graph names no source set of the store's and the store has {len(sets)} "
                            f"for {model} ({', '.join(sets)}); pass --source-set")
    try:
        nodes = feature_nodes(graph)
    except BadInputError as e:
        raise BadInputError(f"{where}: {e}") from None
    mapping = NodeMapping(model, source_set)
    keys = [feature_key(model, source_id(n.layer, source_set), n.index) for n in nodes]
    present = present_keys(store, keys)
    for n, key in zip(nodes, keys):
        if key in present:
            mapping.mapped.append(MappedNode(n, source_id(n.layer, source_set), key))
        else:
            mapping.unmapped.append((n.node_id, f"{key} is not in the store"))
            mapping.absent.append(MappedNode(n, source_id(n.layer, source_set), key))
    return mapping
