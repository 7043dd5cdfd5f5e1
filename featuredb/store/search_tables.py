"""The queries concept search runs over the search tables (store.search_indexes builds them) and explanations.

Search's ranking logic (BM25 weights, fusion, the text -> feature map, hits) stays in featuredb.search; these
functions only read rows, each as a typed result.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from featuredb.labels.label_rule import LABEL_ORDER_SQL
from featuredb.store.reads import Scope, dict_rows
from featuredb.store.search_indexes import FTS_SCHEMA

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

    from featuredb.search.filters import SearchFilters
    from featuredb.store.feature_store import FeatureStore

Ranked = list[tuple[str, float, Any]]  # (feature_key, score, what matched), best first


def filter_where(filters: SearchFilters, alias: str) -> tuple[str, list[Any]]:
    """(condition, parameters) of the search filters over a search table with "modelId", source, layer_num and
    density columns; `alias` names the table."""
    sources, layers = list(filters.sources), list(filters.layers or ())
    checks: list[tuple[bool, str, list[Any]]] = [
        (bool(filters.model), f'{alias}."modelId" = ?', [filters.model]),
        (bool(sources), f"{alias}.source IN ({_marks(sources)})", sources),
        (bool(layers), f"{alias}.layer_num IN ({_marks(layers)})", layers),
        (filters.max_density is not None, f"coalesce({alias}.density, 0) <= ?", [filters.max_density]),
    ]
    used = [(cond, values) for on, cond, values in checks if on]
    return " AND ".join(["TRUE", *(c for c, _ in used)]), [v for _, values in used for v in values]


def _marks(values: list[Any]) -> str:
    return ", ".join("?" * len(values))


def _arrow(result: Any) -> pa.Table:
    table = result.arrow()
    return table.read_all() if hasattr(table, "read_all") else table


# --- the reusable search context -----------------------------------------------------------------------------------

def bm25_stats(con: duckdb.DuckDBPyConnection) -> tuple[int, float]:
    """(documents, average document length) of the explanations' full-text index; (0, 1.0) when it is empty."""
    stats = con.execute(f"SELECT num_docs, avgdl FROM {FTS_SCHEMA}.stats").fetchone() or (0, 1.0)
    return int(stats[0] or 0), float(stats[1] or 1.0)


def searchable_models(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Sorted model ids of search_features."""
    return [r[0] for r in con.execute('SELECT DISTINCT "modelId" FROM search_features ORDER BY 1').fetchall()]


def text_embeddings(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """Every explanation text's (text_id, embedding), by text_id."""
    return _arrow(con.execute("SELECT text_id, embedding FROM search_texts ORDER BY text_id"))


def text_feature_map(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """search_explanation_texts' (text_id, feature_key, modelId, source, layer_num, density), by text_id."""
    return _arrow(con.execute('SELECT text_id, feature_key, "modelId", source, layer_num, density '
                              "FROM search_explanation_texts ORDER BY text_id"))


# --- queries -------------------------------------------------------------------------------------------------------

def texts_by_id(con: duckdb.DuckDBPyConnection, ids: list[int]) -> dict[int, str]:
    """text_id -> explanation text of search_texts for the given ids."""
    if not ids:
        return {}
    return dict(con.execute(f"SELECT text_id, description FROM search_texts WHERE text_id IN ({_marks(ids)})",
                            [int(i) for i in ids]).fetchall())


def hit_rows(con: duckdb.DuckDBPyConnection, keys: list[str]) -> dict[str, dict[str, Any]]:
    """feature_key -> its search_features row (modelId, source, index, label, density, top_tokens)."""
    if not keys:
        return {}
    rows = dict_rows(con.execute('SELECT feature_key, "modelId", source, "index", label, density, top_tokens '
                                 f"FROM search_features WHERE feature_key IN ({_marks(keys)})", keys))
    return {r.pop("feature_key"): r for r in rows}


def feature_labels(con: duckdb.DuckDBPyConnection, keys: list[str]) -> list[tuple[str, int, str | None, Any]]:
    """(source, index, label, density) of search_features for the given feature keys."""
    if not keys:
        return []
    return con.execute('SELECT source, "index", label, density FROM search_features '
                       f"WHERE feature_key IN ({_marks(keys)})", keys).fetchall()


def query_term_stats(con: duckdb.DuckDBPyConnection, query: str) -> list[tuple[int, int]]:
    """(termid, document frequency) of the query's distinct stemmed terms, with the fts extension's tokenizer."""
    return con.execute(f"""SELECT d.termid, d.df FROM {FTS_SCHEMA}.dict d
        WHERE d.term IN (SELECT unnest(list_distinct(list_transform({FTS_SCHEMA}.tokenize(?),
                                                                    t -> stem(t, 'porter')))))""",
                       [query]).fetchall()


def bm25_ranking(con: duckdb.DuckDBPyConnection, idf: dict[int, float], *, k1: float, b: float, avgdl: float,
                 filters: SearchFilters, limit: int) -> Ranked:
    """(feature_key, BM25 score, text id) best first over search_postings for terms with weights `idf`;
    a feature counts once, with its best explanation."""
    # One equality branch per term: on postings sorted by termid, `termid = n` reads only that term's rows.
    postings = " UNION ALL ".join(f"SELECT * FROM search_postings WHERE termid = {int(t)}" for t in idf)
    cases = " ".join(f"WHEN {int(t)} THEN {w!r}" for t, w in idf.items())
    cond, params = filter_where(filters, "p")
    rows = con.execute(f"""
        SELECT feature_key, max(score) AS score, arg_max(text_id, score) FROM (
            SELECT p.feature_key, p.text_id,
                   sum((CASE p.termid {cases} END) * p.tf * {k1 + 1}
                       / (p.tf + {k1} * (1 - {b} + {b} * p.len / {avgdl}))) AS score
            FROM ({postings}) p WHERE {cond}
            GROUP BY p.feature_key, p.text_id)
        GROUP BY feature_key ORDER BY score DESC, feature_key LIMIT {int(limit)}""", params).fetchall()
    return [(k, float(s), t) for k, s, t in rows]


def hnsw_nearest_texts(con: duckdb.DuckDBPyConnection, vec: Any, dim: int, limit: int) -> list[tuple[int, float]]:
    """(text_id, cosine distance) of the `limit` texts nearest to `vec`, through the HNSW index."""
    # The HNSW index is used only for a constant query vector, not a bound parameter.
    lit = "[" + ",".join(f"{float(v):.7g}" for v in vec) + f"]::FLOAT[{int(dim)}]"
    return con.execute(f"SELECT text_id, array_cosine_distance(embedding, {lit}) FROM search_texts "
                       f"ORDER BY array_cosine_distance(embedding, {lit}) LIMIT {int(limit)}").fetchall()


def peak_token_ranking(con: duckdb.DuckDBPyConnection, token: str, filters: SearchFilters, limit: int) -> Ranked:
    """(feature_key, peak activation, token) for features whose top examples peak on `token`, strongest first."""
    cond, params = filter_where(filters, "p")
    rows = con.execute(f"""SELECT feature_key, max(value) AS v, arg_max(token, value) FROM search_peak_tokens p
        WHERE token_key = ? AND {cond} GROUP BY feature_key ORDER BY v DESC, feature_key LIMIT {int(limit)}""",
                       [token, *params]).fetchall()
    return [(k, float(v), t) for k, v, t in rows]


def logit_token_ranking(con: duckdb.DuckDBPyConnection, token: str, filters: SearchFilters, limit: int,
                        negative: bool) -> Ranked:
    """(feature_key, logit weight, token) for features that promote `token` (suppress it with negative=True)."""
    cond, params = filter_where(filters, "p")
    order = "ASC" if negative else "DESC"
    rows = con.execute(f"""SELECT feature_key, {'min' if negative else 'max'}(value) AS v, any_value(token)
        FROM search_logit_tokens p WHERE token_key = ? AND positive = ? AND {cond}
        GROUP BY feature_key ORDER BY v {order}, feature_key LIMIT {int(limit)}""",
                       [token, not negative, *params]).fetchall()
    return [(k, float(v), t) for k, v, t in rows]


# --- Neuronpedia's explanation search ------------------------------------------------------------------------------

def release_source_ids(store: FeatureStore, release: str) -> list[str]:
    """Ids of the sources in the release's source sets."""
    return [r[0] for r in store.con.execute(
        'SELECT s.id FROM sources s JOIN source_sets ss ON ss."modelId" = s."modelId" AND ss.name = s."setName" '
        'WHERE ss."releaseName" = ?', [release]).fetchall()]


def keyword_explanation_rows(store: FeatureStore, terms: list[str], *, model: str | None, sources: list[str] | None,
                             offset: int, limit: int) -> list[dict[str, Any]]:
    """Explanation rows (without feature_key) containing most of the lower-case `terms` first, then in label
    order; rows containing none are left out."""
    score = " + ".join("CAST(contains(lower(e.description), ?) AS INTEGER)" for _ in terms)
    where, params = Scope(model).where("e")
    if sources:
        where, params = where + f' AND e."layer" IN ({_marks(sources)})', [*params, *sources]
    sql = f"""SELECT * EXCLUDE (feature_key, _score) FROM (
                SELECT e.*, ({score}) AS _score FROM explanations e WHERE {where})
              WHERE _score > 0
              ORDER BY _score DESC, {LABEL_ORDER_SQL.replace('"id"', '"modelId", "layer", "index", "id"')}
              LIMIT {int(limit)} OFFSET {int(offset)}"""
    return dict_rows(store.con.execute(sql, [*terms, *params]))
