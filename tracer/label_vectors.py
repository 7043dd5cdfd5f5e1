"""MiniLM vectors for node labels: stored explanation embeddings where the store has the text, else computed."""

from __future__ import annotations


import numpy as np

from featuredb.search.embedder import embed
from featuredb.store.feature_store import FeatureStore
from featuredb.store.reads import stored_text_embeddings


def label_vectors(store: FeatureStore | None, labels: dict[str, str]) -> dict[str, np.ndarray]:
    """node_id -> unit vector of its label (nodes without a label are left out)."""
    texts = sorted({t for t in labels.values() if t})
    known = stored_text_embeddings(store, texts) if store is not None else {}
    rest = [t for t in texts if t not in known]
    if rest:
        known.update(zip(rest, embed(rest)))
    return {n: known[t] for n, t in labels.items() if t}
