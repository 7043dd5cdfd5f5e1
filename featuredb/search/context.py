"""Per-store search state that does not change between writes: extension loading, HNSW flag, BM25 stats,
and (for stores without an HNSW index) the text embeddings as one in-memory matrix."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from featuredb.search.extensions import load_extension
from featuredb.search.indexes import FTS_SCHEMA, has_hnsw


@dataclass
class SearchContext:
    """What every query of one store needs and can reuse."""

    hnsw: bool
    n_docs: int
    avgdl: float
    text_ids: np.ndarray | None = None  # exact search: ids and unit vectors of every text
    vectors: np.ndarray | None = None


def build_context(con: Any) -> SearchContext:
    """Load the extensions and read the reusable state."""
    load_extension(con, "fts")
    load_extension(con, "vss")
    stats = con.execute(f"SELECT num_docs, avgdl FROM {FTS_SCHEMA}.stats").fetchone() or (0, 1.0)
    ctx = SearchContext(has_hnsw(con), int(stats[0] or 0), float(stats[1] or 1.0))
    if not ctx.hnsw:
        arrow = con.execute("SELECT text_id, embedding FROM search_texts ORDER BY text_id").arrow()
        if hasattr(arrow, "read_all"):
            arrow = arrow.read_all()
        ctx.text_ids = arrow.column("text_id").to_numpy()
        emb = arrow.column("embedding").combine_chunks()
        dim = emb.type.list_size if len(emb) else 0
        ctx.vectors = emb.flatten().to_numpy().reshape(len(emb), dim) if len(emb) else np.zeros((0, 0), np.float32)
    return ctx
