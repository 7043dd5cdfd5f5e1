"""What the export formats and the Neuronpedia sync read: the SQL of featuredb.formats and featuredb.neuronpedia.

The formats keep the layouts (file names, batches, JSON shapes); the queries that pick the rows, and the
COPY statements that write them straight from DuckDB, are here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from featuredb.store.reads import Scope, dict_rows
from featuredb.store import schema
from featuredb.store.schema import ACTIVATION_ORDER
from featuredb.sql_literals import sql_string

if TYPE_CHECKING:
    from featuredb.store.feature_store import FeatureStore


# --- circuit-tracer files -----------------------------------------------------------------------------------------

def feature_rows_page(store: FeatureStore, model: str, source: str, limit: int, offset: int) -> list[dict[str, Any]]:
    """Feature rows (every column) of one source in index order, `limit` from `offset`."""
    return dict_rows(store.con.execute(
        'SELECT * FROM features WHERE "modelId" = ? AND "layer" = ? ORDER BY "index" LIMIT ? OFFSET ?',
        [model, source, limit, offset]))


def activation_rows_in_range(store: FeatureStore, model: str, source: str, lo: int, hi: int,
                             columns: list[str]) -> list[dict[str, Any]]:
    """Activation rows (`columns` only) of one source's features lo..hi, by index and then GET feature's order."""
    cols = ", ".join(f'"{c}"' for c in columns)
    return dict_rows(store.con.execute(
        f'SELECT {cols} FROM activations WHERE "modelId" = ? AND "layer" = ? AND "index" BETWEEN ? AND ? '
        f'ORDER BY "index", {ACTIVATION_ORDER}', [model, source, lo, hi]))


# --- Neuronpedia's export layout ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class RowQuery:
    """A SELECT of rows to export and its parameters."""

    sql: str
    params: list[Any]


def select_list(table: schema.Table) -> str:
    """Columns in export form: `index` as a string, as Neuronpedia stores it."""
    cols = [c for c in schema.columns_of(table, schema.CURRENT_VERSION) if c != schema.FEATURE_KEY_COLUMN[0]]
    return ", ".join('CAST("index" AS VARCHAR) AS "index"' if c == "index" else f'"{c}"' for c in cols)


def model_row(model: str) -> RowQuery:
    """The models row of `model`."""
    return RowQuery(f'SELECT {select_list(schema.MODELS)} FROM models WHERE "id" = ?', [model])


def source_row(model: str, source: str) -> RowQuery:
    """The sources row of one source."""
    return RowQuery(f'SELECT {select_list(schema.SOURCES)} FROM sources WHERE "modelId" = ? AND "id" = ?',
                    [model, source])


def source_set_row(model: str, set_name: str) -> RowQuery:
    """The source_sets row of one set."""
    return RowQuery(f'SELECT {select_list(schema.SOURCE_SETS)} FROM source_sets WHERE "modelId" = ? AND "name" = ?',
                    [model, set_name])


def release_row(model: str, set_name: str) -> RowQuery:
    """The releases row of one source set's release."""
    return RowQuery(f'SELECT {select_list(schema.RELEASES)} FROM releases WHERE "name" = (SELECT "releaseName" FROM '
                    'source_sets WHERE "modelId" = ? AND "name" = ?)', [model, set_name])


def feature_batch(model: str, source: str, batch: int, size: int) -> RowQuery:
    """Batch `batch` (of `size` rows, by index) of one source's features."""
    where, params = Scope(model, source).where()
    return RowQuery(f'SELECT {select_list(schema.FEATURES)} FROM features WHERE {where} ORDER BY "index" '
                    f"LIMIT {size} OFFSET {batch * size}", params)


def explanation_batch(model: str, source: str, batch: int, size: int) -> RowQuery:
    """Batch `batch` (of `size` rows, by index and id) of one source's explanations."""
    where, params = Scope(model, source).where()
    return RowQuery(f'SELECT {select_list(schema.EXPLANATIONS)} FROM explanations WHERE {where} '
                    f'ORDER BY "index", "id" LIMIT {size} OFFSET {batch * size}', params)


def activations_between(model: str, source: str, lo: int | None, hi: int | None) -> RowQuery:
    """One source's activations of features lo <= index < hi (an end open when None), by index, strongest first."""
    where, params = Scope(model, source).where()
    if lo is not None:
        where += ' AND "index" >= ?'
        params.append(lo)
    if hi is not None:
        where += ' AND "index" < ?'
        params.append(hi)
    return RowQuery(f'SELECT {select_list(schema.ACTIVATIONS)} FROM activations WHERE {where} ORDER BY "index", '
                    '"maxValue" DESC, "id"', params)


def count_query_rows(store: FeatureStore, query: RowQuery) -> int:
    """How many rows `query` selects."""
    return int(store.con.execute(f"SELECT count(*) FROM ({query.sql})", query.params).fetchone()[0])


def copy_query_json(store: FeatureStore, query: RowQuery, dest: str, compression: str) -> None:
    """Write the rows `query` selects to `dest` as JSON lines (`compression`: gzip or none)."""
    store.con.execute(f"COPY ({query.sql}) TO {sql_string(dest)} (FORMAT json, COMPRESSION {compression})", query.params)


def source_set_name(store: FeatureStore, model: str, source: str) -> str | None:
    """The setName of a source's row; None without a row (or a set name)."""
    row = store.con.execute('SELECT "setName" FROM sources WHERE "modelId" = ? AND "id" = ?',
                            [model, source]).fetchone()
    return row[0] if row and row[0] else None


def count_explanations(store: FeatureStore, scope: Scope) -> int:
    """How many explanation rows are in `scope`."""
    where, params = scope.where()
    return int(store.con.execute(f"SELECT count(*) FROM explanations WHERE {where}", params).fetchone()[0])


def feature_batch_starts(store: FeatureStore, model: str, source: str, size: int) -> list[int]:
    """The first feature index of each batch of `size` features of one source (by index)."""
    where, params = Scope(model, source).where()
    return [r[0] for r in store.con.execute(
        f'SELECT "index" FROM (SELECT "index", row_number() OVER (ORDER BY "index") - 1 AS rn '
        f"FROM features WHERE {where}) WHERE rn % {size} = 0 ORDER BY 1", params).fetchall()]


# --- Parquet ------------------------------------------------------------------------------------------------------

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


def copy_table_parquet(store: FeatureStore, table: schema.Table, dest: str, model: str | None = None,
                       source: str | None = None) -> int:
    """Write `table`'s rows (of `model` / `source` where the table has such a column) to `dest` as zstd Parquet;
    returns how many."""
    model_col, source_col = _FILTER_COLUMNS[table.name]
    conds, params = ["1=1"], []
    if model and model_col:
        conds.append(f'"{model_col}" = ?')
        params.append(model)
    if source and source_col:
        conds.append(f'"{source_col}" = ?')
        params.append(source)
    sql = f'SELECT * FROM "{table.name}" WHERE {" AND ".join(conds)}'
    store.con.execute(f"COPY ({sql}) TO {sql_string(dest)} (FORMAT parquet, COMPRESSION zstd)", params)
    return store.con.execute(f"SELECT count(*) FROM ({sql})", params).fetchone()[0]


# --- Neuronpedia upload -------------------------------------------------------------------------------------------

def source_densities(store: FeatureStore, model: str, source: str) -> list[tuple[int, float | None]]:
    """(index, frac_nonzero) of every feature of one source, by index."""
    return store.con.execute('SELECT "index", frac_nonzero FROM features WHERE "modelId" = ? AND "layer" = ? '
                             'ORDER BY "index"', [model, source]).fetchall()


def upload_activation_rows(store: FeatureStore, model: str, source: str) -> list[tuple]:
    """(index, tokens, values, binMin, binMax, binContains) of one source's activations, by index, strongest first."""
    return store.con.execute(
        'SELECT "index", tokens, "values", "binMin", "binMax", "binContains" FROM activations '
        'WHERE "modelId" = ? AND "layer" = ? ORDER BY "index", "maxValue" DESC', [model, source]).fetchall()


def upload_explanation_rows(store: FeatureStore, model: str, source: str) -> list[tuple[int, str, str, str]]:
    """(index, description, typeName, explanationModelName) of one source's explanations, by index and id."""
    return store.con.execute(
        'SELECT "index", description, "typeName", "explanationModelName" FROM explanations '
        'WHERE "modelId" = ? AND "layer" = ? ORDER BY "index", "id"', [model, source]).fetchall()
