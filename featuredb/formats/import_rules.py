"""What a line of a Neuronpedia export may hold, written twice: as Python checks and as the SQL that imports it.

Rules per field type (null always means "absent"; `index` and the folder's fields have their own rule):

- VARCHAR: a string.                     - DOUBLE: a finite number (not NaN or Infinity).
- BIGINT: an integer in [-2**63, 2**63).  - BOOLEAN: true or false.
- T[]: a list whose items all follow T (no null items); T may itself be a list (BIGINT[][]).
- JSON: any value, kept as given.
- index: a non-negative integer or a string of decimal digits, at most 2**63 - 1 (see identity.parse_index).
- fields the folder names (modelId, layer, ...): when present, equal to the folder's value.

The Python side (`LineRules.problem`) names the reason for one parsed line; the SQL side (`LineRules.select_sql`)
casts DuckDB's JSON-typed columns and stops the statement at the first value that breaks a rule. They must agree:
tests/test_import_properties.py checks it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from featuredb.identity import parse_index
from featuredb.sql_literals import sql_string

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INDEX = "index"

_NUMBER = r"-?[0-9][-+0-9.eE]*"
_STRING_RE = r'"(?:[^"\\]|\\.)*"'
_INT_LIST_RE = r"\[(?:-?[0-9]+(?:,-?[0-9]+)*)?\]"
# DuckDB writes a JSON list back minified: these patterns say every item is an integer / a string / a list of
# integers (BIGINT[][]: Neuronpedia's Activation.zIndices).
_LIST_PATTERNS = {
    "BIGINT": _INT_LIST_RE,
    "VARCHAR": rf"\[(?:{_STRING_RE}(?:,{_STRING_RE})*)?\]",
    "BIGINT[]": rf"\[(?:{_INT_LIST_RE}(?:,{_INT_LIST_RE})*)?\]",
}


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**40:
        return "a very long integer"
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def value_problem(duck_type: str, value: Any) -> str | None:
    """Why `value` (parsed JSON, not null) breaks the rule of a column of `duck_type`, or None."""
    if duck_type == "JSON":
        return None
    if duck_type.endswith("[]"):
        if not isinstance(value, list):
            return f"expected a list, got {_shown(value)}"
        for i, item in enumerate(value):
            err = "null" if item is None else value_problem(duck_type[:-2], item)
            if err:
                return f"item {i}: {err}"
        return None
    if duck_type == "VARCHAR":
        return None if isinstance(value, str) else f"expected a string, got {_shown(value)}"
    if duck_type == "BOOLEAN":
        return None if isinstance(value, bool) else f"expected true or false, got {_shown(value)}"
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if duck_type == "DOUBLE":
        if not is_number:
            return f"expected a number, got {_shown(value)}"
        return None if math.isfinite(value) else f"expected a finite number, got {_shown(value)}"
    if duck_type == "BIGINT":
        if not (is_number and isinstance(value, int)):
            return f"expected an integer, got {_shown(value)}"
        return None if INT64_MIN <= value <= INT64_MAX else f"integer {_shown(value)} is out of range"
    raise ValueError(f"no import rule for type {duck_type}")


def _sql_rule(duck_type: str, j: str, v: str) -> tuple[str, str]:
    """(value, condition) in SQL: the value TRY_CAST from JSON column `j`, and whether `j` (its text) and that
    value `v` keep the rule. The text DuckDB keeps for a JSON value (strings quoted, lists minified) is cheaper
    to look at than json_type of every item.
    """
    text = f"CAST({j} AS VARCHAR)"
    if duck_type == "JSON":
        return j, "true"
    if duck_type == "VARCHAR":
        return f"({j} ->> '$')", f"left({text}, 1) = '\"'"
    if duck_type == "BOOLEAN":
        return f"TRY_CAST({j} AS BOOLEAN)", f"{text} IN ('true', 'false')"
    if duck_type == "DOUBLE":
        return f"TRY_CAST({j} AS DOUBLE)", f"regexp_full_match({text}, {sql_string(_NUMBER)}) AND isfinite({v})"
    if duck_type == "BIGINT":
        return f"TRY_CAST({j} AS BIGINT)", f"regexp_full_match({text}, '-?[0-9]+') AND {v} IS NOT NULL"
    item = duck_type[:-2]
    value = f"TRY_CAST({j} AS {duck_type})"
    if item == "DOUBLE":
        # Cheaper than a pattern: a string item has a quote; true, false, null, NaN and Infinity (in any case)
        # have one of a, u, n, N; an object or list item casts to NULL. Only an overflow (1e400) is left.
        letters = " OR ".join(f"contains({text}, '{c}')" for c in ('"', "a", "u", "n", "N"))
        finite = (f"isfinite(list_inner_product({v}, {v})) "  # cheap, but it overflows for items beyond 1e154
                  f"OR coalesce(list_max({v}) < 'inf'::DOUBLE AND list_min({v}) > '-inf'::DOUBLE, true)")
        return value, f"NOT ({letters}) AND list_count({v}) = len({v}) AND ({finite})"
    pattern = f"regexp_full_match({text}, {sql_string(_LIST_PATTERNS[item])})"
    if item == "BIGINT":  # an item beyond BIGINT casts to NULL
        return value, f"{pattern} AND list_count({v}) = len({v})"
    if item == "BIGINT[]":  # likewise one level down
        return value, f"{pattern} AND list_count(flatten({v})) = len(flatten({v}))"
    return value, pattern


def _sql_index(j: str, v: str) -> tuple[str, str]:
    """(value, condition) in SQL for `index`: digits, quoted (Neuronpedia's string) or not."""
    text = f"CAST({j} AS VARCHAR)"
    return f"TRY_CAST(trim({text}, '\"') AS BIGINT)", f"regexp_full_match({text}, '\"?[0-9]+\"?') AND {v} IS NOT NULL"


@dataclass(frozen=True)
class LineRules:
    """What the lines of one file must hold: field types, fields that must be there, values fixed by the folder."""

    columns: dict[str, str]  # field -> DuckDB type; other fields are ignored
    required: tuple[str, ...] = ()
    fixed: dict[str, str] = field(default_factory=dict)  # field -> the value its folder gives

    def problem(self, record: dict[str, Any]) -> str | None:
        """Why a parsed line breaks the rules ("field 'x': reason"), or None."""
        for col in self.required:
            if record.get(col) is None:
                return f"missing field {col!r}"
        for col, duck_type in self.columns.items():
            value = record.get(col)
            if value is None:
                continue
            if col == INDEX:
                try:
                    parse_index(value)
                except ValueError as e:
                    return f"field 'index': {e}"
                continue
            err = value_problem(duck_type, value)
            if err is None and col in self.fixed and value != self.fixed[col]:
                err = f"{_shown(value)} does not match its folder ({self.fixed[col]!r})"
            if err:
                return f"field {col!r}: {err}"
        return None

    def read_spec(self) -> str:
        """DuckDB's `columns=` argument of read_json: every field read as JSON, to be checked by select_sql."""
        return "{" + ", ".join(f"{sql_string(c)}: 'JSON'" for c in self.columns) + "}"

    def select_sql(self, source_sql: str, file_column: str | None = None) -> str:
        """SELECT over `source_sql` (fields as JSON) giving typed columns; error() on the first value breaking a rule.

        With `file_column`, the error names the file it came from (the line is left to the Python scanner).
        Each value is cast once, one level below the checks (DuckDB does not share it between CASE branches).
        """
        where = f""" || ' in file "' || {file_column} || '"'""" if file_column else ""
        inner, outer = [], []
        for n, (col, duck_type) in enumerate(self.columns.items()):
            q, j, v = '"' + col.replace('"', '""') + '"', f'"_j{n}"', f'"_v{n}"'
            value, cond = _sql_index(j, v) if col == INDEX else _sql_rule(duck_type, j, v)
            inner.append(f"{q} AS {j}, {value} AS {v}")
            if col in self.fixed:
                cond = f"{cond} AND {v} = {sql_string(self.fixed[col])}"
            absent = f"error({sql_string(f'missing field {col!r}')}{where})" if col in self.required else "NULL"
            bad = f"error({sql_string(f'field {col!r} breaks its rule: ')} || left(CAST({j} AS VARCHAR), 60){where})"
            outer.append(f"CASE WHEN {j} IS NULL THEN {absent} WHEN {cond} THEN {v} ELSE {bad} END AS {q}")
        file = f", {file_column}" if file_column else ""
        return f"SELECT {', '.join(outer)} FROM (SELECT {', '.join(inner)}{file} FROM ({source_sql}))"
