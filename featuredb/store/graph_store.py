"""Attribution graphs and Neuronpedia subgraphs kept in the store (tables `graphs` and `subgraphs`)."""

from __future__ import annotations

import json
import uuid
from typing import Any

from featuredb.errors import BadInputError, NotFoundError
from featuredb.formats.graph_json import check_graph, graph_model, graph_source_set

RECORD_COLUMNS = ('"modelId"', "slug", '"sourceSetName"', "prompt", '"titlePrefix"', '"isFeatured"', '"userId"',
                  '"createdAt"', '"updatedAt"')
SUBGRAPH_COLUMNS = ("id", '"modelId"', "slug", '"displayName"', '"pinnedIds"', "supernodes", "clerps",
                    '"pruningThreshold"', '"densityThreshold"', '"userId"', '"createdAt"', '"updatedAt"')


def save_graph(store: Any, graph: dict[str, Any], *, slug: str | None = None, user: str | None = None,
               overwrite: bool = True, where: str | None = None) -> dict[str, Any]:
    """Store a graph under (model from metadata.scan, slug); returns its record (Neuronpedia's graph metadata).

    The graph is checked first (graph_json.check_graph): a malformed one is a BadInputError naming `where` (the
    file it came from; default: the slug) and the field, and nothing is stored."""
    check_graph(graph, where or slug or "graph")
    store.require_writable()
    model = graph_model(graph)
    slug = slug or str(graph["metadata"]["slug"])
    meta = graph["metadata"]
    exists = store.con.execute('SELECT count(*) FROM graphs WHERE "modelId" = ? AND slug = ?',
                               [model, slug]).fetchone()[0]
    if exists and not overwrite:
        raise BadInputError(f"graph {model}/{slug} already exists")
    with store.transaction() as con:
        con.execute('DELETE FROM graphs WHERE "modelId" = ? AND slug = ?', [model, slug])
        con.execute('INSERT INTO graphs ("modelId", slug, "sourceSetName", prompt, "titlePrefix", "userId", data) '
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [model, slug, graph_source_set(graph), meta.get("prompt"), meta.get("title_prefix"), user,
                     json.dumps(graph)])
    return graph_record(store, model, slug)


def _record(row: tuple[Any, ...], prompt_tokens: list[str] | None = None) -> dict[str, Any]:
    names = [c.strip('"') for c in RECORD_COLUMNS]
    rec = dict(zip(names, row))
    for k in ("createdAt", "updatedAt"):
        rec[k] = rec[k].isoformat() + "Z" if rec[k] is not None else None
    rec["id"] = f"{rec['modelId']}/{rec['slug']}"
    rec["titlePrefix"] = rec["titlePrefix"] or ""  # a required string on Neuronpedia
    rec["promptTokens"] = prompt_tokens or []
    return rec


def graph_record(store: Any, model: str, slug: str) -> dict[str, Any]:
    """Neuronpedia's GET /api/graph/{model}/{slug} record (without `url`, which the server adds)."""
    row = store.con.execute(f"SELECT {', '.join(RECORD_COLUMNS)}, json_extract(data, '$.metadata.prompt_tokens') "
                            'FROM graphs WHERE "modelId" = ? AND slug = ?', [model, slug]).fetchone()
    if row is None:
        raise NotFoundError(f"graph {model}/{slug} is not in {store.path}")
    tokens = json.loads(row[-1]) if row[-1] else []
    return _record(row[:-1], tokens)


def graph_data(store: Any, model: str, slug: str) -> str:
    """The stored graph JSON text."""
    row = store.con.execute('SELECT data FROM graphs WHERE "modelId" = ? AND slug = ?', [model, slug]).fetchone()
    if row is None:
        raise NotFoundError(f"graph {model}/{slug} is not in {store.path}")
    return str(row[0])


def list_graphs(store: Any, model: str | None = None) -> list[dict[str, Any]]:
    """Records of every stored graph (of one model), newest first."""
    sql = f"SELECT {', '.join(RECORD_COLUMNS)}, json_extract(data, '$.metadata.prompt_tokens') FROM graphs"
    params = []
    if model:
        sql += ' WHERE "modelId" = ?'
        params.append(model)
    rows = store.con.execute(sql + ' ORDER BY "updatedAt" DESC, slug', params).fetchall()
    return [_record(r[:-1], json.loads(r[-1]) if r[-1] else []) for r in rows]


def save_subgraph(store: Any, model: str, slug: str, *, pinned_ids: list[str], supernodes: list[list[str]],
                  clerps: list[list[str]], display_name: str | None = None, pruning_threshold: float | None = None,
                  density_threshold: float | None = None, user: str | None = None,
                  subgraph_id: str | None = None) -> dict[str, Any]:
    """Save (or, given its id, replace) a subgraph of a stored graph: pinned nodes, supernodes and clerps."""
    store.require_writable()
    graph_record(store, model, slug)  # the graph must exist
    for name, value in (("pinnedIds", pinned_ids), ("supernodes", supernodes), ("clerps", clerps)):
        if not isinstance(value, list):
            raise BadInputError(f"{name}: expected a list")
    sid = subgraph_id or uuid.uuid4().hex
    with store.transaction() as con:
        con.execute("DELETE FROM subgraphs WHERE id = ?", [sid])
        con.execute('INSERT INTO subgraphs (id, "modelId", slug, "displayName", "pinnedIds", supernodes, clerps, '
                    '"pruningThreshold", "densityThreshold", "userId") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
                    [sid, model, slug, display_name, json.dumps(pinned_ids), json.dumps(supernodes),
                     json.dumps(clerps), pruning_threshold, density_threshold, user])
    return {"success": True, "subgraphId": sid}


def list_subgraphs(store: Any, model: str, slug: str) -> list[dict[str, Any]]:
    """Every subgraph of a graph, newest first, lists decoded."""
    rows = store.con.execute(f"SELECT {', '.join(SUBGRAPH_COLUMNS)} FROM subgraphs WHERE \"modelId\" = ? AND slug = ? "
                             'ORDER BY "createdAt" DESC, id', [model, slug]).fetchall()
    names = [c.strip('"') for c in SUBGRAPH_COLUMNS]
    out = []
    for r in rows:
        d = dict(zip(names, r))
        for k in ("pinnedIds", "supernodes", "clerps"):
            d[k] = json.loads(d[k]) if d[k] else []
        for k in ("createdAt", "updatedAt"):
            d[k] = d[k].isoformat() + "Z" if d[k] is not None else None
        out.append(d)
    return out


def delete_subgraph(store: Any, subgraph_id: str) -> dict[str, Any]:
    """Delete one subgraph by id (NotFoundError when there is none)."""
    store.require_writable()
    n = store.con.execute("SELECT count(*) FROM subgraphs WHERE id = ?", [subgraph_id]).fetchone()[0]
    if not n:
        raise NotFoundError(f"subgraph {subgraph_id} is not in {store.path}")
    store.con.execute("DELETE FROM subgraphs WHERE id = ?", [subgraph_id])
    return {"success": True}


def delete_graph(store: Any, model: str, slug: str) -> None:
    """Delete a stored graph and its subgraphs (NotFoundError when there is none)."""
    store.require_writable()
    graph_record(store, model, slug)
    with store.transaction() as con:
        con.execute('DELETE FROM subgraphs WHERE "modelId" = ? AND slug = ?', [model, slug])
        con.execute('DELETE FROM graphs WHERE "modelId" = ? AND slug = ?', [model, slug])
