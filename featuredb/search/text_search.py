"""BM25 over explanations, scored from the fts extension's term index (postings sorted by term)."""

from __future__ import annotations

from typing import Any

from featuredb.search.filters import SearchFilters
from featuredb.search.indexes import FTS_SCHEMA

K1, B = 1.2, 0.75


def text_ranking(con: Any, query: str, filters: SearchFilters, limit: int) -> list[tuple[str, float, str | None]]:
    """(feature_key, BM25 score, explanation id) best first; a feature counts once, with its best explanation."""
    terms = con.execute(f"SELECT termid, df FROM {FTS_SCHEMA}.dict WHERE term IN "
                        f"(SELECT DISTINCT stem(unnest({FTS_SCHEMA}.tokenize(?)), 'porter'))", [query]).fetchall()
    if not terms:
        return []
    n_docs, avgdl = con.execute(f"SELECT num_docs, avgdl FROM {FTS_SCHEMA}.stats").fetchone()
    ids = ", ".join(str(int(t)) for t, _ in terms)  # integers from the index itself: literal IN keeps zone maps
    idf = " ".join(f"WHEN {int(t)} THEN {float(_idf(n_docs, df))}" for t, df in terms)
    cond, params = filters.sql("p")
    rows = con.execute(f"""
        SELECT feature_key, max(score) AS score, arg_max(explanation_id, score) FROM (
            SELECT p.feature_key, p.explanation_id,
                   sum((CASE p.termid {idf} END) * p.tf * {K1 + 1} / (p.tf + {K1} * (1 - {B} + {B} * p.len / {avgdl})))
                       AS score
            FROM search_postings p WHERE p.termid IN ({ids}) AND {cond}
            GROUP BY p.feature_key, p.explanation_id)
        GROUP BY feature_key ORDER BY score DESC, feature_key LIMIT {int(limit)}""", params).fetchall()
    return [(k, float(s), e) for k, s, e in rows]


def _idf(n_docs: int, df: int) -> float:
    import math

    return math.log((n_docs - df + 0.5) / (df + 0.5) + 1)
