"""Line-by-line reading of JSONL(.gz) export files, to name (or skip) the lines that break the import rules.

It reads what DuckDB's JSON reader reads, so the two agree on every line: UTF-8 text split at "\\n", lines of
only " \\t\\r\\n\\v\\f" skipped, JSON plus trailing commas and NaN/Infinity literals (which no numeric field
accepts). Gzip data counts only once its checksum is verified: a corrupt stream ends the file, and the lines of
the corrupt part are skipped with it, since some of them may have been altered.
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from featuredb.formats.import_rules import LineRules

LINE_SPACE = " \t\n\r\v\f"  # what DuckDB's reader trims around a line
_CHUNK = 1 << 16
_RELAXED = re.compile(r'("(?:[^"\\]|\\.)*")|,[ \t\n\r]*(?=[\]}])|(-?)((?i:nan|infinity|inf))\b')
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


@dataclass
class BadLine:
    """One unusable line (or a run of lines a corrupt gzip stream loses): file, 1-based line number and why."""

    file: Path
    line: int
    reason: str
    lines: int = 1  # how many lines this entry skips

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass
class ScanResult:
    """Good lines (raw text) and bad lines of one file."""

    good: list[str] = field(default_factory=list)
    bad: list[BadLine] = field(default_factory=list)


class _Object(dict):  # type: ignore[type-arg]
    """A parsed JSON object that remembers which of its keys appeared more than once."""

    repeated: set[str]


def _object(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object(pairs)
    obj.repeated = set()
    if len(obj) < len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            (obj.repeated if k in seen else seen).add(k)
    return obj


def _parse_int(text: str) -> int | float:
    return int(text) if len(text) <= 4000 else float(text)  # DuckDB reads a huge integer as a double


def _loads(text: str) -> Any:
    return json.loads(text, object_pairs_hook=_object, parse_int=_parse_int)


def _relax(m: re.Match[str]) -> str:
    if m.group(1) is not None:
        return m.group(1)
    if m.group(3) is None:
        return ""  # a trailing comma
    if m.group(3).lower() == "nan":
        return "NaN"
    return "-Infinity" if m.group(2) else "Infinity"


def parse_json_line(text: str) -> Any:
    """Parse one line as DuckDB's reader does: JSON plus trailing commas and NaN/Infinity literals in any case."""
    try:
        value = _loads(text)
    except json.JSONDecodeError as strict_error:
        relaxed = _RELAXED.sub(_relax, text)
        if relaxed == text:
            raise
        try:
            value = _loads(relaxed)
        except json.JSONDecodeError:
            raise strict_error from None
    escape = _SURROGATE_ESCAPE.search(text)
    if escape:  # Python keeps an unpaired surrogate escape; DuckDB (rightly) refuses it
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise json.JSONDecodeError("unpaired surrogate in a string", text, escape.start()) from None
    return value


def line_problem(raw: bytes, rules: LineRules) -> str | None:
    """Why one raw line (without its "\\n") cannot be imported, or None when it can (or is blank)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"not UTF-8 ({e.reason} at byte {e.start + 1} of the line)"
    body = text.strip(LINE_SPACE)
    if not body:
        return None
    try:
        record = parse_json_line(body)
    except json.JSONDecodeError as e:
        return f"malformed JSON ({e.msg} at column {e.colno})"
    if not isinstance(record, dict):
        return f"expected a JSON object, got {'a list' if isinstance(record, list) else json.dumps(record)[:40]}"
    repeated = sorted(record.repeated & set(rules.columns)) if isinstance(record, _Object) else []
    if repeated:
        return f"field {repeated[0]!r} appears twice"
    return rules.problem(record)


# -- raw lines ---------------------------------------------------------------------------------------------------

_TRUNCATED, _NOT_GZIP = "truncated", "not gzip"
_MAGIC = b"\x1f\x8b"


def _gzip_members(path: Path, keep: bool = True) -> Iterator[tuple[bytes, str | None]]:
    """Decompressed data of a .gz file, member by member: (data, None) once a member's checksum is verified.

    A problem ends the file: (data so far in this member, "truncated") when the file stops inside a member,
    (b"", "not gzip") for bytes that do not start a member, or (data so far, zlib's message) for corrupt data or
    a checksum mismatch.
    """
    d, fed, out = zlib.decompressobj(wbits=31), False, []
    with open(path, "rb") as f:
        pending = b""
        while True:
            chunk = pending or f.read(_CHUNK)
            pending = b""
            if not chunk:
                break
            if not fed and not chunk.startswith(_MAGIC[: len(chunk)]):
                yield b"", _NOT_GZIP
                return
            fed = True
            try:
                data = d.decompress(chunk)
            except zlib.error as e:
                yield b"".join(out), str(e)
                return
            if keep:
                out.append(data)
            if d.eof:
                yield b"".join(out), None
                pending, d, fed, out = d.unused_data, zlib.decompressobj(wbits=31), False, []
    if fed:
        yield b"".join(out), _TRUNCATED


def gzip_problem(path: Path) -> str | None:
    """Why a .gz file cannot be trusted whole (truncated, corrupt, checksum mismatch), or None."""
    for _, problem in _gzip_members(path, keep=False):
        if problem:
            return {_TRUNCATED: "gzip data ends early (the file is cut off)",
                    _NOT_GZIP: "not gzip data, or bytes after its end"}.get(problem, f"corrupt gzip data ({problem})")
    return None


def _raw_lines(path: Path) -> Iterator[tuple[int, bytes | None, BadLine | None]]:
    """(line number, raw bytes, None) per line; a gzip problem ends the file with (n, None, BadLine).

    A line counts once its "\\n" or the verified end of the file is read: the unfinished line before a gzip
    problem is lost with the rest.
    """
    if not path.name.endswith(".gz"):
        with open(path, "rb") as f:
            for n, raw in enumerate(f, start=1):
                yield n, raw.removesuffix(b"\n"), None
        return
    n, carry, members = 0, b"", 0
    for data, problem in _gzip_members(path):
        lines = (carry + data).split(b"\n")
        carry = lines.pop()
        if problem in (None, _TRUNCATED):
            members += problem is None
            for raw in lines:
                n += 1
                yield n, raw, None
        if problem is None:
            continue
        if problem == _TRUNCATED:
            reason = "gzip data ends early: the file is cut off, so the rest of the file is lost"
        elif problem == _NOT_GZIP:
            reason = ("not gzip data, so none of the file can be read" if not members else
                      "unexpected bytes after the end of the gzip data" + (", so this unfinished line is lost"
                                                                           if carry else ""))
        else:
            lost = len(lines) + (1 if carry else 0)
            decoded = f" ({lost} of them decoded, but none can be trusted)" if lines else ""
            reason = f"corrupt gzip data ({problem}): lines {n + 1} to the end of the file are lost{decoded}"
            yield n + 1, None, BadLine(path, n + 1, reason, max(lost, 1))
            return
        yield n + 1, None, BadLine(path, n + 1, reason)
        return
    if carry:
        yield n + 1, carry, None


def scan_file(path: Path, rules: LineRules) -> ScanResult:
    """Check every line of `path` against `rules`: the good lines' text and the bad lines with their reasons."""
    result = ScanResult()
    for n, raw, gzip_bad in _raw_lines(path):
        if gzip_bad is not None:
            result.bad.append(gzip_bad)
            continue
        assert raw is not None
        reason = line_problem(raw, rules)
        if reason:
            result.bad.append(BadLine(path, n, reason))
        elif raw.strip(LINE_SPACE.encode()):
            result.good.append(raw.decode("utf-8") + "\n")
    return result
