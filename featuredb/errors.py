"""Typed errors whose message is one line a user can act on."""

from __future__ import annotations


class FeatureDBError(Exception):
    """A user-facing failure: the CLI prints its message on one line and exits non-zero."""


class StoreLockedError(FeatureDBError):
    """The DuckDB file is held by another process."""


class SchemaVersionError(FeatureDBError):
    """The DuckDB file was written by a schema this version cannot read."""


class BadInputError(FeatureDBError):
    """An input file is malformed; the message names the file and line."""


class NotFoundError(FeatureDBError):
    """A model, source or feature is not in the store."""
