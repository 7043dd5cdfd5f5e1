"""Cosine top-k over explanation-text embeddings: DuckDB vss HNSW for large stores, an exact scan otherwise."""

from __future__ import annotations

from typing import Any

from featuredb.search.embedder import DIM, embed
from featuredb.search.filters import SearchFilters
from featuredb.search.indexes import has_hnsw


def _literal(vec: Any) -> str:
    # The HNSW index is used only for a constant query vector, not a bound parameter.
    return "[" + ",".join(f"{float(v):.7g}" for v in vec) + f"]::FLOAT[{DIM}]"


def semantic_ranking(con: Any, query: str, filters: SearchFilters, limit: int,
                     use_index: bool | None = None) -> list[tuple[str, float, int | None]]:
    """(feature_key, cosine similarity, text id) best first."""
    lit = _literal(embed([query])[0])
    cond, params = filters.sql("x")
    if use_index is None:
        use_index = has_hnsw(con)
    if use_index:
        fetch = max(100, limit * (20 if filters.active else 5))
        near = con.execute(f"SELECT text_id, array_cosine_distance(embedding, {lit}) AS d FROM search_texts "
                           f"ORDER BY array_cosine_distance(embedding, {lit}) LIMIT {fetch}").fetchall()
        if near:
            dist = {t: d for t, d in near}
            ids = ", ".join(str(int(t)) for t in dist)
            rows = con.execute(f"SELECT x.feature_key, x.text_id FROM search_explanation_texts x "
                               f"WHERE x.text_id IN ({ids}) AND {cond}", params).fetchall()
            best: dict[str, tuple[float, int]] = {}
            for key, text_id in rows:
                sim = 1.0 - dist[text_id]
                if key not in best or sim > best[key][0]:
                    best[key] = (sim, text_id)
            ranked = sorted(best.items(), key=lambda kv: (-kv[1][0], kv[0]))[:limit]
            if len(ranked) >= limit or len(near) < fetch:
                return [(k, s, e) for k, (s, e) in ranked]
    rows = con.execute(f"""
        SELECT x.feature_key, max(1 - array_cosine_distance(t.embedding, {lit})) AS score,
               arg_max(x.text_id, 1 - array_cosine_distance(t.embedding, {lit}))
        FROM search_texts t JOIN search_explanation_texts x USING (text_id) WHERE {cond}
        GROUP BY x.feature_key ORDER BY score DESC, x.feature_key LIMIT {int(limit)}""", params).fetchall()
    return [(k, float(s), e) for k, s, e in rows]
