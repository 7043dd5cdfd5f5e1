"""The label each store feature gets in a graph: Neuronpedia's preferred explanation types, then the best score."""

from __future__ import annotations

from typing import Any

from tracer.key_tables import registered_values

PREFERRED_TYPES = ("np_max-act-logits", "np_max-act")  # what Neuronpedia shows first
BASELINE_TYPE = "featuredb-baseline"


def _rank(type_name: str | None, score: float | None) -> tuple[int, float]:
    if type_name in PREFERRED_TYPES:
        tier = PREFERRED_TYPES.index(type_name)
    else:
        tier = len(PREFERRED_TYPES) + (1 if type_name == BASELINE_TYPE else 0)
    return tier, -(score if score is not None else float("-inf"))


def store_labels(store: Any, keys: list[str]) -> dict[str, tuple[str, str]]:
    """feature_key -> (description, typeName) of its best explanation, for the keys that have one."""
    if not keys:
        return {}
    order = " ".join(f"WHEN '{t}' THEN {i}" for i, t in enumerate(PREFERRED_TYPES))
    with registered_values(store.con, "_label_keys", keys):
        rows = store.con.execute(f"""
        SELECT feature_key, description, "typeName" FROM (
            SELECT feature_key, description, "typeName", row_number() OVER (
                PARTITION BY feature_key ORDER BY
                    CASE "typeName" {order} WHEN '{BASELINE_TYPE}' THEN {len(PREFERRED_TYPES) + 1}
                    ELSE {len(PREFERRED_TYPES)} END,
                    coalesce("scoreV2", "scoreV1") DESC NULLS LAST, id) AS rn
            FROM explanations
            WHERE feature_key IN (SELECT v FROM _label_keys) AND coalesce(trim(description), '') <> '')
        WHERE rn = 1""").fetchall()
    return {k: (d.strip(), t) for k, d, t in rows}


def best_explanation(explanations: list[Any]) -> tuple[str, str] | None:
    """(description, typeName) of the preferred explanation among Neuronpedia explanation records."""
    usable = [e for e in explanations if (getattr(e, "description", None) or "").strip()]
    if not usable:
        return None
    best = min(usable, key=lambda e: _rank(e.typeName, getattr(e, "scoreV2", None) or e.scoreV1))
    return best.description.strip(), best.typeName or ""
