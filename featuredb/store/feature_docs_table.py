"""The feature_docs table itself: whether it exists and clearing it (the write path calls this on every change)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import duckdb

TABLE = "feature_docs"


def has_feature_docs(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the documents table exists (it holds rows only while it is current)."""
    return bool(con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ? AND NOT temporary",
                            [TABLE]).fetchone()[0])


def clear_feature_docs(con: duckdb.DuckDBPyConnection) -> None:
    """Forget every document (called on writes that change what GET feature returns)."""
    if has_feature_docs(con):
        con.execute(f"DELETE FROM {TABLE}")
