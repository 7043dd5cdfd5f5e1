"""BM25 over explanations, scored from the fts extension's term index (postings sorted by term)."""

from __future__ import annotations

import math
from typing import Any

from featuredb.search.filters import SearchFilters
from featuredb.store.search_indexes import FTS_SCHEMA

K1, B = 1.2, 0.75


def _query_terms(con: Any, query: str) -> list[tuple[int, int]]:
    """(termid, document frequency) of the query's distinct stemmed terms, with the fts extension's tokenizer."""
    return con.execute(f"""SELECT d.termid, d.df FROM {FTS_SCHEMA}.dict d
        WHERE d.term IN (SELECT unnest(list_distinct(list_transform({FTS_SCHEMA}.tokenize(?),
                                                                    t -> stem(t, 'porter')))))""",
                       [query]).fetchall()


def text_ranking(con: Any, ctx: Any, query: str, filters: SearchFilters,
                 limit: int) -> list[tuple[str, float, int | None]]:
    """(feature_key, BM25 score, text id) best first; a feature counts once, with its best explanation."""
    terms = _query_terms(con, query)
    if not terms:
        return []
    n_docs, avgdl = ctx.n_docs, ctx.avgdl
    # One equality branch per term: on postings sorted by termid, `termid = n` reads only that term's rows.
    postings = " UNION ALL ".join(f"SELECT * FROM search_postings WHERE termid = {int(t)}" for t, _ in terms)
    idf = " ".join(f"WHEN {int(t)} THEN {math.log((n_docs - df + 0.5) / (df + 0.5) + 1)!r}" for t, df in terms)
    cond, params = filters.sql("p")
    rows = con.execute(f"""
        SELECT feature_key, max(score) AS score, arg_max(text_id, score) FROM (
            SELECT p.feature_key, p.text_id,
                   sum((CASE p.termid {idf} END) * p.tf * {K1 + 1} / (p.tf + {K1} * (1 - {B} + {B} * p.len / {avgdl})))
                       AS score
            FROM ({postings}) p WHERE {cond}
            GROUP BY p.feature_key, p.text_id)
        GROUP BY feature_key ORDER BY score DESC, feature_key LIMIT {int(limit)}""", params).fetchall()
    return [(k, float(s), t) for k, s, t in rows]
