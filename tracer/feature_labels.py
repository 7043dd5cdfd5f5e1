"""The label each store feature gets in a graph: the explanation featuredb.labels.label_rule picks."""

from __future__ import annotations

from typing import Any

from featuredb.labels.label_rule import BASELINE_TYPE, PREFERRED_TYPES, best_label, labels_sql
from tracer.key_tables import registered_values

__all__ = ["BASELINE_TYPE", "PREFERRED_TYPES", "best_explanation", "store_labels"]


def store_labels(store: Any, keys: list[str]) -> dict[str, tuple[str, str]]:
    """feature_key -> (description, typeName) of its label (label_rule), for the keys that have one."""
    if not keys:
        return {}
    with registered_values(store.con, "_label_keys", keys):
        rows = store.con.execute(labels_sql("feature_key IN (SELECT v FROM _label_keys)")).fetchall()
    return {k: (d.strip(), t) for k, d, t in rows}


def best_explanation(explanations: list[Any]) -> tuple[str, str] | None:
    """(description, typeName) of the label (label_rule) among Neuronpedia explanation records."""
    best = best_label(explanations)
    if best is None:
        return None
    return best.description.strip(), best.typeName or ""
