"""featuredb: a local, Neuronpedia-compatible feature database for transcoder features."""

from featuredb.errors import (
    BadInputError,
    FeatureDBError,
    NotFoundError,
    SchemaVersionError,
    StoreLockedError,
)
from featuredb.store import FeatureStore, default_db_path

__all__ = [
    "BadInputError",
    "FeatureDBError",
    "FeatureStore",
    "NotFoundError",
    "SchemaVersionError",
    "StoreLockedError",
    "default_db_path",
]
