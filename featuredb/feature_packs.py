"""Feature packs: a feature's row and compact examples in one zlib BLOB, so GET feature is one indexed lookup.

DuckDB decompresses a whole vector of every list column to fetch one row: the features row (pos_str, histograms,
...) and a feature's compact examples cost about 1 ms each that way. A pack holds the same values (the row's
non-null fields and the examples' columns as JSON, the examples' q bytes after it) and is written by ingest
beside the rows. Any later write to a feature's row or activations deletes its pack (`FeatureStore`), so reads
fall back to the rows and never see a stale pack. Explanations are not packed: labelling never touches packs.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import numpy as np
import pyarrow as pa

TABLE = "feature_packs"
LEVEL = 6  # zlib level: packs are written once per ingest and read many times
EXAMPLE_FIELDS = ("kind", "dataIndex", "window_key", "maxValue", "maxValueTokenIndex", "binMin", "binMax",
                  "binContains", "dataSource", "creatorId")


def pack(feature: dict[str, Any], examples: dict[str, list[Any]], q: list[bytes]) -> bytes:
    """One feature's pack: its row's non-null fields, its examples' columns and their q bytes."""
    head = {"f": {k: v for k, v in feature.items() if v is not None},
            "e": {k: examples[k] for k in EXAMPLE_FIELDS}, "n": [len(x) for x in q]}
    return zlib.compress(json.dumps(head, separators=(",", ":")).encode() + b"\0" + b"".join(q), LEVEL)


def unpack(blob: bytes) -> tuple[dict[str, Any], dict[str, list[Any]], list[np.ndarray]]:
    """(row fields, example columns, each example's q as uint8) of a pack."""
    raw = zlib.decompress(blob)
    cut = raw.index(b"\0")
    head = json.loads(raw[:cut])
    q = np.frombuffer(raw, dtype=np.uint8, offset=cut + 1)
    ends = np.cumsum(head["n"])
    return head["f"], head["e"], [q[e - n:e] for e, n in zip(ends.tolist(), head["n"])]


def pack_table(features: pa.Table, examples: pa.Table, skip: set[int] = frozenset()) -> pa.Table:
    """Packs (feature_key, modelId, layer, pack) of one block of ingest rows; features in `skip` get none."""
    rows = features.to_pylist()
    by_index: dict[int, list[int]] = {}
    for i, idx in enumerate(examples["index"].to_pylist()):
        by_index.setdefault(idx, []).append(i)
    cols = {k: examples[k].to_pylist() for k in EXAMPLE_FIELDS}
    q = examples["q"].combine_chunks() if examples.num_rows else None
    flat = q.values.to_numpy(zero_copy_only=False) if q is not None else None
    offsets = q.offsets.to_numpy() if q is not None else None
    keys, models, layers, blobs = [], [], [], []
    for row in rows:
        if row["index"] in skip:
            continue
        picks = by_index.get(row["index"], [])
        blobs.append(pack(row, {k: [cols[k][i] for i in picks] for k in EXAMPLE_FIELDS},
                          [flat[offsets[i]:offsets[i + 1]].tobytes() for i in picks]))
        keys.append(f"{row['modelId']}/{row['layer']}/{row['index']}")
        models.append(row["modelId"])
        layers.append(row["layer"])
    return pa.table({"feature_key": pa.array(keys, pa.string()), "modelId": pa.array(models, pa.string()),
                     "layer": pa.array(layers, pa.string()), "pack": pa.array(blobs, pa.binary())})
