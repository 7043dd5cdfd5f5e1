"""BM25 over explanations, scored from the fts extension's term index (postings sorted by term)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from featuredb.search.filters import SearchFilters
from featuredb.store.search_tables import bm25_ranking, query_term_stats

if TYPE_CHECKING:
    import duckdb

    from featuredb.search.context import SearchContext

K1, B = 1.2, 0.75


def text_ranking(con: duckdb.DuckDBPyConnection, ctx: SearchContext, query: str, filters: SearchFilters,
                 limit: int) -> list[tuple[str, float, int | None]]:
    """(feature_key, BM25 score, text id) best first; a feature counts once, with its best explanation."""
    terms = query_term_stats(con, query)
    if not terms:
        return []
    n_docs = ctx.n_docs
    idf = {int(t): math.log((n_docs - df + 0.5) / (df + 0.5) + 1) for t, df in terms}
    return bm25_ranking(con, idf, k1=K1, b=B, avgdl=ctx.avgdl, filters=filters, limit=limit)
