"""Export the store in Neuronpedia's layout: {modelId}/{sourceId}/{features,activations,explanations}/batch-N.jsonl.gz."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from featuredb.errors import NotFoundError
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
from featuredb.store.feature_store import FeatureStore

BATCH_SIZE = 1024  # rows per batch file, as Neuronpedia's own exporter writes


@dataclass
class ExportReport:
    """Files and rows written by an export."""

    out: str
    files: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {"out": self.out, "files": self.files, "rows": self.rows, "sources": self.sources,
                "seconds": round(self.seconds, 3)}


def select_list(table: Table) -> str:
    """Columns in export form: `index` as a string, as Neuronpedia stores it."""
    cols = [c for c in columns_of(table, CURRENT_VERSION) if c != FEATURE_KEY_COLUMN[0]]
    return ", ".join('CAST("index" AS VARCHAR) AS "index"' if c == "index" else f'"{c}"' for c in cols)


class _Writer:
    def __init__(self, store: FeatureStore, report: ExportReport) -> None:
        self.con = store.con
        self.report = report

    def copy(self, sql: str, params: list[object], dest: Path, table: Table) -> None:
        n = self.con.execute(f"SELECT count(*) FROM ({sql})", params).fetchone()[0]
        if not n:
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        compression = "gzip" if dest.name.endswith(".gz") else "none"
        dest_sql = str(dest).replace("'", "''")
        self.con.execute(f"COPY ({sql}) TO '{dest_sql}' (FORMAT json, COMPRESSION {compression})", params)
        self.report.files += 1
        self.report.rows[table.name] = self.report.rows.get(table.name, 0) + int(n)


def export_neuronpedia(store: FeatureStore, out: str | Path, *, model: str | None = None,
                       source: str | None = None, progress: bool | None = None) -> ExportReport:
    """Write every (model, source) in the store, or the chosen one, as a Neuronpedia export under `out`."""
    started = time.perf_counter()
    out = Path(out)
    pairs = store.sources(model, source)
    if not pairs:
        raise NotFoundError(f"{store.path}: nothing to export for model={model or '*'} source={source or '*'}")
    report = ExportReport(out=str(out), sources=[f"{m}/{s}" for m, s in pairs])
    w = _Writer(store, report)
    con = store.con
    bar = tqdm(total=len(pairs), unit="source", desc="export", disable=None if progress is None else not progress,
               leave=False)
    for model_id, src in pairs:
        d = out / model_id / src
        d.mkdir(parents=True, exist_ok=True)
        key = [model_id, src]
        set_row = con.execute('SELECT "setName" FROM sources WHERE "modelId" = ? AND "id" = ?', key).fetchone()
        set_name = set_row[0] if set_row and set_row[0] else set_of_source(src)
        w.copy(f'SELECT {select_list(MODELS)} FROM models WHERE "id" = ?', [model_id], d / "model.jsonl", MODELS)
        w.copy(f'SELECT {select_list(SOURCES)} FROM sources WHERE "modelId" = ? AND "id" = ?', key,
               d / "source.jsonl", SOURCES)
        w.copy(f'SELECT {select_list(SOURCE_SETS)} FROM source_sets WHERE "modelId" = ? AND "name" = ?',
               [model_id, set_name], d / "sourceset.jsonl", SOURCE_SETS)
        w.copy(f'SELECT {select_list(RELEASES)} FROM releases WHERE "name" = (SELECT "releaseName" FROM '
               'source_sets WHERE "modelId" = ? AND "name" = ?)', [model_id, set_name], d / "release.jsonl", RELEASES)

        where = '"modelId" = ? AND "layer" = ?'
        n_features = con.execute(f"SELECT count(*) FROM features WHERE {where}", key).fetchone()[0]
        for b in range(-(-n_features // BATCH_SIZE)):
            w.copy(f'SELECT {select_list(FEATURES)} FROM features WHERE {where} ORDER BY "index" '
                   f"LIMIT {BATCH_SIZE} OFFSET {b * BATCH_SIZE}", key,
                   d / "features" / f"batch-{b}.jsonl.gz", FEATURES)
        n_expl = con.execute(f"SELECT count(*) FROM explanations WHERE {where}", key).fetchone()[0]
        for b in range(-(-n_expl // BATCH_SIZE)):
            w.copy(f'SELECT {select_list(EXPLANATIONS)} FROM explanations WHERE {where} ORDER BY "index", "id" '
                   f"LIMIT {BATCH_SIZE} OFFSET {b * BATCH_SIZE}", key,
                   d / "explanations" / f"batch-{b}.jsonl.gz", EXPLANATIONS)
        # Activations go with their features: batch N holds the activations of feature batch N.
        starts = [r[0] for r in con.execute(
            f'SELECT "index" FROM (SELECT "index", row_number() OVER (ORDER BY "index") - 1 AS rn '
            f"FROM features WHERE {where}) WHERE rn % {BATCH_SIZE} = 0 ORDER BY 1", key).fetchall()]
        if not starts:
            starts = [None]
        for b, lo in enumerate(starts):
            hi = starts[b + 1] if b + 1 < len(starts) else None
            cond, params = where, list(key)
            if lo is not None and b > 0:
                cond += ' AND "index" >= ?'
                params.append(lo)
            if hi is not None:
                cond += ' AND "index" < ?'
                params.append(hi)
            w.copy(f'SELECT {select_list(ACTIVATIONS)} FROM activations WHERE {cond} ORDER BY "index", '
                   '"maxValue" DESC, "id"', params, d / "activations" / f"batch-{b}.jsonl.gz", ACTIVATIONS)
        bar.update(1)
    bar.close()
    report.seconds = time.perf_counter() - started
    return report
