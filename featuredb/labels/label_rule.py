"""THE rule for which explanation is a feature's label, in SQL (DuckDB) and in Python, and nowhere else.

Best first:
1. the higher `coalesce("scoreV2", "scoreV1")` (NULL scores last): a scored label beats an unscored one;
2. Neuronpedia's type preference: `np_max-act-logits`, `np_max-act`, any other type, our `featuredb-baseline`;
3. the smaller `id` (a stable tie-break).

Only explanations with a non-blank description can be a label (`USABLE_SQL`, `is_usable`). Search hits,
`trace label` clerps (hence supernode names), GET feature's explanation order and the inference routes all
order by this rule, so they name a feature the same way.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

BASELINE_TYPE = "featuredb-baseline"  # the type of featuredb's own labels (featuredb.labels.baseline)
PREFERRED_TYPES = ("np_max-act-logits", "np_max-act")  # what Neuronpedia shows first, best first
OTHER_TIER = len(PREFERRED_TYPES)  # every other type (LLM-written ones: oai_token-act-pair, ...)
BASELINE_TIER = OTHER_TIER + 1

SCORE_SQL = 'coalesce("scoreV2", "scoreV1")'
TYPE_TIER_SQL = ("CASE \"typeName\" " + " ".join(f"WHEN '{t}' THEN {i}" for i, t in enumerate(PREFERRED_TYPES))
                 + f" WHEN '{BASELINE_TYPE}' THEN {BASELINE_TIER} ELSE {OTHER_TIER} END")
# ORDER BY fragment over explanations' columns: the label first.
LABEL_ORDER_SQL = f'{SCORE_SQL} DESC NULLS LAST, {TYPE_TIER_SQL}, "id" ASC NULLS LAST'
USABLE_SQL = "coalesce(trim(description), '') <> ''"

T = TypeVar("T")


def label_rank_sql(partition: str = "feature_key") -> str:
    """`row_number() OVER (...)`: 1 for the label of each `partition` (explanations' columns)."""
    return f"row_number() OVER (PARTITION BY {partition} ORDER BY {LABEL_ORDER_SQL})"


def _get(record: Any, name: str) -> Any:
    if isinstance(record, Mapping):
        return record.get(name)
    return getattr(record, name, None)


def score(record: Any) -> float | None:
    """coalesce(scoreV2, scoreV1) of an explanation record (a 0.0 score counts; NaN counts as no score)."""
    for name in ("scoreV2", "scoreV1"):
        v = _get(record, name)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            return float(v)
    return None


def type_tier(type_name: str | None) -> int:
    """0 for np_max-act-logits, 1 for np_max-act, 2 for any other type, 3 for featuredb-baseline."""
    if type_name in PREFERRED_TYPES:
        return PREFERRED_TYPES.index(type_name)
    return BASELINE_TIER if type_name == BASELINE_TYPE else OTHER_TIER


def label_sort_key(record: Any) -> tuple:
    """Sort key (ascending = best first) of an explanation record: an object or a mapping with Neuronpedia's
    fields (scoreV1, scoreV2, typeName, id); the same order as LABEL_ORDER_SQL."""
    s = score(record)
    ident = _get(record, "id")
    return (s is None, -s if s is not None else 0.0, type_tier(_get(record, "typeName")),
            ident is None, str(ident) if ident is not None else "")


def is_usable(record: Any) -> bool:
    """True when the explanation has a non-blank description (what USABLE_SQL keeps)."""
    return bool(str(_get(record, "description") or "").strip())


def sort_explanations(records: Iterable[T]) -> list[T]:
    """The records in label order, best first."""
    return sorted(records, key=label_sort_key)


def best_label(records: Iterable[T]) -> T | None:
    """The usable record that is the label, or None."""
    usable = [r for r in records if is_usable(r)]
    return min(usable, key=label_sort_key) if usable else None
