"""Keyword search over explanations: every query word that appears in a description counts once."""

from __future__ import annotations

import re
from typing import Any

from featuredb.store import FeatureStore


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
    """Explanation rows matching most query words first, then by scoreV1; Neuronpedia's paging by offset."""
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
    if release:
        conds.append('e."layer" IN (SELECT s.id FROM sources s JOIN source_sets ss ON ss."modelId" = s."modelId" '
                     'AND ss.name = s."setName" WHERE ss."releaseName" = ?)')
        params.append(release)
    sql = f"""SELECT * EXCLUDE (feature_key) FROM (
                SELECT e.*, ({score}) AS _score FROM explanations e WHERE {" AND ".join(conds)})
              WHERE _score > 0
              ORDER BY _score DESC, "scoreV1" DESC NULLS LAST, "modelId", "layer", "index", "id"
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
