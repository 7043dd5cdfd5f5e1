"""Where a graph's features fire hardest, as hashed windows: two features whose top examples peak on the same
tokens of the same texts are one concept to a person reading their dashboards."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.sparse import csr_matrix

from tracer.key_tables import registered_values
from tracer.node_mapping import NodeMapping

BUCKETS = 1 << 14
TOP = 20  # top examples per feature
WINDOW = 4  # tokens up to and including the peak


def example_windows(store: Any, mapping: NodeMapping | None) -> dict[str, np.ndarray]:
    """node_id -> its TOP top examples' peaks (corpus row and token; for examples without a corpus row, the
    peak token and the WINDOW-1 before it), hashed to sorted indices below BUCKETS; empty without a mapping."""
    if mapping is None or not mapping.mapped:
        return {}
    keys = sorted({m.key for m in mapping.mapped})
    # each feature's TOP strongest examples (max_by keeps a heap per feature: no sort of all rows)
    query = '''SELECT feature_key, max_by({bucket} % {buckets}, "maxValue", {top}) FROM activations
                 WHERE feature_key IN (SELECT v FROM _graph_example_keys) AND "maxValue" > 0
                   AND "maxValueTokenIndex" IS NOT NULL {extra} GROUP BY feature_key'''
    buckets: dict[str, set[int]] = {}
    with registered_values(store.con, "_graph_example_keys", keys):
        # where each example came from (corpus row and peak token): narrow columns, fast
        rows = store.con.execute(query.format(bucket='hash("dataSource", "dataIndex", "maxValueTokenIndex")',
                                              buckets=BUCKETS, top=TOP, extra='AND "dataIndex" IS NOT NULL')).fetchall()
    found = {r[0] for r in rows}
    rest = [k for k in keys if k not in found]
    if rest:  # examples without a corpus row (an import): the tokens up to the peak
        with registered_values(store.con, "_graph_example_keys", rest):
            rows += store.con.execute(query.format(
                bucket=f'hash(list_slice(tokens, greatest("maxValueTokenIndex" - {WINDOW - 2}, 1), '
                       '"maxValueTokenIndex" + 1))', buckets=BUCKETS, top=TOP, extra="")).fetchall()
    for key, hits in rows:
        buckets[key] = {int(b) for b in hits}
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
