"""The label rule as a query: each feature's label row among its explanations (featuredb.labels.label_rule)."""

from __future__ import annotations

from featuredb.labels.label_rule import USABLE_SQL, label_rank_sql


def labels_sql(where: str = "TRUE", columns: str = 'feature_key, description, "typeName"') -> str:
    """A query for each feature's label row (`columns` of explanations) among usable explanations matching `where`."""
    return (f"SELECT {columns} FROM explanations WHERE ({where}) AND {USABLE_SQL} "
            f"QUALIFY {label_rank_sql()} = 1")
