"""Feature packs: a feature's row and compact examples in one zlib BLOB, so GET feature is one indexed lookup.

DuckDB decompresses a whole vector of every list column to fetch one row: the features row (pos_str, histograms,
...) and a feature's compact examples cost about 1 ms each that way. A pack holds the same values (the row's
non-null fields and the examples' columns as JSON, the examples' q bytes after it) and is written by ingest
beside the rows. Any later write to a feature's row or activations deletes its pack (`FeatureStore`), so reads
fall back to the rows and never see a stale pack. Explanations are not packed: labelling never touches packs.

Two things keep packs small (a pack is most of a feature's bytes after ingest):
- the bin centres of ingest's fixed activation histogram, the same in every pack, are left out and named in the
  head's "k" (known values, `featuredb.activation_bins`);
- float lists that are exactly float32 (the logit lens's values and histogram) are stored as raw float32 bytes
  after the head instead of 17-digit JSON, and named with their lengths in the head's "b".
Packs written before either (no "k", no "b") read as before.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import numpy as np
import pyarrow as pa

from featuredb.activation_bins import hist_centres

TABLE = "feature_packs"
LEVEL = 6  # zlib level: packs are written once per ingest and read many times
EXAMPLE_FIELDS = ("kind", "dataIndex", "window_key", "maxValue", "maxValueTokenIndex", "binMin", "binMax",
                  "binContains", "dataSource", "creatorId")
KNOWN = {"freq_hist_data_bar_values": hist_centres().tolist()}  # left out of a pack when equal
FLOAT32_FIELDS = ("pos_values", "neg_values", "logits_hist_data_bar_values")  # raw float32 when exactly float32


def pack(feature: dict[str, Any], examples: dict[str, list[Any]], q: list[bytes]) -> bytes:
    """One feature's pack: its row's non-null fields, its examples' columns and their q bytes."""
    fields = {k: v for k, v in feature.items() if v is not None}
    known = [k for k, v in KNOWN.items() if fields.get(k) == v]
    raw, lengths = [], []
    for name in FLOAT32_FIELDS:
        values = fields.get(name)
        if isinstance(values, list) and values:
            wide = np.asarray(values, dtype=np.float64)
            narrow = wide.astype(np.float32)
            if np.array_equal(narrow.astype(np.float64), wide):  # nan would fail this too, and stay JSON
                raw.append(narrow.tobytes())
                lengths.append([name, len(values)])
    left_out = set(known) | {name for name, _ in lengths}
    head: dict[str, Any] = {"f": {k: v for k, v in fields.items() if k not in left_out},
                            "e": {k: examples[k] for k in EXAMPLE_FIELDS}, "n": [len(x) for x in q]}
    if known:
        head["k"] = known
    if lengths:
        head["b"] = lengths
    return zlib.compress(json.dumps(head, separators=(",", ":")).encode() + b"\0" + b"".join(raw + q), LEVEL)


def unpack(blob: bytes) -> tuple[dict[str, Any], dict[str, list[Any]], list[np.ndarray]]:
    """(row fields, example columns, each example's q as uint8) of a pack."""
    raw = zlib.decompress(blob)
    cut = raw.index(b"\0")
    head = json.loads(raw[:cut])
    fields = head["f"]
    for name in head.get("k", ()):
        fields[name] = list(KNOWN[name])
    at = cut + 1
    for name, n in head.get("b", ()):
        fields[name] = np.frombuffer(raw, dtype=np.float32, count=n, offset=at).astype(np.float64).tolist()
        at += 4 * n
    q = np.frombuffer(raw, dtype=np.uint8, offset=at)
    ends = np.cumsum(head["n"])
    return fields, head["e"], [q[e - n:e] for e, n in zip(ends.tolist(), head["n"])]


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
