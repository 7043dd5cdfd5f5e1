"""MiniLM vectors for node labels: stored explanation embeddings where the store has the text, else computed."""

from __future__ import annotations

from typing import Any

import numpy as np

from featuredb.search.embedder import embed
from featuredb.store.search_indexes import has_search_tables
from tracer.key_tables import registered_values


def label_vectors(store: Any | None, labels: dict[str, str]) -> dict[str, np.ndarray]:
    """node_id -> unit vector of its label (nodes without a label are left out)."""
    texts = sorted({t for t in labels.values() if t})
    known: dict[str, np.ndarray] = {}
    if store is not None and texts and has_search_tables(store.con):
        with registered_values(store.con, "_label_texts", texts):
            tbl = store.con.execute("SELECT description, embedding FROM search_texts "
                                    "WHERE description IN (SELECT v FROM _label_texts)").to_arrow_table()
        if tbl.num_rows:
            vecs = tbl.column("embedding").combine_chunks().flatten().to_numpy().reshape(tbl.num_rows, -1)
            known = dict(zip(tbl.column("description").to_pylist(), vecs.astype(np.float32)))
    rest = [t for t in texts if t not in known]
    if rest:
        known.update(zip(rest, embed(rest)))
    return {n: known[t] for n, t in labels.items() if t}
