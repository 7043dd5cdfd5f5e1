"""Import a Neuronpedia export directory ({modelId}/{sourceId}/features/batch-N.jsonl.gz ...) into the store."""

from __future__ import annotations

import re
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import duckdb
from tqdm import tqdm

from featuredb.errors import BadInputError, FeatureDBError
from featuredb.formats.import_rules import LineRules
from featuredb.formats.jsonl_lines import gzip_problem, scan_file
from featuredb.identity import set_of_source
from featuredb.store.schema import (
    ACTIVATIONS,
    CURRENT_VERSION,
    EXPLANATIONS,
    FEATURE_KEY_COLUMN,
    FEATURES,
    MODELS,
    RELEASES,
    SOURCE_SETS,
    SOURCES,
    Table,
    columns_of,
)
from featuredb.store.feature_store import FeatureStore, MissingKeyError
from featuredb.sql_literals import sql_string

BATCH_DIRS = (FEATURES, ACTIVATIONS, EXPLANATIONS)  # {sourceDir}/{features,activations,explanations}/batch-N
META_FILES = (MODELS, RELEASES, SOURCE_SETS, SOURCES)  # {sourceDir}/{model,release,sourceset,source}.jsonl


@dataclass
class ImportReport:
    """What an import read: rows per table, skipped lines, files and wall time."""

    rows: dict[str, int] = field(default_factory=dict)
    files: int = 0
    sources: list[str] = field(default_factory=list)
    skipped_lines: int = 0
    skipped_examples: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "rows": self.rows,
            "files": self.files,
            "sources": self.sources,
            "skipped_lines": self.skipped_lines,
            "skipped_examples": self.skipped_examples,
            "seconds": round(self.seconds, 3),
        }


def _batch_number(path: Path) -> tuple[int, str]:
    m = re.search(r"batch-(\d+)", path.name)
    return (int(m.group(1)) if m else 1 << 62, path.name)


def _jsonl_files(folder: Path) -> list[Path]:
    """The folder's .jsonl(.gz) files in batch order; empty files hold no records and are left out."""
    files = [p for p in folder.iterdir()
             if p.is_file() and p.name.endswith((".jsonl", ".jsonl.gz")) and p.stat().st_size]
    return sorted(files, key=_batch_number)


def find_source_dirs(root: Path) -> list[Path]:
    """Folders that hold one source's export: features/, activations/, explanations/ or source.jsonl."""
    markers = {t.export_file for t in BATCH_DIRS}
    meta = {f"{t.export_file}.jsonl" for t in META_FILES}
    found = []
    for d in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]:
        if d.name in markers:
            continue
        try:
            names = {p.name for p in d.iterdir()}
        except OSError:
            continue
        if names & markers or names & (meta - {"model.jsonl", "release.jsonl"}):
            found.append(d)
    return found


@dataclass
class _Group:
    """The files of one table of one source, read by one statement under one set of line rules."""

    table: Table
    files: list[Path]
    model: str
    source: str
    rules: LineRules


def _folder_fields(table: Table, model: str, source: str) -> dict[str, str]:
    """Fields the folder names: a line may leave them out, but may not contradict them."""
    if table in BATCH_DIRS:
        return {"modelId": model, "layer": source}
    if table is MODELS:
        return {"id": model}
    if table is SOURCES:
        return {"id": source, "modelId": model}
    if table is SOURCE_SETS:
        return {"modelId": model}
    return {}


def _rules(table: Table, model: str, source: str) -> LineRules:
    """The line rules of one table's files in one source folder (ids are derived when absent)."""
    columns = {c: t for c, t in columns_of(table, CURRENT_VERSION).items() if c != FEATURE_KEY_COLUMN[0]}
    required = ("index",) if table in BATCH_DIRS else ("name",) if table is RELEASES else ()
    return LineRules(columns, required, _folder_fields(table, model, source))


def _defaults(group: _Group) -> dict[str, str]:
    found = {c: sql_string(v) for c, v in group.rules.fixed.items()}
    if group.table is SOURCES:
        found["setName"] = sql_string(set_of_source(group.source))
    if group.table is SOURCE_SETS:
        found["name"] = sql_string(set_of_source(group.source))
    return found


def _read_sql(files: list[Path], rules: LineRules) -> str:
    flist = ", ".join(sql_string(str(f)) for f in files)
    return rules.select_sql(
        f"SELECT * FROM read_json([{flist}], format='newline_delimited', columns={rules.read_spec()}, filename=true)",
        file_column="filename")


def _load(store: FeatureStore, group: _Group, files: list[Path]) -> int:
    scope = (group.model, group.source) if group.table in BATCH_DIRS else None
    return store.write_select(group.table, _read_sql(files, group.rules), list(group.rules.columns),
                              defaults=_defaults(group), scope=scope)


class _FileRefused(Exception):
    """DuckDB read these files, but a check it does not make says they hold bad data."""

    def __init__(self, files: list[Path]) -> None:
        super().__init__(f"bad data in {files[0]}")
        self.files = files


_TINY = 64  # bytes: DuckDB reads a file of one non-blank byte as empty, so files this small are scanned in Python


class _FileChecks:
    """What DuckDB does not check, done in a background thread while DuckDB reads: gzip checksums (DuckDB reads
    altered gzip data without a word) and tiny files."""

    def __init__(self, plan: list[_Group]) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="featuredb-checks")
        self._problems = {f: self._pool.submit(_file_problem, f, g.rules) for g in plan for f in g.files
                          if f.name.endswith(".gz") or f.stat().st_size <= _TINY}

    def refused(self, files: list[Path]) -> list[Path]:
        """Those of `files` whose gzip data is cut off or corrupt, or that are tiny and hold a bad line."""
        return [f for f in files if f in self._problems and self._problems[f].result()]

    def __enter__(self) -> "_FileChecks":
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(cancel_futures=True)


def _file_problem(path: Path, rules: LineRules) -> bool:
    try:
        if path.stat().st_size <= _TINY:
            return bool(scan_file(path, rules).bad)
        return gzip_problem(path) is not None
    except OSError:
        return True  # the scan that follows says why


def _suspects(store: FeatureStore, group: _Group, err: Exception, files: list[Path],
              checks: _FileChecks) -> Iterator[Path]:
    """The files of a refused group that hold bad lines: the one the error names first, then each file that
    DuckDB or the gzip check refuses on its own (far cheaper than scanning every file in Python)."""
    named = {str(f) for f in err.files} if isinstance(err, _FileRefused) else set(
        re.findall(r'(?:file "|in file: )([^"\n]+?)(?:"|$)', str(err)))
    first = [f for f in files if str(f) in named]
    yield from first
    for f in files:
        if f not in first and (checks.refused([f]) or _refused_by_duckdb(store, group, f)):
            yield f


def _refused_by_duckdb(store: FeatureStore, group: _Group, f: Path) -> bool:
    try:  # count(COLUMNS(*)) makes DuckDB check every column (count(*) would skip them)
        store.con.execute(f"SELECT count(COLUMNS(*)) FROM ({_read_sql([f], group.rules)})")
        return False
    except (duckdb.Error, UnicodeDecodeError):
        return True


def _clean_group(store: FeatureStore, group: _Group, err: Exception, skip: bool, tmp: Path,
                 replaced: dict[Path, Path | None], report: ImportReport, checks: _FileChecks) -> None:
    """A group was refused: find its bad lines in Python; raise naming the first, or write cleaned copies."""
    found = False
    for f in _suspects(store, group, err, [f for f in group.files if f not in replaced], checks):
        try:
            scan = scan_file(f, group.rules)
        except OSError as e:
            raise BadInputError(f"{f}: cannot read ({e.strerror}) (nothing from this import was committed)") from None
        if not scan.bad:
            continue
        found = True
        if not skip:
            raise BadInputError(f"{scan.bad[0]} (nothing from this import was committed)")
        report.skipped_lines += sum(b.lines for b in scan.bad)
        report.skipped_examples.extend(str(b) for b in scan.bad[: max(0, 5 - len(report.skipped_examples))])
        cleaned = None
        if scan.good:
            cleaned = tmp / f"{len(replaced)}-{f.name.removesuffix('.gz')}"
            cleaned.write_text("".join(scan.good), encoding="utf-8")
        replaced[f] = cleaned
    if not found:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise BadInputError(f"{group.files[0].parent}: {first} (nothing from this import was committed)")


def import_neuronpedia(store: FeatureStore, path: str | Path, *, skip_bad_lines: bool = False,
                       progress: bool | None = None) -> ImportReport:
    """Import every source under `path` in one transaction; a bad line aborts unless skip_bad_lines."""
    root = Path(path)
    if not root.is_dir():
        raise BadInputError(f"{root}: not a directory (expected a Neuronpedia export folder)")
    source_dirs = find_source_dirs(root)
    if not source_dirs:
        raise BadInputError(
            f"{root}: no Neuronpedia export found (expected {{modelId}}/{{sourceId}}/features/batch-N.jsonl.gz)"
        )
    plan: list[_Group] = []
    for d in source_dirs:
        model, source = d.parent.name, d.name
        for t in META_FILES:
            f = d / f"{t.export_file}.jsonl"
            if f.is_file() and f.stat().st_size:
                plan.append(_Group(t, [f], model, source, _rules(t, model, source)))
        for t in BATCH_DIRS:
            sub = d / t.export_file
            files = _jsonl_files(sub) if sub.is_dir() else []
            if files:
                plan.append(_Group(t, files, model, source, _rules(t, model, source)))
    started = time.perf_counter()
    total_files = sum(len(g.files) for g in plan)
    report = ImportReport(sources=[f"{d.parent.name}/{d.name}" for d in source_dirs], files=total_files)
    replaced: dict[Path, Path | None] = {}  # bad file -> cleaned copy (None: nothing usable left)
    with tempfile.TemporaryDirectory(prefix="featuredb-import-") as tmp, _FileChecks(plan) as checks:
        while True:  # a refused group rolls everything back; clean it (or fail) and start again
            rows: dict[str, int] = {}
            bar = tqdm(total=total_files, unit="file", desc="import",
                       disable=None if progress is None else not progress, leave=False)
            current: _Group | None = None
            try:
                with store.transaction():
                    for group in plan:
                        current = group
                        bar.set_postfix_str(f"{group.source}/{group.table.export_file}")
                        use = [replaced.get(f, f) for f in group.files]
                        use = [f for f in use if f is not None]
                        if use:
                            n = _load(store, group, use)
                            rows[group.table.name] = rows.get(group.table.name, 0) + n
                        refused = checks.refused([f for f in group.files if f not in replaced])
                        if refused:
                            raise _FileRefused(refused)
                        bar.update(len(group.files))
                    current = None
                break
            except (duckdb.Error, UnicodeDecodeError, MissingKeyError, _FileRefused) as err:
                # (a DuckDB message quoting the line can be cut inside a UTF-8 character: UnicodeDecodeError)
                if current is None:
                    raise BadInputError(f"{root}: {str(err).splitlines()[0]}") from None
                _clean_group(store, current, err, skip_bad_lines, Path(tmp), replaced, report, checks)
            finally:
                bar.close()
    report.rows = rows
    report.seconds = time.perf_counter() - started
    if not any(rows.values()) and not report.skipped_lines:
        raise FeatureDBError(f"{root}: the export holds no records")
    return report
