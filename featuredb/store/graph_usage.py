"""Which attribution graphs use a feature: each graph's feature nodes, read once per change of the graph."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from featuredb.errors import BadInputError
from featuredb.formats.graph_json import feature_node_dicts, feature_nodes
from featuredb.store.graph_identity import resolve_source_set
from featuredb.identity import layer_of_source, set_of_source


@dataclass
class GraphUse:
    """One graph in which a feature appears: where to open it and at which prompt tokens."""

    slug: str
    url: str
    prompt: str | None
    nodes: int
    tokens: list[str] = field(default_factory=list)  # the prompt tokens its nodes sit at, in prompt order
    max_activation: float | None = None


@dataclass
class GraphFeatureNodes:
    """One graph's feature nodes grouped by (layer, index): positions and the largest activation."""

    prompt: str | None
    source_set: str | None
    by_feature: dict[tuple[int, int], tuple[list[int], float | None]]
    prompt_tokens: list[str]


def read_feature_nodes(graph: dict[str, Any], source_set: str | None) -> GraphFeatureNodes:
    """Group a graph's feature nodes by (layer, index); a graph whose nodes cannot be read counts as using none."""
    meta = graph.get("metadata") if isinstance(graph.get("metadata"), dict) else {}
    tokens = meta.get("prompt_tokens") if isinstance(meta.get("prompt_tokens"), list) else []
    by_feature: dict[tuple[int, int], tuple[list[int], float | None]] = {}
    try:
        nodes = feature_nodes(graph)
        dicts = feature_node_dicts(graph)
    except (BadInputError, KeyError, TypeError, AttributeError):
        nodes, dicts = [], {}
    for n in nodes:
        positions, best = by_feature.get((n.layer, n.index), ([], None))
        act = dicts.get(n.node_id, {}).get("activation")
        if isinstance(act, (int, float)) and not isinstance(act, bool):
            best = float(act) if best is None else max(best, float(act))
        by_feature[(n.layer, n.index)] = ([*positions, n.ctx_idx], best)
    prompt = meta.get("prompt")
    return GraphFeatureNodes(str(prompt) if prompt is not None else None, source_set, by_feature,
                         [str(t) for t in tokens])


def uses_of(found: GraphFeatureNodes, slug: str, url: str, source: str, index: int) -> GraphUse | None:
    """The GraphUse of the feature `source`/`index` in one graph's nodes, or None when it is not there."""
    try:
        layer = layer_of_source(source)
    except ValueError:
        return None
    if found.source_set is not None and found.source_set != set_of_source(source):
        return None
    hit = found.by_feature.get((layer, index))
    if hit is None:
        return None
    positions, best = hit
    tokens = [found.prompt_tokens[p] if 0 <= p < len(found.prompt_tokens) else f"#{p}" for p in sorted(set(positions))]
    return GraphUse(slug, url, found.prompt, len(positions), tokens, best)


class StoreGraphUses:
    """The graphs in the store's `graphs` table that use a feature; a graph is parsed again only when it changes."""

    def __init__(self, graph_url: Callable[[str, str], str]) -> None:
        self.graph_url = graph_url  # (model, slug) -> the link a page shows
        self._cache: dict[tuple[str, str], tuple[Any, GraphFeatureNodes]] = {}
        self._lock = threading.Lock()

    def __call__(self, store: Any, model: str, source: str, index: int) -> list[GraphUse]:
        """Every stored graph of `model` with a node of the feature, newest first."""
        con = store.con
        listed = con.execute('SELECT slug, "updatedAt", "createdAt", "sourceSetName" FROM graphs '
                             'WHERE "modelId" = ? ORDER BY "updatedAt" DESC, slug', [model]).fetchall()
        out = []
        for slug, updated, created, sset in listed:
            stamp = (updated, created, sset)
            with self._lock:
                hit = self._cache.get((model, slug))
            if hit is None or hit[0] != stamp:
                row = con.execute('SELECT data FROM graphs WHERE "modelId" = ? AND slug = ?', [model, slug]).fetchone()
                if row is None:
                    continue
                try:
                    graph = json.loads(row[0])
                except (json.JSONDecodeError, TypeError):
                    continue
                resolved = sset or resolve_source_set(con, graph, model)
                hit = (stamp, read_feature_nodes(graph, resolved))
                with self._lock:
                    self._cache[(model, slug)] = hit
            use = uses_of(hit[1], slug, self.graph_url(model, slug), source, index)
            if use is not None:
                out.append(use)
        return out
