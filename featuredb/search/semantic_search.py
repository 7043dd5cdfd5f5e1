"""Cosine top-k over explanation-text embeddings: DuckDB vss HNSW for large stores, an exact scan otherwise."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from featuredb.search.embedder import DIM, embed
from featuredb.search.filters import SearchFilters


def _literal(vec: Any) -> str:
    # The HNSW index is used only for a constant query vector, not a bound parameter.
    return "[" + ",".join(f"{float(v):.7g}" for v in vec) + f"]::FLOAT[{DIM}]"


def _nearest_texts(con: Any, ctx: Any, vec: np.ndarray, fetch: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(text ids, similarities) of the `fetch` nearest texts (all of them when fetch is None), best first."""
    if ctx.hnsw:
        lit = _literal(vec)
        rows = con.execute(f"SELECT text_id, array_cosine_distance(embedding, {lit}) FROM search_texts "
                           f"ORDER BY array_cosine_distance(embedding, {lit}) LIMIT {int(fetch or 1000)}").fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64), np.array([1.0 - r[1] for r in rows])
    if ctx.vectors is None or not len(ctx.vectors):
        return np.zeros(0, np.int64), np.zeros(0)
    sims = ctx.vectors @ vec
    if fetch is not None and fetch < len(sims):
        top = np.argpartition(-sims, fetch)[:fetch]
    else:
        top = np.arange(len(sims))
    top = top[np.argsort(-sims[top], kind="stable")]
    return ctx.text_ids[top], sims[top]


def semantic_ranking(con: Any, ctx: Any, query: str, filters: SearchFilters,
                     limit: int) -> list[tuple[str, float, int | None]]:
    """(feature_key, cosine similarity, text id) best first."""
    vec = embed([query])[0]
    cond, params = filters.sql("x")
    fetch: int | None = max(100, limit * (20 if filters.active else 5))
    if filters.active and not ctx.hnsw:
        fetch = None  # exact: rank every text, the filter decides
    for attempt in range(2):
        ids, sims = _nearest_texts(con, ctx, vec, fetch)
        if not len(ids):
            return []
        con.register("_near", pa.table({"text_id": ids, "sim": sims}))
        try:
            rows = con.execute(f"""SELECT x.feature_key, max(n.sim) AS score, arg_max(x.text_id, n.sim)
                FROM _near n JOIN search_explanation_texts x USING (text_id) WHERE {cond}
                GROUP BY x.feature_key ORDER BY score DESC, x.feature_key LIMIT {int(limit)}""", params).fetchall()
        finally:
            con.unregister("_near")
        if len(rows) >= limit or fetch is None or len(ids) < fetch or attempt:
            break
        fetch *= 20  # a selective filter: look further down the HNSW list once
    return [(k, float(s), t) for k, s, t in rows]
