"""Export every store table as one Parquet file each, to a folder or an s3:// prefix."""

from __future__ import annotations

from pathlib import Path

import duckdb

from featuredb.object_storage import connect_object_storage, failure, is_remote, join_url
from featuredb.store.export_tables import copy_table_parquet
from featuredb.store.feature_store import FeatureStore
from featuredb.store.schema import TABLES


def export_parquet(store: FeatureStore, out: str | Path, *, model: str | None = None,
                   source: str | None = None) -> dict[str, int]:
    """Write {out}/{table}.parquet for every table (filtered by model/source); returns rows per table.

    `out` may be an s3:// prefix (credentials from the environment: featuredb.object_storage)."""
    remote = is_remote(str(out))
    if remote:
        connect_object_storage(store.con, str(out))
    else:
        Path(out).mkdir(parents=True, exist_ok=True)
    rows: dict[str, int] = {}
    for t in TABLES:
        dest = join_url(str(out), f"{t.name}.parquet") if remote else str(Path(out) / f"{t.name}.parquet")
        try:
            rows[t.name] = copy_table_parquet(store, t, dest, model, source)
        except duckdb.Error as e:
            if not remote:
                raise
            raise failure(dest, e, "cannot write") from None
    return rows
