"""Read back a `featuredb export parquet` folder or s3:// prefix ({table}.parquet per table) into a store."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from featuredb.errors import NotFoundError
from featuredb.object_storage import connect_object_storage, failure, is_remote, join_url
from featuredb.store.schema import TABLES
from featuredb.sql_literals import sql_string

if TYPE_CHECKING:
    from featuredb.store.feature_store import FeatureStore

def exported_tables(con: duckdb.DuckDBPyConnection, prefix: str) -> dict[str, str]:
    """{table: Parquet file} for each featuredb table exported under `prefix` (a folder or an s3:// prefix)."""
    if not is_remote(prefix):
        return {t.name: str(Path(prefix) / f"{t.name}.parquet") for t in TABLES
                if (Path(prefix) / f"{t.name}.parquet").is_file()}
    try:
        found = {r[0].rsplit("/", 1)[-1] for r in
                 con.execute(f"SELECT file FROM glob({sql_string(join_url(prefix, '*.parquet'))})").fetchall()}
    except duckdb.Error as e:
        raise failure(prefix, e) from None
    return {t.name: join_url(prefix, f"{t.name}.parquet") for t in TABLES if f"{t.name}.parquet" in found}


def import_parquet_export(store: FeatureStore, prefix: str) -> dict[str, int]:
    """Upsert every {table}.parquet under `prefix` into the writable `store`; returns rows written per table."""
    if is_remote(prefix):
        connect_object_storage(store.con, prefix)
    files = exported_tables(store.con, prefix)
    if not files:
        raise NotFoundError(f"{prefix}: no featuredb Parquet export here (expected "
                            f"{', '.join(t.name + '.parquet' for t in TABLES)})")
    written: dict[str, int] = {}
    with store.transaction():
        for t in TABLES:
            if t.name not in files:
                continue
            relation = f"read_parquet({sql_string(files[t.name])})"
            try:
                present = [r[0] for r in store.con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()]
                written[t.name] = store.write_select(t, f"SELECT * FROM {relation}", present)
            except duckdb.Error as e:
                raise failure(files[t.name], e) from None
    return written
