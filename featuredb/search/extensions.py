"""Load DuckDB's fts, vss and httpfs extensions from their PyPI packages (never from the network)."""

from __future__ import annotations

import importlib
from pathlib import Path

import duckdb

from featuredb.errors import FeatureDBError

# What to install when an extension's package is missing (httpfs is the optional S3 extra).
_INSTALL_HINT = {"httpfs": "install featuredb[s3] (duckdb-extension-httpfs) to read or write s3:// URLs"}


def load_extension(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """LOAD the `name` extension ('fts', 'vss' or 'httpfs') shipped by the duckdb-extension-{name} package."""
    try:
        pkg = importlib.import_module(f"duckdb_extension_{name}")
    except ImportError:
        hint = _INSTALL_HINT.get(name)
        raise FeatureDBError(f"the duckdb-extension-{name} package is not installed"
                             + (f": {hint}" if hint else "")) from None
    files = sorted(Path(pkg.__file__).parent.rglob(f"{name}.duckdb_extension"))
    if not files:
        raise FeatureDBError(f"duckdb-extension-{name} ships no {name}.duckdb_extension file")
    con.execute(f"LOAD '{files[-1]}'")
