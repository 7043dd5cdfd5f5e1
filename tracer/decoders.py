"""Decoder directions of a graph's features, read from the transcoder files an ingest recorded in the store."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from featuredb.store.feature_store import FeatureStore
from featuredb.store.reads import source_set_settings
from tracer.node_mapping import NodeMapping


def decoder_vectors(store: FeatureStore, mapping: NodeMapping) -> dict[str, np.ndarray]:
    """node_id -> W_dec row; empty when the store has no transcoder files for the source set (e.g. imported)."""
    settings = source_set_settings(store, mapping.model, mapping.source_set)
    paths = list(settings.transcoders) if settings else []
    if not paths or not mapping.mapped:
        return {}
    from ingest.transcoder_formats import load_transcoders  # torch only when there is something to load

    by_layer: dict[int, list[Any]] = defaultdict(list)
    for m in mapping.mapped:
        by_layer[m.node.layer].append(m)
    try:
        tset = load_transcoders(paths, sorted(by_layer))
    except Exception:  # moved or deleted files: supernodes go on without this signal
        return {}
    out = {}
    for t in tset.transcoders:
        w = t.W_dec.float().numpy()
        for m in by_layer.get(t.layer, []):
            if 0 <= m.node.index < w.shape[0]:
                out[m.node.node_id] = w[m.node.index]
    return out
