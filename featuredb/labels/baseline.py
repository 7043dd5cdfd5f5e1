"""Baseline labels from a feature's own records: its peak tokens, what follows them, and its top output logits.

For example `"Texas" → says "Austin"`: written as explanations of type `featuredb-baseline`, so search and
graphs have a label before any LLM-written explanation exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from featuredb.errors import NotFoundError

TYPE_NAME = "featuredb-baseline"
MAX_PEAKS = 3
MAX_LOGITS = 2
NEXT_TOKEN_SHARE = 0.5  # the following token is named when at least half of the top examples share it


@dataclass
class BaselineSummary:
    """What `featuredb label features` wrote."""

    labelled: int
    unlabelled: int  # features with neither examples nor logits (dead features)


def _show(token: str) -> str:
    shown = token.strip()
    if not shown:
        shown = token.encode("unicode_escape").decode() or "∅"
    return '"' + shown.replace('"', "'") + '"'


def describe(peaks: list[str], next_token: str | None, logits: list[str]) -> str | None:
    """The label text from peak tokens, a dominant next token and top logits; None when there is nothing."""
    parts = []
    if peaks:
        parts.append("/".join(_show(t) for t in peaks))
        if next_token is not None:
            parts.append(f"before {_show(next_token)}")
    if logits:
        parts.append("→ says " + ", ".join(_show(t) for t in logits))
    return " ".join(parts) if parts else None


def _scope(model: str | None, source: str | None, alias: str = "") -> tuple[str, list[Any]]:
    """SQL condition (and parameters) selecting a model and/or source, on columns of `alias`."""
    a = f"{alias}." if alias else ""
    conds, params = ["TRUE"], []
    if model:
        conds.append(f'{a}"modelId" = ?')
        params.append(model)
    if source:
        conds.append(f'{a}"layer" = ?')
        params.append(source)
    return " AND ".join(conds), params


def _rows(con: Any, model: str | None, source: str | None) -> list[tuple]:
    cond, params = _scope(model, source)
    f_cond, _ = _scope(model, source, "f")
    return con.execute(f"""
        WITH top AS (
            SELECT feature_key, tokens["maxValueTokenIndex" + 1] AS peak, tokens["maxValueTokenIndex" + 2] AS nxt,
                   "maxValue" FROM activations
            WHERE coalesce("binMin", -1) = -1 AND "maxValueTokenIndex" IS NOT NULL AND {cond}),
        peaks AS (SELECT feature_key, coalesce(nullif(trim(peak), ''), peak) AS peak, count(*) AS c,
                         max("maxValue") AS m FROM top WHERE peak IS NOT NULL GROUP BY ALL),
        peak_lists AS (SELECT feature_key, list(peak ORDER BY c DESC, m DESC, peak) AS ps, sum(c) AS n
                       FROM peaks GROUP BY ALL),
        nexts AS (SELECT feature_key, nxt, count(*) AS c FROM top WHERE nxt IS NOT NULL GROUP BY ALL),
        best_next AS (SELECT feature_key, arg_max(nxt, c) AS nx, max(c) AS c FROM nexts GROUP BY ALL)
        SELECT f."modelId", f."layer", f."index", p.ps, p.n, b.nx, b.c, f.pos_str
        FROM features f LEFT JOIN peak_lists p USING (feature_key) LEFT JOIN best_next b USING (feature_key)
        WHERE {f_cond}
        ORDER BY f."modelId", f."layer", f."index" """, params + params).fetchall()


def label_features(store: Any, *, model: str | None = None, source: str | None = None) -> BaselineSummary:
    """Write (replacing earlier baseline labels) one `featuredb-baseline` explanation per feature in scope."""
    cond, params = _scope(model, source)
    if not store.con.execute(f"SELECT count(*) FROM features WHERE {cond}", params).fetchone()[0]:
        scope = "/".join(x for x in (model, source) if x) or "the store"
        raise NotFoundError(f"no features in {scope} to label")
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    out: dict[str, list[Any]] = {k: [] for k in ("modelId", "layer", "index", "description")}
    unlabelled = 0
    for m, layer, index, peaks, n, nxt, nxt_count, pos_str in _rows(store.con, model, source):
        dominant = nxt if nxt is not None and n and nxt_count / n >= NEXT_TOKEN_SHARE else None
        text = describe(list(peaks or [])[:MAX_PEAKS], dominant, [t for t in (pos_str or []) if t.strip()][:MAX_LOGITS])
        if text is None:
            unlabelled += 1
            continue
        for k, v in zip(out, (m, layer, index, text)):
            out[k].append(v)
    n_rows = len(out["description"])
    table = pa.table({**out, "typeName": [TYPE_NAME] * n_rows, "explanationModelName": [TYPE_NAME] * n_rows,
                      "authorId": ["featuredb"] * n_rows, "createdAt": [now] * n_rows, "updatedAt": [now] * n_rows})
    with store.transaction() as con:
        con.execute(f"DELETE FROM explanations WHERE \"typeName\" = ? AND {cond}", [TYPE_NAME, *params])
        store.upsert({"explanations": table}, in_transaction=False)
        store.mark_search_stale()
    return BaselineSummary(n_rows, unlabelled)
