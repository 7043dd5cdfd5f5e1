"""The label each store feature gets in a graph: the explanation featuredb.labels.label_rule picks."""

from __future__ import annotations

from typing import Any

from featuredb.labels.label_rule import BASELINE_TYPE, PREFERRED_TYPES, best_label
from featuredb.store.feature_store import FeatureStore
from featuredb.store.reads import chosen_labels

__all__ = ["BASELINE_TYPE", "PREFERRED_TYPES", "best_explanation", "store_labels"]


def store_labels(store: FeatureStore, keys: list[str]) -> dict[str, tuple[str, str]]:
    """feature_key -> (description, typeName) of its label (label_rule), for the keys that have one."""
    return chosen_labels(store, keys)


def best_explanation(explanations: list[Any]) -> tuple[str, str] | None:
    """(description, typeName) of the label (label_rule) among Neuronpedia explanation records."""
    best = best_label(explanations)
    if best is None:
        return None
    return best.description.strip(), best.typeName or ""
