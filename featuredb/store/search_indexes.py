"""Build the search tables from the store: BM25 postings, peak and logit tokens, text embeddings with HNSW.

All of them are derived from features, activations and explanations; writes to those tables mark the store
dirty (search_state) and the next refresh rebuilds what changed. Embeddings are kept per distinct explanation
text and only new texts are embedded.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from featuredb.store.label_query import labels_sql
from featuredb.search.embedder import DIM, embed
from featuredb.search.extensions import load_extension

if TYPE_CHECKING:
    import duckdb

SEARCH_FORMAT = "3"  # layout of the derived search tables; a store built by another layout is rebuilt
# (3: embeddings of embedding_text(), so texts embedded under an older format are embedded again)
# A hit's label is its feature's label by featuredb.labels.label_rule (search_features.label).
HNSW_MIN_TEXTS = 10_000  # below this, semantic search scans every embedding exactly
HNSW_INDEX = "search_texts_hnsw"
FTS_SCHEMA = "fts_main_explanations"



def is_dirty(con: duckdb.DuckDBPyConnection) -> bool:
    """True when features, activations or explanations changed since the last refresh."""
    row = con.execute("SELECT value FROM search_state WHERE key = 'dirty'").fetchone()
    return row is None or row[0] == "true"


def has_search_tables(con: duckdb.DuckDBPyConnection) -> bool:
    """True once a refresh has built the search tables in this featuredb's layout."""
    row = con.execute("SELECT value FROM search_state WHERE key = 'format'").fetchone()
    return row is not None and row[0] == SEARCH_FORMAT


def has_hnsw(con: duckdb.DuckDBPyConnection) -> bool:
    """True when the text embeddings carry an HNSW index."""
    return bool(con.execute("SELECT count(*) FROM duckdb_indexes() WHERE index_name = ?", [HNSW_INDEX]).fetchone()[0])


def _features(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("""CREATE OR REPLACE TEMP TABLE _peaks AS
        SELECT feature_key, tok AS token, max("maxValue") AS value FROM (
            SELECT feature_key, "maxValue", tokens["maxValueTokenIndex" + 1] AS tok FROM activations
            WHERE coalesce("binMin", -1) = -1 AND "maxValueTokenIndex" IS NOT NULL)
        WHERE tok IS NOT NULL GROUP BY ALL""")
    con.execute(f"""CREATE OR REPLACE TABLE search_features AS
        WITH feats AS (
            SELECT feature_key, "modelId", "layer" AS source, "index", frac_nonzero AS density,
                   "maxActApprox" AS max_act FROM features
            UNION ALL
            SELECT DISTINCT feature_key, "modelId", "layer", "index", NULL, NULL FROM explanations
            WHERE feature_key NOT IN (SELECT feature_key FROM features)),
        labels AS ({labels_sql(columns='feature_key, description AS label, "typeName" AS label_type')}),
        tops AS (SELECT feature_key, list(token ORDER BY value DESC, token)[1:5] AS top_tokens FROM _peaks GROUP BY ALL)
        SELECT f.feature_key, f."modelId", f.source, f."index",
               TRY_CAST(regexp_extract(f.source, '^(\\d+)', 1) AS INTEGER) AS layer_num,
               f.density, f.max_act, l.label, l.label_type, coalesce(t.top_tokens, []) AS top_tokens
        FROM feats f LEFT JOIN labels l USING (feature_key) LEFT JOIN tops t USING (feature_key)
        ORDER BY f.feature_key""")
    con.execute("CREATE INDEX search_features_key ON search_features (feature_key)")
    filters = 'f."modelId", f.source, f.layer_num, f.density'
    con.execute(f"""CREATE OR REPLACE TABLE search_peak_tokens AS
        SELECT trim(p.token) AS token_key, p.token, p.feature_key, {filters}, p.value
        FROM _peaks p JOIN search_features f USING (feature_key) ORDER BY token_key, p.value DESC""")
    con.execute("DROP TABLE _peaks")
    con.execute(f"""CREATE OR REPLACE TABLE search_logit_tokens AS
        WITH l AS (
            SELECT feature_key, unnest(pos_str) AS token, unnest(pos_values) AS value, TRUE AS positive FROM features
            UNION ALL
            SELECT feature_key, unnest(neg_str), unnest(neg_values), FALSE FROM features)
        SELECT trim(l.token) AS token_key, l.token, l.feature_key, {filters}, l.value, l.positive
        FROM l JOIN search_features f USING (feature_key) WHERE l.token IS NOT NULL
        ORDER BY token_key, positive, abs(l.value) DESC""")


def _postings(con: duckdb.DuckDBPyConnection) -> None:
    load_extension(con, "fts")
    con.execute("PRAGMA create_fts_index('explanations', 'id', 'description', stemmer='porter', "
                "stopwords='english', overwrite=1)")
    con.execute(f"""CREATE OR REPLACE TABLE search_postings AS
        WITH p AS (SELECT t.termid, t.docid, count(*) AS tf FROM {FTS_SCHEMA}.terms t GROUP BY ALL)
        SELECT p.termid, p.tf, d.len, x.text_id, x.feature_key, x."modelId", x.source, x.layer_num, x.density
        FROM p JOIN {FTS_SCHEMA}.docs d USING (docid) JOIN search_explanation_texts x ON x.explanation_id = d.name
        ORDER BY p.termid""")


def _embeddings(con: duckdb.DuckDBPyConnection, progress: bool | None) -> int:
    load_extension(con, "vss")
    con.execute("SET hnsw_enable_experimental_persistence = true")
    old = con.execute("SELECT value FROM search_state WHERE key = 'format'").fetchone()
    if old is not None and old[0] != SEARCH_FORMAT:
        con.execute("DROP TABLE IF EXISTS search_texts")
    # Texts only ever get appended, in text_id order, so lookups by text_id prune by zone maps.
    con.execute(f"CREATE TABLE IF NOT EXISTS search_texts (text_id BIGINT, description VARCHAR, "
                f"embedding FLOAT[{DIM}])")
    new = [r[0] for r in con.execute(
        "SELECT DISTINCT description FROM explanations WHERE description IS NOT NULL AND description <> '' "
        "AND description NOT IN (SELECT description FROM search_texts) ORDER BY description").fetchall()]
    if new:
        start = con.execute("SELECT coalesce(max(text_id) + 1, 0) FROM search_texts").fetchone()[0]
        bar = tqdm(total=len(new), unit="text", desc="embedding explanations", file=sys.stderr,
                   disable=True if len(new) < 256 else (None if progress is None else not progress))
        vecs = embed(new, progress=bar)
        bar.close()
        arrow = pa.table({"text_id": np.arange(start, start + len(new), dtype=np.int64), "description": new,
                          "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), DIM)})
        con.register("_new_texts", arrow)
        try:
            con.execute(f"INSERT INTO search_texts SELECT text_id, description, embedding::FLOAT[{DIM}] "
                        "FROM _new_texts")
        finally:
            con.unregister("_new_texts")
    n_texts = con.execute("SELECT count(*) FROM search_texts").fetchone()[0]
    if n_texts >= HNSW_MIN_TEXTS and not has_hnsw(con):
        con.execute(f"CREATE INDEX {HNSW_INDEX} ON search_texts USING HNSW (embedding) "
                    "WITH (metric = 'cosine', ef_construction = 32, M = 12)")
    con.execute("""CREATE OR REPLACE TABLE search_explanation_texts AS
        SELECT t.text_id, e.id AS explanation_id, e.feature_key, f."modelId", f.source, f.layer_num, f.density
        FROM explanations e JOIN search_texts t USING (description) JOIN search_features f USING (feature_key)
        ORDER BY t.text_id""")
    return len(new)


def refresh_search_indexes(con: duckdb.DuckDBPyConnection, *, progress: bool | None = None) -> dict[str, float]:
    """Rebuild every search table from the store's rows; returns seconds per part (and texts embedded)."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    _features(con)
    timings["features"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    timings["texts_embedded"] = _embeddings(con, progress)
    timings["embeddings"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    _postings(con)
    timings["postings"] = time.perf_counter() - t0
    con.execute("UPDATE search_state SET value = 'false' WHERE key = 'dirty'")
    con.execute("INSERT OR REPLACE INTO search_state VALUES ('format', ?)", [SEARCH_FORMAT])
    return timings
