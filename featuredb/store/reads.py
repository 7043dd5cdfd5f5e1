"""The typed read layer: what packages outside the store ask of Neuronpedia's tables, as functions over a store.

`tracer/`, `ingest/`, search, the server and the CLI call these instead of writing SQL; a feature's label is chosen
here under the one label rule (featuredb.labels.label_rule), and the `settings` JSON that ingest writes and the
tracer and inference read is a dataclass here, so both sides agree on one contract.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import pyarrow as pa

from featuredb.store.label_query import labels_sql
from featuredb.store.schema import ACTIVATION_ORDER, feature_key

if TYPE_CHECKING:
    import duckdb

    from featuredb.store.feature_store import FeatureStore


# --- helpers every store module shares ---------------------------------------------------------------------------

def dict_rows(cur: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """The cursor's remaining rows as dicts keyed by column name."""
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def dict_row(cur: duckdb.DuckDBPyConnection) -> dict[str, Any] | None:
    """The cursor's next row as a dict keyed by column name; None when there is none."""
    row = cur.fetchone()
    return None if row is None else dict(zip([d[0] for d in cur.description], row))


@contextmanager
def registered_values(con: duckdb.DuckDBPyConnection, name: str, values: list[str]) -> Iterator[str]:
    """Register `values` as table `name` with one VARCHAR column `v` for a join (a list parameter is slow)."""
    con.register(name, pa.table({"v": pa.array(values, type=pa.string())}))
    try:
        yield name
    finally:
        con.unregister(name)


@dataclass(frozen=True)
class Scope:
    """Which rows of a per-feature table: one model, optionally one source (Neuronpedia's `layer` column)."""

    model: str | None = None
    source: str | None = None

    def where(self, alias: str = "") -> tuple[str, list[Any]]:
        """(condition, parameters) over a table with "modelId" and "layer" columns; `alias` names the table."""
        a = f"{alias}." if alias else ""
        conds, params = ["TRUE"], []
        if self.model:
            conds.append(f'{a}"modelId" = ?')
            params.append(self.model)
        if self.source:
            conds.append(f'{a}"layer" = ?')
            params.append(self.source)
        return " AND ".join(conds), params


# --- the settings contract between ingest and its readers ---------------------------------------------------------

def _loads(text: str | None) -> dict[str, Any]:
    return json.loads(text) if text else {}


@dataclass(frozen=True)
class ModelSettings:
    """models.settings of an ingested model: where its weights are, so inference can load it again."""

    path: str | None = None
    dtype: str | None = None
    architecture: str | None = None

    @classmethod
    def from_json(cls, text: str | None) -> ModelSettings:
        """Read the stored JSON (an imported model has none: every field None)."""
        d = _loads(text)
        return cls(path=d.get("path"), dtype=d.get("dtype"), architecture=d.get("architecture"))

    def to_json(self) -> str:
        """The JSON ingest stores."""
        return json.dumps(asdict(self), default=str)


@dataclass(frozen=True)
class SourceSetSettings:
    """source_sets.settings of an ingested set: the transcoder files and their format."""

    format: str | None = None
    transcoders: tuple[str, ...] = ()
    layers: tuple[int, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)  # what the format adds (e.g. a CLT's shared settings)

    @classmethod
    def from_json(cls, text: str | None) -> SourceSetSettings:
        """Read the stored JSON (an imported set has no transcoder files)."""
        d = _loads(text)
        known = {"format", "transcoders", "layers"}
        return cls(format=d.get("format"), transcoders=tuple(d.get("transcoders") or ()),
                   layers=tuple(int(x) for x in d.get("layers") or ()),
                   extra={k: v for k, v in d.items() if k not in known})

    def to_json(self) -> str:
        """The JSON ingest stores (the format's extra settings at the top level, as before)."""
        return json.dumps({"format": self.format, "transcoders": list(self.transcoders), "layers": list(self.layers),
                           **self.extra}, default=str)


@dataclass(frozen=True)
class SourceSettings:
    """sources.settings of one ingested layer: its transcoder and what ingest left out of the examples."""

    layer: int | None = None
    path: str | None = None
    format: str | None = None
    hook_in: str | None = None
    hook_out: str | None = None
    activation: str | None = None
    k: int | None = None
    d_transcoder: int | None = None
    bos_excluded: bool = False
    sink_positions_excluded: int = 0

    @classmethod
    def from_json(cls, text: str | None) -> SourceSettings:
        """Read the stored JSON (unknown keys are left out; an imported source has none)."""
        d = _loads(text)
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def to_json(self) -> str:
        """The JSON ingest stores."""
        return json.dumps(asdict(self), default=str)


@dataclass(frozen=True)
class RunnableSource:
    """One source of a model with its own and its set's settings (inference runs the ones with transcoders)."""

    source: str
    set_name: str
    settings: SourceSettings
    set_settings: SourceSetSettings


def model_settings(store: FeatureStore, model: str) -> ModelSettings | None:
    """The model's settings; None when the store has no such model row."""
    row = store.con.execute("SELECT settings FROM models WHERE id = ?", [model]).fetchone()
    return None if row is None else ModelSettings.from_json(row[0])


def source_set_settings(store: FeatureStore, model: str, set_name: str) -> SourceSetSettings | None:
    """The source set's settings; None when the store has no such set row."""
    row = store.con.execute('SELECT settings FROM source_sets WHERE "modelId" = ? AND name = ?',
                            [model, set_name]).fetchone()
    return None if row is None else SourceSetSettings.from_json(row[0])


def model_sources(store: FeatureStore, model: str) -> list[RunnableSource]:
    """Every source row of `model` with its settings and its set's, by source id."""
    rows = store.con.execute(
        'SELECT s.id, s."setName", s.settings, ss.settings FROM sources s LEFT JOIN source_sets ss '
        'ON ss."modelId" = s."modelId" AND ss.name = s."setName" WHERE s."modelId" = ? ORDER BY s.id',
        [model]).fetchall()
    return [RunnableSource(sid, set_name, SourceSettings.from_json(s), SourceSetSettings.from_json(ss))
            for sid, set_name, s, ss in rows]


# --- models, sources and features ---------------------------------------------------------------------------------

def model_ids(store: FeatureStore, *, having: str = "models", type_name: str | None = None) -> list[str]:
    """Sorted model ids: of the models table, or (`having` "features"/"explanations") of models with such rows;
    `type_name` keeps models with explanations of that type."""
    if having == "models":
        return [r[0] for r in store.con.execute("SELECT id FROM models ORDER BY id").fetchall()]
    if having not in ("features", "explanations"):
        raise ValueError(f"having={having!r}")
    sql, params = f'SELECT DISTINCT "modelId" FROM {having}', []
    if type_name is not None:
        sql, params = sql + ' WHERE "typeName" = ?', [type_name]
    return [r[0] for r in store.con.execute(sql + " ORDER BY 1", params).fetchall()]


def source_ids(store: FeatureStore, model: str, set_name: str | None = None) -> list[str]:
    """The source ids of `model` (of one set when given), sorted."""
    sql, params = 'SELECT id FROM sources WHERE "modelId" = ?', [model]
    if set_name is not None:
        sql, params = sql + ' AND "setName" = ?', params + [set_name]
    return [r[0] for r in store.con.execute(sql + " ORDER BY id", params).fetchall()]


def has_features(store: FeatureStore, scope: Scope) -> bool:
    """True when any feature row is in `scope`."""
    where, params = scope.where()
    return store.con.execute(f"SELECT 1 FROM features WHERE {where} LIMIT 1", params).fetchone() is not None


def count_features(store: FeatureStore, scope: Scope) -> int:
    """How many feature rows are in `scope`."""
    where, params = scope.where()
    return int(store.con.execute(f"SELECT count(*) FROM features WHERE {where}", params).fetchone()[0])


def feature_indices(store: FeatureStore, scope: Scope) -> list[int]:
    """The feature indices in `scope`, sorted."""
    where, params = scope.where()
    return [r[0] for r in store.con.execute(f'SELECT "index" FROM features WHERE {where} ORDER BY "index"',
                                            params).fetchall()]


def max_feature_index(store: FeatureStore, model: str, source: str) -> int | None:
    """The largest feature index of (model, source); None when it has no features."""
    row = store.con.execute('SELECT max("index") FROM features WHERE "modelId" = ? AND "layer" = ?',
                            [model, source]).fetchone()
    return int(row[0]) if row and row[0] is not None else None


def present_keys(store: FeatureStore, keys: list[str]) -> set[str]:
    """Which of the feature keys (schema.feature_key) have a feature row."""
    if not keys:
        return set()
    with registered_values(store.con, "_present_keys", keys):
        return {r[0] for r in store.con.execute(
            "SELECT feature_key FROM features WHERE feature_key IN (SELECT v FROM _present_keys)").fetchall()}


def feature_row(store: FeatureStore, model: str, source: str, index: int) -> dict[str, Any] | None:
    """The features row of one feature, every column; None when absent."""
    return dict_row(store.con.execute("SELECT * FROM features WHERE feature_key = ?",
                                      [feature_key(model, source, index)]))


def activation_rows(store: FeatureStore, model: str, source: str, index: int, columns: list[str]) -> list[dict]:
    """One feature's activation rows (`columns` only) in GET feature's order: strongest first."""
    cols = ", ".join(f'"{c}"' for c in columns)
    return dict_rows(store.con.execute(f"SELECT {cols} FROM activations WHERE feature_key = ? "
                                       f"ORDER BY {ACTIVATION_ORDER}", [feature_key(model, source, index)]))


def chosen_labels(store: FeatureStore, keys: list[str]) -> dict[str, tuple[str, str]]:
    """feature key -> (description, typeName) of its label under the one label rule; keys without one left out."""
    if not keys:
        return {}
    with registered_values(store.con, "_label_keys", keys):
        rows = store.con.execute(labels_sql("feature_key IN (SELECT v FROM _label_keys)")).fetchall()
    return {k: (d.strip(), t) for k, d, t in rows}


def peak_window_hashes(store: FeatureStore, keys: list[str], *, top: int, buckets: int,
                       window: int) -> dict[str, set[int]]:
    """feature key -> where its `top` strongest examples peak, hashed below `buckets`: the corpus row and peak
    token, or (for examples without a corpus row, e.g. imported) the `window` tokens up to the peak."""
    # each feature's top examples (max_by keeps a heap per feature: no sort of all rows)
    query = '''SELECT feature_key, max_by({bucket} % {buckets}, "maxValue", {top}) FROM activations
                 WHERE feature_key IN (SELECT v FROM _graph_example_keys) AND "maxValue" > 0
                   AND "maxValueTokenIndex" IS NOT NULL {extra} GROUP BY feature_key'''
    with registered_values(store.con, "_graph_example_keys", keys):  # narrow columns first: fast
        rows = store.con.execute(query.format(bucket='hash("dataSource", "dataIndex", "maxValueTokenIndex")',
                                              buckets=buckets, top=top, extra='AND "dataIndex" IS NOT NULL')).fetchall()
    found = {r[0] for r in rows}
    rest = [k for k in keys if k not in found]
    if rest:
        with registered_values(store.con, "_graph_example_keys", rest):
            rows += store.con.execute(query.format(
                bucket=f'hash(list_slice(tokens, greatest("maxValueTokenIndex" - {window - 2}, 1), '
                       '"maxValueTokenIndex" + 1))', buckets=buckets, top=top, extra="")).fetchall()
    return {key: {int(b) for b in hits} for key, hits in rows}


def stored_text_embeddings(store: FeatureStore, texts: list[str]) -> dict[str, np.ndarray]:
    """text -> its stored MiniLM vector, for the texts the search index has embedded (none before indexing)."""
    from featuredb.store.search_indexes import has_search_tables

    if not texts or not has_search_tables(store.con):
        return {}
    with registered_values(store.con, "_label_texts", texts):
        tbl = store.con.execute("SELECT description, embedding FROM search_texts "
                                "WHERE description IN (SELECT v FROM _label_texts)").to_arrow_table()
    if not tbl.num_rows:
        return {}
    vecs = tbl.column("embedding").combine_chunks().flatten().to_numpy().reshape(tbl.num_rows, -1)
    return dict(zip(tbl.column("description").to_pylist(), vecs.astype(np.float32)))
