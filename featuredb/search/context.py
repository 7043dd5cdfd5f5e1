"""Per-store search state that does not change between writes: extension loading, HNSW flag, BM25 stats,
and (for stores without an HNSW index) the text embeddings as one in-memory matrix."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from featuredb.search.extensions import load_extension
from featuredb.store.search_indexes import FTS_SCHEMA, has_hnsw


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


def build_context(con: Any) -> SearchContext:
    """Load the extensions and read the reusable state."""
    load_extension(con, "fts")
    load_extension(con, "vss")
    stats = con.execute(f"SELECT num_docs, avgdl FROM {FTS_SCHEMA}.stats").fetchone() or (0, 1.0)
    models = [r[0] for r in con.execute('SELECT DISTINCT "modelId" FROM search_features ORDER BY 1').fetchall()]
    ctx = SearchContext(has_hnsw(con), int(stats[0] or 0), float(stats[1] or 1.0), models)
    if not ctx.hnsw:
        arrow = _arrow(con.execute("SELECT text_id, embedding FROM search_texts ORDER BY text_id"))
        ctx.text_ids = arrow.column("text_id").to_numpy()
        emb = arrow.column("embedding").combine_chunks()
        dim = emb.type.list_size if len(emb) else 0
        ctx.vectors = emb.flatten().to_numpy().reshape(len(emb), dim) if len(emb) else np.zeros((0, 0), np.float32)
    m = _arrow(con.execute('SELECT text_id, feature_key, "modelId", source, layer_num, density '
                           "FROM search_explanation_texts ORDER BY text_id"))
    ctx.map_text = m.column("text_id").to_numpy()
    ctx.map_key = m.column("feature_key").to_numpy(zero_copy_only=False)
    ctx.map_model = m.column("modelId").to_numpy(zero_copy_only=False)
    ctx.map_source = m.column("source").to_numpy(zero_copy_only=False)
    ctx.map_layer = m.column("layer_num").to_numpy(zero_copy_only=False).astype(float)
    ctx.map_density = m.column("density").to_numpy(zero_copy_only=False).astype(float)
    return ctx


def _arrow(result: Any) -> Any:
    table = result.arrow()
    return table.read_all() if hasattr(table, "read_all") else table
