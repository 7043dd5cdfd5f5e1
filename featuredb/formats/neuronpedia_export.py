"""Export the store in Neuronpedia's layout: {modelId}/{sourceId}/{features,activations,explanations}/batch-N.jsonl.gz."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from featuredb.errors import NotFoundError
from featuredb.identity import set_of_source
from featuredb.store.export_tables import (
    RowQuery,
    activations_between,
    copy_query_json,
    count_explanations,
    count_query_rows,
    explanation_batch,
    feature_batch,
    feature_batch_starts,
    model_row,
    release_row,
    source_row,
    source_set_name,
    source_set_row,
)
from featuredb.store.reads import Scope, count_features
from featuredb.store.schema import ACTIVATIONS, EXPLANATIONS, FEATURES, MODELS, RELEASES, SOURCE_SETS, SOURCES, Table
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


class _Writer:
    def __init__(self, store: FeatureStore, report: ExportReport) -> None:
        self.store = store
        self.report = report

    def copy(self, query: RowQuery, dest: Path, table: Table) -> None:
        n = count_query_rows(self.store, query)
        if not n:
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        copy_query_json(self.store, query, str(dest), "gzip" if dest.name.endswith(".gz") else "none")
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
    bar = tqdm(total=len(pairs), unit="source", desc="export", disable=None if progress is None else not progress,
               leave=False)
    for model_id, src in pairs:
        d = out / model_id / src
        d.mkdir(parents=True, exist_ok=True)
        set_name = source_set_name(store, model_id, src) or set_of_source(src)
        w.copy(model_row(model_id), d / "model.jsonl", MODELS)
        w.copy(source_row(model_id, src), d / "source.jsonl", SOURCES)
        w.copy(source_set_row(model_id, set_name), d / "sourceset.jsonl", SOURCE_SETS)
        w.copy(release_row(model_id, set_name), d / "release.jsonl", RELEASES)

        scope = Scope(model_id, src)
        for b in range(-(-count_features(store, scope) // BATCH_SIZE)):
            w.copy(feature_batch(model_id, src, b, BATCH_SIZE), d / "features" / f"batch-{b}.jsonl.gz", FEATURES)
        for b in range(-(-count_explanations(store, scope) // BATCH_SIZE)):
            w.copy(explanation_batch(model_id, src, b, BATCH_SIZE), d / "explanations" / f"batch-{b}.jsonl.gz",
                   EXPLANATIONS)
        # Activations go with their features: batch N holds the activations of feature batch N.
        starts: list[int | None] = list(feature_batch_starts(store, model_id, src, BATCH_SIZE)) or [None]
        for b, lo in enumerate(starts):
            hi = starts[b + 1] if b + 1 < len(starts) else None
            w.copy(activations_between(model_id, src, lo if b > 0 else None, hi),
                   d / "activations" / f"batch-{b}.jsonl.gz", ACTIVATIONS)
        bar.update(1)
    bar.close()
    report.seconds = time.perf_counter() - started
    return report
