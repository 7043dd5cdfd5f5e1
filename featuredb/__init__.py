"""featuredb: a local, Neuronpedia-compatible feature database for transcoder features."""

from __future__ import annotations

from typing import Any

from featuredb.errors import (
    BadInputError,
    FeatureDBError,
    NotFoundError,
    SchemaVersionError,
    StoreLockedError,
)

__all__ = [
    "BadInputError",
    "FeatureDBError",
    "FeatureStore",
    "NotFoundError",
    "SchemaVersionError",
    "StoreLockedError",
    "default_db_path",
]


def __getattr__(name: str) -> Any:
    """FeatureStore and default_db_path load DuckDB on first use, so the errors import without it."""
    if name in ("FeatureStore", "default_db_path"):
        from featuredb import store

        return getattr(store, name)
    raise AttributeError(f"module 'featuredb' has no attribute {name!r}")
