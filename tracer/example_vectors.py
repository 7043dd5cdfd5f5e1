"""Where a graph's features fire hardest, as hashed windows: two features whose top examples peak on the same
tokens of the same texts are one concept to a person reading their dashboards."""

from __future__ import annotations


import numpy as np
from scipy.sparse import csr_matrix

from featuredb.store.feature_store import FeatureStore
from featuredb.store.reads import peak_window_hashes

from tracer.node_mapping import NodeMapping

BUCKETS = 1 << 14
TOP = 20  # top examples per feature
WINDOW = 4  # tokens up to and including the peak


def example_windows(store: FeatureStore, mapping: NodeMapping | None) -> dict[str, np.ndarray]:
    """node_id -> its TOP top examples' peaks (corpus row and token; for examples without a corpus row, the
    peak token and the WINDOW-1 before it), hashed to sorted indices below BUCKETS; empty without a mapping."""
    if mapping is None or not mapping.mapped:
        return {}
    keys = sorted({m.key for m in mapping.mapped})
    buckets = peak_window_hashes(store, keys, top=TOP, buckets=BUCKETS, window=WINDOW)
    return {m.node.node_id: np.array(sorted(buckets[m.key]), dtype=np.int64) for m in mapping.mapped
            if m.key in buckets}


def window_rows(windows: dict[str, np.ndarray], ids: list[str]) -> csr_matrix:
    """Rows of `ids` over the buckets, each unit length (a row without windows is empty)."""
    rows, cols, vals = [], [], []
    for k, i in enumerate(ids):
        hit = windows.get(i)
        if hit is not None and len(hit):
            rows += [k] * len(hit)
            cols += hit.tolist()
            vals += [1.0 / np.sqrt(len(hit))] * len(hit)
    return csr_matrix((np.asarray(vals, dtype=np.float32), (rows, cols)), shape=(len(ids), BUCKETS))
