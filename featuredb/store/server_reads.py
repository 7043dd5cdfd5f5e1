"""What the server's routes and pages and the CLI read of Neuronpedia's tables, and `featuredb query`'s user SQL.

Records come back as Neuronpedia shows them: without featuredb's internal columns (schema.INTERNAL_COLUMNS).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import duckdb

from featuredb.errors import FeatureDBError
from featuredb.labels.label_rule import LABEL_ORDER_SQL
from featuredb.store.reads import dict_rows, registered_values
from featuredb.store.schema import INTERNAL_COLUMNS

if TYPE_CHECKING:
    from featuredb.store.feature_store import FeatureStore


def _public(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in INTERNAL_COLUMNS} for r in rows]


def _first(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    return rows[0] if rows else None


# --- Neuronpedia's records ----------------------------------------------------------------------------------------

def model_record(store: FeatureStore, model: str) -> dict[str, Any] | None:
    """The models row of `model`; None when absent."""
    return _first(_public(dict_rows(store.con.execute("SELECT * FROM models WHERE id = ?", [model]))))


def release_record(store: FeatureStore, name: str | None) -> dict[str, Any] | None:
    """The releases row named `name`; None when absent."""
    return _first(_public(dict_rows(store.con.execute("SELECT * FROM releases WHERE name = ?", [name]))))


def source_set_record(store: FeatureStore, model: str, name: str) -> dict[str, Any] | None:
    """The source_sets row of (model, name); None when absent."""
    return _first(_public(dict_rows(store.con.execute(
        'SELECT * FROM source_sets WHERE "modelId" = ? AND name = ?', [model, name]))))


def set_source_records(store: FeatureStore, model: str, set_name: str) -> list[dict[str, Any]]:
    """The sources rows of one source set, by id."""
    return _public(dict_rows(store.con.execute(
        'SELECT * FROM sources WHERE "modelId" = ? AND "setName" = ? ORDER BY id', [model, set_name])))


def stored_indices(store: FeatureStore, model: str, source: str, indices: list[int]) -> set[int]:
    """Which of `indices` have a feature row in (model, source)."""
    if not indices:
        return set()
    marks = ", ".join("?" * len(indices))
    return {r[0] for r in store.con.execute(
        f'SELECT "index" FROM features WHERE "modelId" = ? AND "layer" = ? AND "index" IN ({marks})',
        [model, source, *indices]).fetchall()}


# --- the pages -----------------------------------------------------------------------------------------------------

def browsable_models(store: FeatureStore) -> list[str]:
    """Sorted ids of the models with a models row or any source (empty ids left out)."""
    rows = store.con.execute('SELECT DISTINCT "modelId" FROM sources UNION SELECT DISTINCT id FROM models '
                             "ORDER BY 1").fetchall()
    return [r[0] for r in rows if r[0]]


def source_counts(store: FeatureStore) -> list[tuple[str, str, int]]:
    """(model, source set, sources in it) for every source set with sources, sorted."""
    rows = store.con.execute('SELECT "modelId", "setName", count(*) FROM sources GROUP BY ALL ORDER BY 1, 2').fetchall()
    return [(m, s, int(n)) for m, s, n in rows]


def sources_by_layer(store: FeatureStore, model: str) -> list[str]:
    """The source ids of `model`, by layer number (the id's part before '-'), then id."""
    return [r[0] for r in store.con.execute(
        'SELECT id FROM sources WHERE "modelId" = ? ORDER BY try_cast(split_part(id, \'-\', 1) AS INTEGER), id',
        [model]).fetchall()]


# --- explanations and densities of chosen features -----------------------------------------------------------------

def explanations_by_feature(store: FeatureStore, keys: list[str]) -> dict[str, list[dict[str, Any]]]:
    """feature key -> its explanation rows (every column but feature_key) in label order, best first; keys
    without explanations left out."""
    if not keys:
        return {}
    with registered_values(store.con, "_explanation_keys", keys):
        rows = dict_rows(store.con.execute(
            f"SELECT * FROM explanations WHERE feature_key IN (SELECT v FROM _explanation_keys) "
            f"ORDER BY {LABEL_ORDER_SQL}"))
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r.pop("feature_key"), []).append(r)
    return out


def densities_by_key(store: FeatureStore, keys: list[str]) -> dict[str, float | None]:
    """feature key -> frac_nonzero of the keys that have a feature row."""
    if not keys:
        return {}
    with registered_values(store.con, "_density_keys", keys):
        return dict(store.con.execute('SELECT feature_key, "frac_nonzero" FROM features '
                                      "WHERE feature_key IN (SELECT v FROM _density_keys)").fetchall())


# --- featuredb query ------------------------------------------------------------------------------------------------

def run_user_query(store: FeatureStore, sql: str) -> tuple[list[str], list[tuple]] | None:
    """Seal the read-only store (store.seal) and run the user's SQL: (column names, rows), or None for a statement
    without rows; a DuckDB error becomes a FeatureDBError."""
    store.seal()
    try:
        cur = store.con.execute(sql)
        if cur is None or cur.description is None:  # an empty query, or a statement without rows
            return None
        names = [d[0] for d in cur.description]
        return names, [tuple(r.values()) for r in cur.to_arrow_table().to_pylist()]  # time zones without pytz
    except duckdb.Error as e:
        raise FeatureDBError(f"query failed: {str(e).splitlines()[0]}") from None
