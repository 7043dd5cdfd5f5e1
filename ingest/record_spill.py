"""Finished rows on disk until the commit: Parquet files per source, so the write never holds more than a block.

DuckDB keeps the rows of an open transaction (and the Arrow buffers they came from) in memory until the commit;
30 layers x 4,096 features grew the process by 0.4 GB per layer that way. Rows are instead written here block by
block, and the commit reads them back with DuckDB under its own memory limit.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from featuredb.store.feature_store import FeatureStore
from ingest.records import LayerRecords

ROW_GROUP = 4096  # rows per Parquet row group: DuckDB reads row groups in parallel
PREFIX = ".ingest-rows-"  # + the writing process's id


def _remove_orphans(parent: Path) -> None:
    """Delete spill folders left by killed ingests (their process is gone)."""
    for folder in parent.glob(f"{PREFIX}*-*"):
        try:
            pid = int(folder.name[len(PREFIX):].split("-")[0])
        except ValueError:
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:
            pass  # alive, another user's


class RecordSpill:
    """Parquet files of finished blocks (features, compact examples, whole activations) per source, and the
    windows the examples use, in a folder beside the store."""

    def __init__(self, store_path: str) -> None:
        parent = Path(store_path).resolve().parent
        parent.mkdir(parents=True, exist_ok=True)
        _remove_orphans(parent)
        self.folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=parent))
        self.files: dict[str, dict[str, list[str]]] = {}
        self.window_files: list[str] = []
        self.windows_used: set[int] = set()  # window numbers the examples name
        self.bytes = 0

    def add(self, source: str, records: LayerRecords) -> None:
        """Write one block of a source's rows (features, compact examples, whole activations)."""
        per_source = self.files.setdefault(source, {"features": [], "activations": [], "examples": [], "packs": []})
        for name, table in (("features", records.features), ("activations", records.whole),
                            ("examples", records.examples), ("packs", records.packs)):
            if table.num_rows == 0:
                continue
            self._write(per_source[name], f"{len(self.files)}-{name}-{len(per_source[name])}", table)
        if records.examples.num_rows:
            self.windows_used.update(np.unique(records.examples["dataIndex"].to_numpy()).tolist())

    def add_windows(self, windows: pa.Table) -> None:
        """Write the `example_windows` rows (window_key, tokens) the examples use."""
        self._write(self.window_files, f"windows-{len(self.window_files)}", windows)

    def _write(self, files: list[str], stem: str, table: pa.Table) -> None:
        path = self.folder / f"{stem}.parquet"
        pq.write_table(table, path, compression="zstd", row_group_size=ROW_GROUP)
        files.append(str(path))
        self.bytes += path.stat().st_size

    def commit(self, store: FeatureStore, model_id: str) -> None:
        """Replace each spilled source's rows in the store (call inside the store's transaction)."""
        for source, files in self.files.items():
            store.replace_source_from_parquet(model_id, source, {k: files[k] for k in ("features", "activations")})
            store.replace_source_examples(model_id, source, files["examples"], self.window_files, files["packs"])

    def remove(self) -> None:
        """Delete the folder."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> "RecordSpill":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
