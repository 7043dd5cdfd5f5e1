"""Import a Neuronpedia export directory ({modelId}/{sourceId}/features/batch-N.jsonl.gz ...) into the store."""

from __future__ import annotations

import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
from tqdm import tqdm

from featuredb.errors import BadInputError, FeatureDBError
from featuredb.formats.jsonl_lines import scan_file
from featuredb.identity import set_of_source
from featuredb.schema import (
    ACTIVATIONS,
    CURRENT_VERSION,
    EXPLANATIONS,
    FEATURES,
    MODELS,
    RELEASES,
    SOURCE_SETS,
    SOURCES,
    Table,
    columns_of,
)
from featuredb.store import FeatureStore, MissingKeyError

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
    files = [p for p in folder.iterdir() if p.is_file() and (p.name.endswith(".jsonl") or p.name.endswith(".jsonl.gz"))]
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


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _read_sql(files: list[Path], columns: dict[str, str]) -> str:
    spec = ", ".join(f"{_sql_str(c)}: {_sql_str('VARCHAR' if c == 'index' else t)}" for c, t in columns.items())
    flist = ", ".join(_sql_str(str(f)) for f in files)
    return f"SELECT * FROM read_json([{flist}], format='newline_delimited', columns={{{spec}}})"


def _defaults(table: Table, model: str, source: str) -> dict[str, str]:
    m, s = _sql_str(model), _sql_str(source)
    if table in BATCH_DIRS:
        return {"modelId": m, "layer": s}
    if table is MODELS:
        return {"id": m}
    if table is SOURCES:
        return {"id": s, "modelId": m, "setName": _sql_str(set_of_source(source))}
    if table is SOURCE_SETS:
        return {"modelId": m, "name": _sql_str(set_of_source(source))}
    return {}


def _required(table: Table) -> tuple[str, ...]:
    """Fields a line must carry (the folder names supply modelId and layer; ids are derived when absent)."""
    return ("index",) if table in BATCH_DIRS else ()


def _load(store: FeatureStore, table: Table, files: list[Path], model: str, source: str) -> int:
    columns = columns_of(table, CURRENT_VERSION)
    scope = (model, source) if table in BATCH_DIRS else None
    return store.write_select(table, _read_sql(files, columns), list(columns),
                              defaults=_defaults(table, model, source), scope=scope)


def _clean_group(table: Table, files: list[Path], err: Exception, skip: bool, tmp: Path,
                 replaced: dict[Path, Path | None], report: ImportReport) -> None:
    """DuckDB refused a group of files: find its bad lines in Python; raise naming one, or write cleaned copies."""
    columns = columns_of(table, CURRENT_VERSION)
    found = False
    for f in files:
        scan = scan_file(f, columns, required=_required(table))
        if not scan.bad:
            continue
        found = True
        if not skip:
            raise BadInputError(f"{scan.bad[0]} (nothing from this import was committed)")
        report.skipped_lines += len(scan.bad)
        report.skipped_examples.extend(str(b) for b in scan.bad[: max(0, 5 - len(report.skipped_examples))])
        cleaned = None
        if scan.good:
            cleaned = tmp / f"{len(replaced)}-{f.name.removesuffix('.gz')}"
            cleaned.write_text("".join(scan.good), encoding="utf-8")
        replaced[f] = cleaned
    if not found:
        first = str(err).splitlines()[0]
        raise BadInputError(f"{files[0].parent}: {first} (nothing from this import was committed)")


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
    plan: list[tuple[Table, list[Path], str, str]] = []
    for d in source_dirs:
        model, source = d.parent.name, d.name
        for t in META_FILES:
            f = d / f"{t.export_file}.jsonl"
            if f.is_file():
                plan.append((t, [f], model, source))
        for t in BATCH_DIRS:
            sub = d / t.export_file
            files = _jsonl_files(sub) if sub.is_dir() else []
            if files:
                plan.append((t, files, model, source))
    started = time.perf_counter()
    total_files = sum(len(files) for _, files, _, _ in plan)
    report = ImportReport(sources=[f"{d.parent.name}/{d.name}" for d in source_dirs], files=total_files)
    replaced: dict[Path, Path | None] = {}  # bad file -> cleaned copy (None: nothing usable left)
    with tempfile.TemporaryDirectory(prefix="featuredb-import-") as tmp:
        while True:  # a refused batch rolls everything back; clean it (or fail) and start again
            rows: dict[str, int] = {}
            bar = tqdm(total=total_files, unit="file", desc="import",
                       disable=None if progress is None else not progress, leave=False)
            current: tuple[Table, list[Path]] | None = None
            try:
                with store.transaction():
                    for table, files, model, source in plan:
                        bar.set_postfix_str(f"{source}/{table.export_file}")
                        use = [replaced.get(f, f) for f in files]
                        use = [f for f in use if f is not None]
                        current = (table, [f for f in files if f not in replaced])
                        if use:
                            rows[table.name] = rows.get(table.name, 0) + _load(store, table, use, model, source)
                        bar.update(len(files))
                break
            except (duckdb.Error, MissingKeyError) as err:
                if current is None or not current[1]:
                    raise BadInputError(f"{root}: {str(err).splitlines()[0]}") from None
                _clean_group(current[0], current[1], err, skip_bad_lines, Path(tmp), replaced, report)
            finally:
                bar.close()
    report.rows = rows
    report.seconds = time.perf_counter() - started
    if not any(rows.values()) and not report.skipped_lines:
        raise FeatureDBError(f"{root}: the export holds no records")
    return report
