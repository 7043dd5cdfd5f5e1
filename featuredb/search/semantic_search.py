"""Cosine top-k over explanation-text embeddings: DuckDB vss HNSW for large stores, an exact scan otherwise."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from featuredb.search.embedder import DIM, embed
from featuredb.search.filters import SearchFilters
from featuredb.store.search_tables import hnsw_nearest_texts

if TYPE_CHECKING:
    import duckdb

    from featuredb.search.context import SearchContext


def _nearest_texts(con: duckdb.DuckDBPyConnection, ctx: SearchContext, vec: np.ndarray,
                   fetch: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(text ids, similarities) of the `fetch` nearest texts (all of them when fetch is None), best first."""
    if ctx.hnsw:
        rows = hnsw_nearest_texts(con, vec, DIM, fetch or 1000)
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


def _features_of_texts(ctx: SearchContext, ids: np.ndarray, sims: np.ndarray, filters: SearchFilters,
                       limit: int) -> list[tuple[str, float, int | None]]:
    """Best `limit` features for the ranked texts, through the in-memory text -> feature map."""
    lo = np.searchsorted(ctx.map_text, ids, side="left")
    hi = np.searchsorted(ctx.map_text, ids, side="right")
    counts = hi - lo
    if not counts.sum():
        return []
    rows = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi) if b > a])
    row_sim = np.repeat(sims, counts)
    row_text = np.repeat(ids, counts)
    keep = np.ones(len(rows), dtype=bool)
    if filters.model:
        keep &= ctx.map_model[rows] == filters.model
    if filters.sources:
        keep &= np.isin(ctx.map_source[rows], list(filters.sources))
    if filters.layers:
        layer = ctx.map_layer[rows]
        keep &= np.isin(layer, list(filters.layers))
    if filters.max_density is not None:
        keep &= np.nan_to_num(ctx.map_density[rows], nan=0.0) <= filters.max_density
    out: dict[str, tuple[float, int]] = {}
    for r, sim, t in zip(rows[keep], row_sim[keep], row_text[keep]):  # texts arrive best first
        key = ctx.map_key[r]
        if key not in out:
            out[key] = (float(sim), int(t))
            if len(out) >= limit:
                break
    return sorted(((k, s, t) for k, (s, t) in out.items()), key=lambda x: (-x[1], x[0]))


def semantic_ranking(con: duckdb.DuckDBPyConnection, ctx: SearchContext, query: str, filters: SearchFilters,
                     limit: int) -> list[tuple[str, float, int | None]]:
    """(feature_key, cosine similarity, text id) best first."""
    vec = embed([query])[0]
    fetch: int | None = max(100, limit * (20 if filters.active else 5))
    if filters.active and not ctx.hnsw:
        fetch = None  # exact: rank every text, the filter decides
    ranked: list[tuple[str, float, int | None]] = []
    for attempt in range(2):
        ids, sims = _nearest_texts(con, ctx, vec, fetch)
        ranked = _features_of_texts(ctx, ids, sims, filters, limit)
        if len(ranked) >= limit or fetch is None or len(ids) < fetch or attempt:
            break
        fetch *= 20  # a selective filter: look further down the HNSW list once
    return ranked
