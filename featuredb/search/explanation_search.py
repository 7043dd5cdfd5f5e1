"""Neuronpedia's explanation search over the store: BM25 ranking (featuredb.search), keyword count as a fallback."""

from __future__ import annotations

import re
from typing import Any

from featuredb.errors import FeatureDBError, NotFoundError
from featuredb.labels.label_rule import LABEL_ORDER_SQL
from featuredb.store.schema import feature_key
from featuredb.search.api import search
from featuredb.search.filters import SearchFilters
from featuredb.store.feature_store import FeatureStore


def query_terms(query: str) -> list[str]:
    """Lower-case words of two or more characters, in order, without repeats."""
    seen: list[str] = []
    for w in re.findall(r"\w{2,}", query.lower()):
        if w not in seen:
            seen.append(w)
    return seen


def search_explanations(store: FeatureStore, query: str, *, model: str | None = None,
                        sources: list[str] | None = None, release: str | None = None, offset: int = 0,
                        limit: int = 20) -> list[dict[str, Any]]:
    """Explanation rows, best BM25 match first (one per feature); Neuronpedia's paging by offset."""
    if release:
        sources = [r[0] for r in store.con.execute(
            'SELECT s.id FROM sources s JOIN source_sets ss ON ss."modelId" = s."modelId" AND ss.name = s."setName" '
            'WHERE ss."releaseName" = ?', [release]).fetchall()]
        if not sources:
            return []
    try:
        hits = search(store, query, mode="text", filters=SearchFilters(model=model, sources=tuple(sources or ())),
                      limit=offset + limit)
    except NotFoundError:
        return []  # no such model, or an empty store
    except FeatureDBError:
        return keyword_explanations(store, query, model=model, sources=sources, offset=offset, limit=limit)
    hits = hits[offset:offset + limit]
    if not hits:
        return []
    keys = [feature_key(h.model, h.source, h.index) for h in hits]
    cur = store.con.execute(
        f"SELECT * FROM explanations WHERE feature_key IN ({', '.join('?' for _ in keys)}) "
        f'ORDER BY {LABEL_ORDER_SQL}', keys)
    names = [d[0] for d in cur.description]
    by_key: dict[str, list[dict[str, Any]]] = {}
    for r in cur.fetchall():
        d = dict(zip(names, r))
        by_key.setdefault(d.pop("feature_key"), []).append(d)
    rows = []
    for key, hit in zip(keys, hits):
        options = by_key.get(key, [])
        best = next((e for e in options if e["description"] == hit.matched), options[0] if options else None)
        if best is not None:
            best["index"] = str(best["index"])
            rows.append(best)
    return rows


def keyword_explanations(store: FeatureStore, query: str, *, model: str | None = None,
                         sources: list[str] | None = None, offset: int = 0, limit: int = 20) -> list[dict[str, Any]]:
    """Explanation rows matching most query words first, then in label order (for stores without search indexes)."""
    terms = query_terms(query)
    if not terms:
        return []
    score = " + ".join("CAST(contains(lower(e.description), ?) AS INTEGER)" for _ in terms)
    conds, params = ["1=1"], list(terms)
    if model:
        conds.append('e."modelId" = ?')
        params.append(model)
    if sources:
        conds.append(f'e."layer" IN ({", ".join("?" for _ in sources)})')
        params.extend(sources)
    sql = f"""SELECT * EXCLUDE (feature_key) FROM (
                SELECT e.*, ({score}) AS _score FROM explanations e WHERE {" AND ".join(conds)})
              WHERE _score > 0
              ORDER BY _score DESC, {LABEL_ORDER_SQL.replace('"id"', '"modelId", "layer", "index", "id"')}
              LIMIT {int(limit)} OFFSET {int(offset)}"""
    cur = store.con.execute(sql, params)
    names = [d[0] for d in cur.description]
    rows = []
    for r in cur.fetchall():
        d = dict(zip(names, r))
        d.pop("_score")
        d["index"] = str(d["index"])
        rows.append(d)
    return rows
