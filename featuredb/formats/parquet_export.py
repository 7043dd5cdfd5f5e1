"""Export every store table as one Parquet file each, to a folder or an s3:// prefix."""

from __future__ import annotations

from pathlib import Path

import duckdb

from featuredb.object_storage import connect_object_storage, failure, is_remote, join_url
from featuredb.store.schema import TABLES
from featuredb.store.feature_store import FeatureStore

# Which column of each table holds the model id and the source id, for --model / --source filters.
_FILTER_COLUMNS = {
    "models": ("id", None),
    "releases": (None, None),
    "source_sets": ("modelId", None),
    "sources": ("modelId", "id"),
    "features": ("modelId", "layer"),
    "activations": ("modelId", "layer"),
    "explanations": ("modelId", "layer"),
}


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
        model_col, source_col = _FILTER_COLUMNS[t.name]
        conds, params = ["1=1"], []
        if model and model_col:
            conds.append(f'"{model_col}" = ?')
            params.append(model)
        if source and source_col:
            conds.append(f'"{source_col}" = ?')
            params.append(source)
        sql = f'SELECT * FROM "{t.name}" WHERE {" AND ".join(conds)}'
        dest = join_url(str(out), f"{t.name}.parquet") if remote else str(Path(out) / f"{t.name}.parquet")
        quoted = dest.replace("'", "''")
        try:
            store.con.execute(f"COPY ({sql}) TO '{quoted}' (FORMAT parquet, COMPRESSION zstd)", params)
        except duckdb.Error as e:
            if not remote:
                raise
            raise failure(dest, e, "cannot write") from None
        rows[t.name] = store.con.execute(f"SELECT count(*) FROM ({sql})", params).fetchone()[0]
    return rows
