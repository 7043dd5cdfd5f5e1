"""Per-store search state that does not change between writes: extension loading, HNSW flag, BM25 stats,
and (for stores without an HNSW index) the text embeddings as one in-memory matrix."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from featuredb.search.extensions import load_extension
from featuredb.store.search_indexes import has_hnsw
from featuredb.store.search_tables import bm25_stats, searchable_models, text_embeddings, text_feature_map

if TYPE_CHECKING:
    import duckdb


@dataclass
class SearchContext:
    """What every query of one store needs and can reuse."""

    hnsw: bool
    n_docs: int
    avgdl: float
    models: list[str]
    text_ids: np.ndarray | None = None  # exact search: ids and unit vectors of every text
    vectors: np.ndarray | None = None
    # text -> feature map (search_explanation_texts, sorted by text_id), so semantic hits need no table scan
    map_text: np.ndarray | None = None
    map_key: np.ndarray | None = None
    map_model: np.ndarray | None = None
    map_source: np.ndarray | None = None
    map_layer: np.ndarray | None = None
    map_density: np.ndarray | None = None


def build_context(con: duckdb.DuckDBPyConnection) -> SearchContext:
    """Load the extensions and read the reusable state."""
    load_extension(con, "fts")
    load_extension(con, "vss")
    n_docs, avgdl = bm25_stats(con)
    ctx = SearchContext(has_hnsw(con), n_docs, avgdl, searchable_models(con))
    if not ctx.hnsw:
        arrow = text_embeddings(con)
        ctx.text_ids = arrow.column("text_id").to_numpy()
        emb = arrow.column("embedding").combine_chunks()
        dim = emb.type.list_size if len(emb) else 0
        ctx.vectors = emb.flatten().to_numpy().reshape(len(emb), dim) if len(emb) else np.zeros((0, 0), np.float32)
    m = text_feature_map(con)
    ctx.map_text = m.column("text_id").to_numpy()
    ctx.map_key = m.column("feature_key").to_numpy(zero_copy_only=False)
    ctx.map_model = m.column("modelId").to_numpy(zero_copy_only=False)
    ctx.map_source = m.column("source").to_numpy(zero_copy_only=False)
    ctx.map_layer = m.column("layer_num").to_numpy(zero_copy_only=False).astype(float)
    ctx.map_density = m.column("density").to_numpy(zero_copy_only=False).astype(float)
    return ctx
