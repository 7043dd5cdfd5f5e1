"""FeatureStore: one DuckDB file of Neuronpedia records; many readers or one writer."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa

from featuredb.errors import FeatureDBError, NotFoundError, SchemaVersionError, StoreLockedError
from featuredb.formats.parquet_import import import_parquet_export
from featuredb.store.feature_docs_table import clear_feature_docs
from featuredb.store.feature_packs import EXAMPLE_FIELDS, unpack
from featuredb.store.reads import dict_row, dict_rows
from featuredb.identity import parse_index, set_of_source
from featuredb.labels.label_rule import LABEL_ORDER_SQL, label_sort_key
from featuredb.models import Feature
from featuredb.object_storage import connect_object_storage, is_remote, is_remote_file
from featuredb.object_storage import failure as object_storage_failure
from featuredb.store.schema import (
    ACTIVATION_EXAMPLES_COLUMNS,
    ACTIVATION_ROWS,
    ACTIVATIONS,
    COMPACT_ID_SQL,
    CURRENT_VERSION,
    EXPLANATIONS,
    FEATURES,
    FEATURE_KEY_COLUMN,
    FEATURE_KEY_SQL,
    INTERNAL_COLUMNS,
    Q_LEVELS,
    SETTINGS_COLUMN,
    TABLES,
    TABLES_BY_NAME,
    Table,
    columns_of,
    example_id,
    feature_key,
    migrate,
    readable_version,
    stored_name,
    stored_version,
)

DEFAULT_DB = "data/featuredb.duckdb"
SEARCHED_TABLES = ("features", "activations", "explanations")  # writes here make the search indexes stale
RELATION_TABLES = ("models", "sources", "source_sets")  # rows GET feature includes; writes clear their cache
DB_ENV = "FEATUREDB_DB"
MATERIALISED_STORE_FILE = "store.duckdb"  # the store file a materialised export gets inside its directory

# Rows without an id get a deterministic one, so importing the same rows twice replaces them.
_ID_EXPRESSIONS = {
    ACTIVATIONS.name: (
        """'fdb-' || md5(concat_ws('|', "modelId", "layer", "index"::VARCHAR, coalesce("dataIndex", ''),
        coalesce("binMin"::VARCHAR, ''), "tokens"::VARCHAR, "values"::VARCHAR))"""
    ),
    EXPLANATIONS.name: (
        """'fdb-' || md5(concat_ws('|', "modelId", "layer", "index"::VARCHAR, coalesce("typeName", ''),
        coalesce("explanationModelName", ''), coalesce("description", '')))"""
    ),
}


ACTIVATION_COLUMNS = tuple(columns_of(ACTIVATIONS, CURRENT_VERSION))
FEATURE_COLUMNS = tuple(columns_of(FEATURES, CURRENT_VERSION))
PACKS = "feature_packs"  # featuredb.store.feature_packs
PACKED_TABLES = (FEATURES, ACTIVATIONS)  # writes here delete the written features' packs
WINDOW_CACHE = 200_000  # example windows' tokens kept per model and reader before the cache starts again
EXPLANATION_ORDER = LABEL_ORDER_SQL  # GET feature's order of explanations: the label first (labels.label_rule)


def feature_from_rows(feature: dict[str, Any], acts: list[dict[str, Any]], exps: list[dict[str, Any]],
                      relations: dict[str, Any] | None = None) -> Feature:
    """Neuronpedia's feature from its row, its activation and explanation rows (in GET feature's order) and the
    rows it belongs to (`relations`: model, source, sourceSet, as `feature_relations` reads them)."""
    feature = {k: v for k, v in feature.items() if k not in INTERNAL_COLUMNS}
    feature.update(relations or {})
    feature["index"] = str(feature["index"])
    feature["activations"] = [_child(a) for a in acts]
    feature["explanations"] = [_child(e) for e in exps]
    return Feature.model_validate(feature)


def _child(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if k != FEATURE_KEY_COLUMN[0]}
    out["index"] = str(out["index"])
    out["source"] = out.get("layer")
    if out.get("binMin") == -1 and out.get("binContains") == -1:
        # A top example's -1 marks "no interval" (binMin = -1 still says so); null is what Neuronpedia's Python
        # client accepts there (it checks 0 <= binContains <= 1).
        out["binContains"] = None
    return out


_RELATIONS_SQL = """
SELECT (SELECT to_json(m) FROM models m WHERE m.id = $model),
       (SELECT to_json(s) FROM sources s WHERE s."modelId" = $model AND s.id = $source),
       (SELECT to_json(ss) FROM source_sets ss WHERE ss."modelId" = $model AND ss.name = coalesce(
           (SELECT "setName" FROM sources WHERE "modelId" = $model AND id = $source), $set))
"""


def feature_relations(con: duckdb.DuckDBPyConnection, model: str, source: str) -> dict[str, Any]:
    """The model, source and source-set rows a feature of (model, source) belongs to, as Neuronpedia's GET feature
    includes them (None where the store has no such row)."""
    row = con.execute(_RELATIONS_SQL, {"model": model, "source": source, "set": set_of_source(source)}).fetchone()
    out: dict[str, Any] = {}
    for name, text in zip(("model", "source", "sourceSet"), row):
        rec = json.loads(text) if text else None
        out[name] = {k: v for k, v in rec.items() if k not in INTERNAL_COLUMNS} if rec else None
    return out


def _paths_sql(paths: list[str]) -> str:
    """A DuckDB list literal of file paths."""
    return "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"


def default_db_path() -> str:
    """The store path from FEATUREDB_DB, else data/featuredb.duckdb."""
    return os.environ.get(DB_ENV) or DEFAULT_DB


def _quiet(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """DuckDB draws its progress bar on stdout, which must stay clean when it is not a terminal (`--json`)."""
    if not sys.stdout.isatty():
        con.execute("SET enable_progress_bar = false")
    return con


def _connect(path: str, read_only: bool) -> duckdb.DuckDBPyConnection:
    try:
        return _quiet(duckdb.connect(path, read_only=read_only))
    except duckdb.IOException as e:
        msg = str(e)
        if "lock" in msg.lower():
            pid = re.search(r"PID (\d+)", msg)
            who = f" (PID {pid.group(1)})" if pid else ""
            raise StoreLockedError(
                f"{path} is locked by another process{who}: one writer or many readers at a time"
            ) from None
        raise FeatureDBError(f"{path}: cannot open as a DuckDB database: {msg.splitlines()[0]}") from None
    except duckdb.Error as e:
        raise FeatureDBError(f"{path}: cannot open: {str(e).splitlines()[0]}") from None


def _connect_reader(path: str) -> duckdb.DuckDBPyConnection:
    """Open read-only; a WAL left by a killed writer is replayed by one short writable open first."""
    try:
        return _quiet(duckdb.connect(path, read_only=True))
    except duckdb.Error as e:
        if "replaying WAL" not in str(e):
            return _connect(path, read_only=True)  # the same error again, as one line
    # A read-only connection cannot replay a WAL into the file; a writer can (committed work is kept,
    # an unfinished transaction is dropped). If a live writer holds the file this says it is locked.
    _connect(path, read_only=False).close()
    return _connect(path, read_only=True)


def materialise_export(prefix: str, directory: str | Path) -> Path:
    """A local store (directory/store.duckdb) holding the Parquet export at `prefix`, with its search indexes
    built: how a store is read from an export prefix in object storage."""
    path = Path(directory) / MATERIALISED_STORE_FILE
    with FeatureStore(path) as store:
        import_parquet_export(store, prefix)
    return path


class MissingKeyError(FeatureDBError):
    """Rows arrived without a key field (modelId, layer, index or id)."""


class FeatureStore:
    """A featuredb DuckDB file. Open with FeatureStore(path) (read-write) or read_only=True."""

    # The search package's reusable per-store state (featuredb.search.context.SearchContext): set by
    # featuredb.search.api.prepare, dropped by refresh_search; None until a search builds it (also per thread view).
    search_context: Any = None

    def __init__(self, path: str | os.PathLike[str] | None = None, read_only: bool = False) -> None:
        self.path = str(path or default_db_path())
        self.read_only = read_only
        self._owns_connection = True
        self._views: weakref.WeakSet[FeatureStore] = weakref.WeakSet()  # thread views: closed with the store
        self._relations: dict[tuple[str, str], dict[str, Any]] = {}  # feature_relations, shared with thread views
        self._windows: dict[str, dict[int, list[str]]] = {}  # example windows' tokens by model and key
        self._attached: str | None = None  # the catalog a remote .duckdb store is attached as (USE'd by views)
        self._local_copy: str | None = None  # the temporary directory a remote Parquet export was read into
        if is_remote(self.path):
            if not read_only:
                raise FeatureDBError(f"{self.path}: s3:// stores are read-only (open it with read_only=True, "
                                     "or download it to write)")
            self._open_remote()
        elif read_only:
            if not Path(self.path).exists():
                raise NotFoundError(f"{self.path}: no featuredb store here (import or ingest into it first)")
            self.con = _connect_reader(self.path)
            version = self._checked_version()
            if version < CURRENT_VERSION:
                # Migrate in place once, then continue as a reader.
                self.con.close()
                FeatureStore(self.path, read_only=False).close()
                self.con = _connect(self.path, read_only=True)
        else:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self.con = _connect(self.path, read_only=False)
            self._checked_version()
            try:
                migrate(self.con, self.path)
            except BaseException:
                self.con.close()
                raise

    def _open_remote(self) -> None:
        """Read an s3:// store: a .duckdb file attached read-only, else a Parquet export read into a temp store."""
        if is_remote_file(self.path):
            self.con = _quiet(duckdb.connect())
            try:
                self._attach_remote()
            except BaseException:
                self.con.close()
                raise
            return
        self._local_copy = tempfile.mkdtemp(prefix="featuredb-s3-")
        try:
            local = str(materialise_export(self.path, self._local_copy))
            self.con = _connect(local, read_only=True)
        except BaseException:
            shutil.rmtree(self._local_copy, ignore_errors=True)
            raise
        weakref.finalize(self, shutil.rmtree, self._local_copy, True)  # also gone if close() is never called

    def _attach_remote(self) -> None:
        from featuredb.search.extensions import load_extension

        for name in ("fts", "vss"):  # a store's search tables may carry an HNSW index (vss) and BM25 macros (fts)
            load_extension(self.con, name)
        connect_object_storage(self.con, self.path)
        self._attached = "featuredb_remote"
        url = self.path.replace("'", "''")
        try:
            self.con.execute(f"ATTACH '{url}' AS {self._attached} (READ_ONLY)")
        except duckdb.Error as e:
            raise object_storage_failure(self.path, e) from None
        self.con.execute(f"USE {self._attached}")
        version = self._checked_version()
        if version == 0:
            raise NotFoundError(f"{self.path}: not a featuredb store (no schema_version table)")
        if version < CURRENT_VERSION:
            raise SchemaVersionError(
                f"{self.path}: written by featuredb schema v{version}, which an s3:// store cannot be migrated from "
                f"in place (this featuredb reads v{CURRENT_VERSION}): download it and open it locally once to "
                "migrate it, then upload it again")

    def _checked_version(self) -> int:
        try:
            return readable_version(self.con, self.path)
        except SchemaVersionError:
            self.con.close()
            raise

    # -- lifecycle ---------------------------------------------------------------------------

    def thread_view(self) -> "FeatureStore":
        """The same store over a new DuckDB cursor, for use from another thread (e.g. a server worker)."""
        view = object.__new__(FeatureStore)
        view.path, view.read_only, view.con = self.path, self.read_only, self.con.cursor()
        view._attached, view._local_copy = self._attached, None
        if self._attached:  # a new cursor starts in the in-memory catalog
            view.con.execute(f"USE {self._attached}")
        view._owns_connection = False
        view._views = weakref.WeakSet()
        self._views.add(view)
        view._relations = self._relations
        view._windows = self._windows
        return view

    def close(self) -> None:
        """Bring the search indexes up to date after writes, then release the file (and its lock)."""
        try:
            if not self.read_only and self._owns_connection:
                self.refresh_search(only_if_dirty=True)
        finally:
            for view in list(self._views):  # a worker thread's cursor would keep the file open
                view.con.close()
            self.con.close()
            if self._local_copy:  # the temporary store an s3:// Parquet export was read into
                shutil.rmtree(self._local_copy, ignore_errors=True)

    def refresh_search(self, *, only_if_dirty: bool = False, progress: bool | None = None) -> dict[str, float]:
        """Rebuild the search tables (BM25 postings, token and logit lookups, embeddings) from the rows."""
        from featuredb.store.search_indexes import has_search_tables, is_dirty, refresh_search_indexes

        self.require_writable()
        if only_if_dirty and not is_dirty(self.con) and has_search_tables(self.con):
            return {}
        self.search_context = None
        return refresh_search_indexes(self.con, progress=progress)

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """All writes inside commit together or not at all."""
        self.require_writable()
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield self.con
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    def seal(self) -> None:
        """Forbid files, network, extensions and settings changes on this connection: only the store is reachable."""
        if not self.read_only:
            raise FeatureDBError(f"{self.path}: only a read-only store can be sealed")
        self.con.execute("SET enable_external_access = false")
        self.con.execute("SET lock_configuration = true")

    def require_writable(self) -> None:
        """Raise FeatureDBError when the store was opened read-only (before any write)."""
        if self.read_only:
            raise FeatureDBError(f"{self.path}: opened read-only")

    # -- writing -----------------------------------------------------------------------------

    def upsert(self, tables: dict[str, pl.DataFrame | pa.Table], *, in_transaction: bool = True,
               scope: tuple[str, str] | None = None) -> dict[str, int]:
        """Bulk upsert polars/Arrow batches keyed like Neuronpedia; returns rows written per table.

        `scope` = (modelId, source) says all rows belong to that source; a source with no rows yet is then
        written in one pass.
        """
        self.require_writable()
        written: dict[str, int] = {}

        def run() -> None:
            for name, data in tables.items():
                table = TABLES_BY_NAME.get(name)
                if table is None:
                    raise FeatureDBError(f"unknown table {name!r}; expected one of {sorted(TABLES_BY_NAME)}")
                arrow = data.to_arrow() if isinstance(data, pl.DataFrame) else data
                self.con.register("_upsert_src", arrow)
                try:
                    written[name] = self.write_select(table, "SELECT * FROM _upsert_src", list(arrow.schema.names),
                                                      scope=scope if "layer" in table.columns else None)
                finally:
                    self.con.unregister("_upsert_src")

        if in_transaction:
            with self.transaction():
                run()
        else:
            run()
        return written

    def replace_source_from_parquet(self, model: str, source: str, files: dict[str, list[str]]) -> dict[str, int]:
        """Replace one source's rows of each table (`features`, `activations`) by the rows of Parquet files.

        Run inside `transaction()`. DuckDB streams the files, so memory stays under its `memory_limit`."""
        self.require_writable()
        written = {}
        for name, paths in files.items():
            table = TABLES_BY_NAME[name]
            self.delete_source_rows(table, model, source)
            if not paths:
                continue
            relation = f"read_parquet({_paths_sql(paths)})"
            present = [r[0] for r in self.con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()]
            written[name] = self.write_select(table, f"SELECT * FROM {relation}", present, scope=(model, source))
        return written

    def delete_source_rows(self, table: Table, model: str, source: str) -> None:
        """Delete one source's rows of a table (for `activations`, whole and compact rows both)."""
        self.require_writable()
        scope = '"modelId" = ? AND "layer" = ?'
        self.con.execute(f'DELETE FROM "{stored_name(table)}" WHERE {scope}', [model, source])
        if table is ACTIVATIONS:
            self.con.execute(f"DELETE FROM activation_examples WHERE {scope}", [model, source])
        if table in PACKED_TABLES:
            self.con.execute(f"DELETE FROM {PACKS} WHERE {scope}", [model, source])

    def replace_source_examples(self, model: str, source: str, examples: list[str], windows: list[str],
                                packs: list[str] = ()) -> int:
        """Replace one source's compact examples (and feature packs) by those of Parquet files, adding the windows
        they use.

        Run inside `transaction()` after `replace_source_from_parquet` (which deletes the source's examples);
        windows no example of the model uses any more are dropped."""
        self.require_writable()
        con = self.con
        con.execute('DELETE FROM activation_examples WHERE "modelId" = ? AND "layer" = ?', [model, source])
        if windows:
            con.execute(f"""INSERT INTO example_windows SELECT DISTINCT ON (window_key) ? AS "modelId", window_key,
                            tokens FROM read_parquet({_paths_sql(windows)}) n WHERE NOT EXISTS (SELECT 1 FROM
                            example_windows o WHERE o."modelId" = ? AND o.window_key = n.window_key)""", [model, model])
        n = 0
        if examples:
            cols = [c for c in ACTIVATION_EXAMPLES_COLUMNS if c not in ("modelId", "layer", FEATURE_KEY_COLUMN[0])]
            quoted = ", ".join(f'"{c}"' for c in cols)
            before = con.execute("SELECT count(*) FROM activation_examples").fetchone()[0]
            con.execute(f"""INSERT INTO activation_examples ("modelId", "layer", feature_key, {quoted})
                            SELECT ?, ?, ? || '/' || ? || '/' || CAST("index" AS VARCHAR), {quoted}
                            FROM read_parquet({_paths_sql(examples)})""", [model, source, model, source])
            n = con.execute("SELECT count(*) FROM activation_examples").fetchone()[0] - before
            missing = con.execute("""SELECT count(*) FROM activation_examples e WHERE "modelId" = ? AND "layer" = ?
                                     AND NOT EXISTS (SELECT 1 FROM example_windows w WHERE w."modelId" = e."modelId"
                                     AND w.window_key = e.window_key)""", [model, source]).fetchone()[0]
            if missing:
                raise FeatureDBError(f"activations of {model}/{source}: {missing} example(s) name no stored window")
        if packs:
            con.execute(f"""INSERT INTO {PACKS} SELECT feature_key, "modelId", "layer", pack
                            FROM read_parquet({_paths_sql(packs)}) WHERE "modelId" = ? AND "layer" = ?""",
                        [model, source])
        con.execute("""DELETE FROM example_windows w WHERE "modelId" = ? AND NOT EXISTS
                       (SELECT 1 FROM activation_examples e WHERE e."modelId" = w."modelId" AND e.window_key = w.window_key)""",
                    [model])
        self._windows.clear()
        self.mark_search_stale()
        return int(n)

    def limit_memory(self, limit_bytes: int) -> None:
        """Cap DuckDB's memory on this connection (it spills to `<store>.tmp` beyond it)."""
        self.con.execute(f"SET memory_limit = '{int(limit_bytes) // 1024**2}MB'")

    def write_select(self, table: Table, select_sql: str, present: list[str], *,
                     defaults: dict[str, str] | None = None, scope: tuple[str, str] | None = None) -> int:
        """Upsert the rows of `select_sql` (columns `present`, others NULL) into `table`; returns rows written.

        With `scope` = (modelId, source) and no rows of that source in the table yet, rows go straight in
        (one pass, the common fresh import); otherwise they are staged and replace rows with the same key.
        """
        cols = columns_of(table, CURRENT_VERSION)
        exprs = []
        for col, ty in cols.items():
            if col == FEATURE_KEY_COLUMN[0]:
                continue  # derived below, never taken from input
            src = f'"{col}"' if col in present else "NULL"
            if defaults and col in defaults:
                src = f"coalesce({src}, {defaults[col]})"
            exprs.append(f'CAST({src} AS {ty}) AS "{col}"')
        cast_sql = f"SELECT {', '.join(exprs)} FROM ({select_sql})"
        if FEATURE_KEY_COLUMN[0] in cols:
            cast_sql = f'SELECT *, {FEATURE_KEY_SQL} AS "{FEATURE_KEY_COLUMN[0]}" FROM ({cast_sql})'
        if table.name in _ID_EXPRESSIONS:
            names = ", ".join(f'"{c}"' for c in cols if c != "id")
            cast_sql = (f'SELECT CASE WHEN "id" IS NULL THEN {_ID_EXPRESSIONS[table.name]} ELSE "id" END AS "id", '
                        f'{names} FROM ({cast_sql})')
        quoted = ", ".join(f'"{c}"' for c in cols)
        con = self.con
        if scope is not None and "layer" in cols and not con.execute(
                f'SELECT 1 FROM "{table.name}" WHERE "modelId" = ? AND "layer" = ? LIMIT 1', list(scope)).fetchone():
            stored = stored_name(table)
            before = con.execute(f'SELECT count(*) FROM "{stored}"').fetchone()[0]
            con.execute(f'INSERT INTO "{stored}" ({quoted}) {cast_sql}')
            inserted = con.execute(f'SELECT count(*) FROM "{stored}"').fetchone()[0] - before
            in_scope = '"modelId" = ? AND "layer" = ?'
            self._check_keys(table, in_scope, list(scope))
            if con.execute(f'SELECT count(*) FROM "{stored}" WHERE {in_scope}', list(scope)).fetchone()[0] != inserted:
                # such rows could duplicate rows of another source, which this one-pass write does not look at
                raise FeatureDBError(f"{table.name}: rows written for {scope[0]}/{scope[1]} name another source")
            n = inserted - self._drop_duplicates_in_scope(table, scope)
            if table in PACKED_TABLES:  # a pack would hide the new rows
                con.execute(f'DELETE FROM {PACKS} WHERE {in_scope}', list(scope))
        else:
            con.execute(f"CREATE OR REPLACE TEMP TABLE _stage AS {cast_sql}")
            try:
                self._check_keys(table, "1=1", [], relation="_stage")
                n = self._merge_stage(table)
            finally:
                con.execute("DROP TABLE IF EXISTS _stage")
            return n
        self._mark_searched_changed(table, n)
        return int(n)

    def _mark_searched_changed(self, table: Table, changed: int) -> None:
        if table.name in RELATION_TABLES:
            self._relations.clear()
        if changed and table.name in SEARCHED_TABLES:
            self.mark_search_stale()

    def mark_search_stale(self) -> None:
        """Record that the search indexes must be rebuilt (done on close or before the next search)."""
        self.con.execute("UPDATE search_state SET value = 'true' WHERE key = 'dirty'")
        clear_feature_docs(self.con)  # documents derive from the same rows

    def _check_keys(self, table: Table, where: str, params: list[Any], relation: str | None = None) -> None:
        missing = " OR ".join(f'"{k}" IS NULL' for k in table.key)
        bad = self.con.execute(f'SELECT count(*) FROM "{relation or stored_name(table)}" WHERE ({where}) AND ({missing})',
                               params).fetchone()[0]
        if bad:
            raise MissingKeyError(f"{table.name}: {bad} row(s) lack a key field ({', '.join(table.key)})")

    def _drop_duplicates_in_scope(self, table: Table, scope: tuple[str, str]) -> int:
        """Keep the last copy of each key among the scope's rows, as a replace would; returns rows dropped."""
        key = ", ".join(f'"{k}"' for k in table.key)
        where = '"modelId" = ? AND "layer" = ?'
        stored = stored_name(table)
        dup = self.con.execute(
            f'SELECT count(*) - count(DISTINCT ({key})) FROM "{stored}" WHERE {where}', list(scope)).fetchone()[0]
        if dup:
            self.con.execute(
                f'DELETE FROM "{stored}" WHERE rowid IN (SELECT rowid FROM (SELECT rowid, row_number() OVER '
                f'(PARTITION BY {key} ORDER BY rowid DESC) AS rn FROM "{stored}" WHERE {where}) WHERE rn > 1)',
                list(scope))
        return int(dup)

    def _merge_stage(self, table: Table) -> int:
        """Replace rows of `table` whose key is in _stage by the staged rows (last copy wins).

        A row's key is the table's key within its source: two sources may hold the same activation or
        explanation id (as the one-pass write in write_select also allows).
        """
        cols = columns_of(table, CURRENT_VERSION)
        key_cols = [*table.key, *(c for c in ("modelId", "layer") if "layer" in cols and c not in table.key)]
        key = ", ".join(f'"{k}"' for k in key_cols)
        join = " AND ".join(f't."{k}" = s."{k}"' for k in key_cols)
        con = self.con
        dup = con.execute(f"SELECT count(*) - count(DISTINCT ({key})) FROM _stage").fetchone()[0]
        if dup:
            con.execute(f"CREATE OR REPLACE TEMP TABLE _stage AS SELECT * FROM _stage "
                        f"QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY rowid DESC) = 1")
        if SETTINGS_COLUMN[0] in cols:
            # Keep featuredb's own settings when a Neuronpedia record without them is re-imported.
            con.execute(
                f'UPDATE _stage s SET "settings" = t."settings" FROM "{table.name}" t '
                f'WHERE {join} AND s."settings" IS NULL'
            )
        quoted = ", ".join(f'"{c}"' for c in cols)
        # Rewrite only rows that are new or changed, so re-importing the same export writes nothing.
        con.execute(f"""CREATE OR REPLACE TEMP TABLE _changed AS SELECT {quoted} FROM _stage EXCEPT
                        SELECT {quoted} FROM "{table.name}" t WHERE EXISTS (SELECT 1 FROM _stage s WHERE {join})""")
        try:
            con.execute(f'DELETE FROM "{stored_name(table)}" t USING _changed s WHERE {join}')
            if table in PACKED_TABLES:  # a pack would hide the new rows
                con.execute(f"DELETE FROM {PACKS} WHERE feature_key IN (SELECT {FEATURE_KEY_SQL} FROM _changed)")
            if table is ACTIVATIONS:  # a whole row replaces the compact example with its id
                con.execute(f'DELETE FROM activation_examples t USING _changed s WHERE t."modelId" = s."modelId" '
                            f'AND t."layer" = s."layer" AND s.id = {COMPACT_ID_SQL}')
            con.execute(f'INSERT INTO "{stored_name(table)}" ({quoted}) SELECT {quoted} FROM _changed')
            self._mark_searched_changed(table, con.execute("SELECT count(*) FROM _changed").fetchone()[0])
        finally:
            con.execute("DROP TABLE IF EXISTS _changed")
        return int(con.execute("SELECT count(*) FROM _stage").fetchone()[0])

    # -- reading -----------------------------------------------------------------------------

    def get_feature(self, model: str, source: str, index: int | str, max_acts: int | None = None) -> Feature:
        """Neuronpedia's GET /api/feature/{model}/{source}/{index}: columns, activations, explanations."""
        idx = parse_index(index)
        key = [feature_key(model, source, idx)]
        where = f'"{FEATURE_KEY_COLUMN[0]}" = ?'  # the only filter, so DuckDB uses the ART index
        packed = self.con.execute(f"SELECT pack FROM {PACKS} WHERE {where}", key).fetchone()
        if packed is not None:  # one BLOB instead of the rows' list columns (featuredb.store.feature_packs)
            fields, cols, q = unpack(packed[0])
            feature = dict.fromkeys(FEATURE_COLUMNS)
            feature.update(fields)
            acts = self._decoded_examples(model, key[0], feature, cols, q)
        else:
            feature = dict_row(self.con.execute(f"SELECT * FROM features WHERE {where}", key))
            if feature is None:
                raise NotFoundError(f"feature {model}/{source}/{idx} is not in {self.path}")
            acts = self._rows(f'SELECT * FROM {ACTIVATION_ROWS} WHERE {where}', key) + self._compact_activations(
                model, key[0])
        # the view's order (ACTIVATION_ORDER), without the view's join over every window
        acts.sort(key=lambda a: (a["maxValue"] is None, -(a["maxValue"] or 0.0), a["id"]))
        acts = acts if max_acts is None else acts[:int(max_acts)]
        # sorted here by the label rule's Python twin: an ORDER BY costs DuckDB more than the lookup itself
        exps = sorted(self._rows(f'SELECT * FROM explanations WHERE {where}', key), key=label_sort_key)
        relations = self._relations.get((model, source))
        if relations is None:  # three small lookups that would cost as much as the feature itself
            relations = self._relations[(model, source)] = feature_relations(self.con, model, source)
        return feature_from_rows(feature, acts, exps, relations)

    def _compact_activations(self, model: str, key: str) -> list[dict[str, Any]]:
        """One feature's compact examples as activations rows, decoded as the `activations` view decodes them."""
        names = ", ".join(f'"{c}"' for c in (*EXAMPLE_FIELDS, "q"))
        t = self.con.execute(f"SELECT {names} FROM activation_examples WHERE {FEATURE_KEY_COLUMN[0]} = ?",
                             [key]).to_arrow_table()
        if not t.num_rows:
            return []
        q = t["q"].combine_chunks()
        flat, offsets = q.values.to_numpy(zero_copy_only=False), q.offsets.to_numpy()
        model_id, layer, index = key.rsplit("/", 2)
        return self._decoded_examples(model, key, {"modelId": model_id, "layer": layer, "index": int(index)},
                                      {c: t[c].to_pylist() for c in EXAMPLE_FIELDS},
                                      [flat[offsets[i]:offsets[i + 1]] for i in range(t.num_rows)])

    def _decoded_examples(self, model: str, key: str, feature: dict[str, Any], cols: dict[str, list[Any]],
                          q: list[np.ndarray]) -> list[dict[str, Any]]:
        """Activations rows of one feature's compact examples: v = q / 255 * maxValue, tokens from the windows."""
        tokens = self._window_tokens(model, cols["window_key"])
        out = []
        for i, qi in enumerate(q):
            row = dict.fromkeys(ACTIVATION_COLUMNS)
            row.update({c: v[i] for c, v in cols.items()})
            values = qi.astype(np.float64) / Q_LEVELS * row["maxValue"]
            kind = row.pop("kind")
            row.update({"id": example_id(feature["modelId"], feature["layer"], feature["index"], kind, row["dataIndex"]),
                        "modelId": feature["modelId"], "layer": feature["layer"], "index": feature["index"],
                        "dataIndex": str(row["dataIndex"]), "tokens": tokens[row.pop("window_key")],
                        "values": values.tolist(), "minValue": float(values.min()) if len(values) else None,
                        FEATURE_KEY_COLUMN[0]: key})
            out.append(row)
        return out

    def _window_tokens(self, model: str, keys: list[int]) -> dict[int, list[str]]:
        """Tokens of example windows by key (cached: a window's key is a hash of its token ids).

        The cache is shared by a server's threads; the answer is built locally, so another thread clearing the
        cache meanwhile cannot lose a window."""
        cache = self._windows.setdefault(model, {})
        out: dict[int, list[str]] = {}
        missing = []
        for k in set(keys):
            toks = cache.get(k)
            if toks is None:
                missing.append(k)
            else:
                out[k] = toks
        if missing:
            rows = self.con.execute('SELECT window_key, tokens FROM example_windows WHERE "modelId" = ? AND '
                                    "window_key IN (SELECT unnest(?::BIGINT[]))", [model, sorted(missing)]).fetchall()
            if len(cache) > WINDOW_CACHE:
                cache.clear()
            for k, toks in rows:
                cache[k] = out[k] = toks
        return out

    def _rows(self, sql: str, params: list[Any]) -> list[dict[str, Any]]:
        return dict_rows(self.con.execute(sql, params))

    def sources(self, model: str | None = None, source: str | None = None) -> list[tuple[str, str]]:
        """(modelId, source id) pairs that have features, activations, explanations or a source row."""
        parts = []
        for t in (FEATURES, ACTIVATIONS, EXPLANATIONS):
            parts.append(f'SELECT DISTINCT "modelId", "layer" FROM {t.name}')
        parts.append('SELECT "modelId", "id" AS "layer" FROM sources')
        sql = f"SELECT DISTINCT * FROM ({' UNION ALL '.join(parts)}) WHERE 1=1"
        params: list[Any] = []
        if model:
            sql += ' AND "modelId" = ?'
            params.append(model)
        if source:
            sql += ' AND "layer" = ?'
            params.append(source)
        return [(m, s) for m, s in self.con.execute(sql + " ORDER BY 1, 2", params).fetchall()]

    def info(self) -> dict[str, Any]:
        """Path, schema version, size, row counts per table and per (model, source)."""
        counts = {t.name: self.con.execute(f'SELECT count(*) FROM "{t.name}"').fetchone()[0] for t in TABLES}
        per_source = self.con.execute(
            """
            WITH f AS (SELECT "modelId", "layer", count(*) AS features,
                              count(*) FILTER (WHERE "frac_nonzero" = 0) AS dead FROM features GROUP BY ALL),
                 a AS (SELECT "modelId", "layer", count(*) AS activations FROM activations GROUP BY ALL),
                 e AS (SELECT "modelId", "layer", count(*) AS explanations FROM explanations GROUP BY ALL)
            SELECT coalesce(f."modelId", a."modelId", e."modelId") AS model,
                   coalesce(f."layer", a."layer", e."layer") AS source,
                   coalesce(features, 0), coalesce(dead, 0), coalesce(activations, 0), coalesce(explanations, 0)
            FROM f FULL JOIN a USING ("modelId", "layer") FULL JOIN e USING ("modelId", "layer")
            ORDER BY 1, 2
            """
        ).fetchall()
        return {
            "path": self.path,
            "schema_version": stored_version(self.con),
            "size_bytes": Path(self.path).stat().st_size if not is_remote(self.path) and Path(self.path).exists()
            else 0,
            "tables": counts,
            "sources": [
                {"model": m, "source": s, "features": f, "dead_features": d, "activations": a, "explanations": e}
                for m, s, f, d, a, e in per_source
            ],
        }
