"""Load DuckDB's fts and vss extensions from their PyPI packages (never from the network)."""

from __future__ import annotations

import importlib
from pathlib import Path

import duckdb

from featuredb.errors import FeatureDBError


def load_extension(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """LOAD the `name` extension ('fts' or 'vss') shipped by the duckdb-extension-{name} package."""
    try:
        pkg = importlib.import_module(f"duckdb_extension_{name}")
    except ImportError:
        raise FeatureDBError(f"the duckdb-extension-{name} package is not installed") from None
    files = sorted(Path(pkg.__file__).parent.rglob(f"{name}.duckdb_extension"))
    if not files:
        raise FeatureDBError(f"duckdb-extension-{name} ships no {name}.duckdb_extension file")
    con.execute(f"LOAD '{files[-1]}'")
