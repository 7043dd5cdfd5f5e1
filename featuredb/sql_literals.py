"""Values written into SQL text where a statement cannot take a parameter (COPY targets, macros, read_* paths)."""

from __future__ import annotations

from typing import Iterable


def sql_string(value: str) -> str:
    """`value` as a single-quoted SQL string literal (quotes doubled)."""
    return "'" + value.replace("'", "''") + "'"


def sql_string_list(values: Iterable[str]) -> str:
    """`values` as a SQL list literal of strings: ['a', 'b']."""
    return "[" + ", ".join(sql_string(v) for v in values) + "]"
