"""Line-by-line check of JSONL(.gz) files against a table's column types, to name or skip bad lines."""

from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from featuredb.identity import parse_index


@dataclass
class BadLine:
    """One unusable line: file, 1-based line number and why."""

    file: Path
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass
class ScanResult:
    """Good lines (raw text) and bad lines of one file."""

    good: list[str] = field(default_factory=list)
    bad: list[BadLine] = field(default_factory=list)


def open_text(path: Path) -> Any:
    """Open a .jsonl or .jsonl.gz file as UTF-8 text."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _iter_lines(path: Path) -> Iterator[tuple[int, str | None, str | None]]:
    """(line number, text, error) per line; a read error ends the file with one error entry."""
    n = 0
    try:
        with open_text(path) as f:
            for n, text in enumerate(f, start=1):
                yield n, text, None
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        yield n + 1, None, f"corrupt gzip data ({e.__class__.__name__}: {e})"
    except UnicodeDecodeError as e:
        yield n + 1, None, f"not UTF-8 ({e.reason} at byte {e.start})"


def _type_error(duck_type: str, value: Any) -> str | None:
    if value is None:
        return None
    if duck_type.endswith("[]"):
        if not isinstance(value, list):
            return f"expected a list, got {type(value).__name__}"
        for item in value:
            err = _type_error(duck_type[:-2], item)
            if err:
                return "list item: " + err
        return None
    if duck_type == "DOUBLE":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else f"expected a number, got {json.dumps(value)[:40]}"
    if duck_type == "BIGINT":
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"expected an integer, got {json.dumps(value)[:40]}"
    if duck_type == "BOOLEAN":
        return None if isinstance(value, bool) else f"expected true/false, got {json.dumps(value)[:40]}"
    if duck_type == "VARCHAR":
        ok = isinstance(value, (str, int, float, bool))
        return None if ok else f"expected a string, got {type(value).__name__}"
    return None  # JSON: anything


def scan_file(path: Path, columns: dict[str, str], required: tuple[str, ...] = ()) -> ScanResult:
    """Parse every line of `path`, checking each known field's type; unknown fields are ignored."""
    result = ScanResult()
    for n, text, read_error in _iter_lines(path):
        if read_error:
            result.bad.append(BadLine(path, n, read_error))
            break
        assert text is not None
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            result.bad.append(BadLine(path, n, f"malformed JSON ({e.msg} at column {e.colno})"))
            continue
        if not isinstance(record, dict):
            result.bad.append(BadLine(path, n, f"expected a JSON object, got {type(record).__name__}"))
            continue
        reason = next((f"missing field {k!r}" for k in required if record.get(k) is None), None)
        for col, ty in columns.items():
            if reason:
                break
            if col not in record:
                continue
            if col == "index":
                try:
                    if record[col] is not None:
                        parse_index(record[col])
                except ValueError as e:
                    reason = f"field 'index': {e}"
                    break
                continue
            err = _type_error(ty, record[col])
            if err:
                reason = f"field {col!r}: {err}"
                break
        if reason:
            result.bad.append(BadLine(path, n, reason))
        else:
            result.good.append(text if text.endswith("\n") else text + "\n")
    return result
