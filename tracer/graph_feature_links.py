"""`trace serve` ties graphs and feature pages together: each feature node's `vis_link` (the link circuit-tracer's
feature panel puts on a node's title) points at the node's feature page, and a feature page lists the graphs in
the folder that use the feature, each linking back to its graph view."""

from __future__ import annotations

import copy
import json
import threading
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

from featuredb.errors import BadInputError
from featuredb.formats.graph_json import feature_node_dicts, feature_nodes
from featuredb.store.graph_identity import resolve_model, resolve_source_set
from featuredb.store.graph_usage import GraphUse, read_feature_nodes, uses_of
from featuredb.identity import source_id
from featuredb.server.page_layout import feature_url
from featuredb.store.feature_store import FeatureStore

Identity = Callable[[dict[str, Any]], tuple[str, str | None]]


def with_feature_links(graph: dict[str, Any], model: str, source_set: str | None) -> dict[str, Any]:
    """A copy of the graph whose feature nodes' vis_link is the local feature page (/{model}/{source}/{index})."""
    if not source_set:
        return graph
    out = copy.copy(graph)
    try:
        by_id = {n.node_id: n for n in feature_nodes(graph)}
        dicts = feature_node_dicts(graph)
    except (BadInputError, KeyError, TypeError, AttributeError):
        return graph
    nodes = []
    for node in graph.get("nodes", []):
        found = by_id.get(node.get("node_id")) if isinstance(node, dict) else None
        if found is not None and dicts.get(found.node_id) is node:
            node = {**node, "vis_link": feature_url(model, source_id(found.layer, source_set), found.index)}
        nodes.append(node)
    out["nodes"] = nodes
    return out


class FolderGraphs:
    """The folder's graphs as trace serve shows them: with feature links, and which of them use a feature."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity  # graph -> (model, source set), resolved against the store
        self._linked: dict[Path, tuple[float, bytes]] = {}
        self._nodes: dict[Path, tuple[float, str, Any]] = {}
        self._lock = threading.Lock()

    def _read(self, path: Path) -> dict[str, Any]:
        return json.loads(path.read_text(encoding="utf-8"))

    def linked_bytes(self, path: Path) -> bytes:
        """The graph file with feature links, as JSON bytes (made again when the file changes)."""
        mtime = path.stat().st_mtime
        with self._lock:
            hit = self._linked.get(path)
        if hit is not None and hit[0] == mtime:
            return hit[1]
        raw = path.read_bytes()
        try:
            graph = json.loads(raw)
            model, sset = self.identity(graph)
            body = json.dumps(with_feature_links(graph, model, sset)).encode()
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError, AttributeError):
            body = raw  # not ours to judge here: the page shows what the file holds
        with self._lock:
            self._linked[path] = (mtime, body)
        return body

    def uses(self, graphs: dict[str, Path], model: str, source: str, index: int) -> list[GraphUse]:
        """The graphs (slug -> file) of `model` with a node of the feature, in slug order."""
        out = []
        for slug, path in sorted(graphs.items()):
            try:
                mtime = path.stat().st_mtime
            except OSError:
                continue
            with self._lock:
                hit = self._nodes.get(path)
            if hit is None or hit[0] != mtime:
                try:
                    graph = self._read(path)
                    g_model, sset = self.identity(graph)
                    hit = (mtime, g_model, read_feature_nodes(graph, sset))
                except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError, AttributeError, OSError):
                    continue
                with self._lock:
                    self._nodes[path] = hit
            if hit[1] != model:
                continue
            use = uses_of(hit[2], slug, f"/?slug={quote(slug, safe='')}", source, index)
            if use is not None:
                out.append(use)
        return out


def store_identity(view: Callable[[], FeatureStore]) -> Identity:
    """(model, source set) of a graph, resolved against the store as trace label maps nodes."""
    def identity(graph: dict[str, Any]) -> tuple[str, str | None]:
        con = view().con
        model = resolve_model(con, graph)
        return model, resolve_source_set(con, graph, model)
    return identity
