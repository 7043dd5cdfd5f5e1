"""The DuckDB schema: Neuronpedia's tables and field names, versioned migrations."""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from featuredb.errors import SchemaVersionError


@dataclass(frozen=True)
class Table:
    """One store table: its name, Neuronpedia columns (name -> DuckDB type) and key columns."""

    name: str
    columns: dict[str, str]
    key: tuple[str, ...]
    export_file: str  # file stem in a Neuronpedia export: "features", "model", ...


# Neuronpedia's Model row (apps/webapp/prisma/schema.prisma).
MODELS = Table(
    "models",
    {
        "id": "VARCHAR",
        "displayNameShort": "VARCHAR",
        "displayName": "VARCHAR",
        "creatorId": "VARCHAR",
        "tlensId": "VARCHAR",
        "openRouterId": "VARCHAR",
        "dimension": "BIGINT",
        "thinking": "BOOLEAN",
        "visibility": "VARCHAR",
        "defaultSourceSetName": "VARCHAR",
        "defaultSourceId": "VARCHAR",
        "defaultGraphSourceSetName": "VARCHAR",
        "inferenceEnabled": "BOOLEAN",
        "instruct": "BOOLEAN",
        "layers": "BIGINT",
        "neuronsPerLayer": "BIGINT",
        "owner": "VARCHAR",
        "website": "VARCHAR",
        "createdAt": "VARCHAR",
        "updatedAt": "VARCHAR",
    },
    ("id",),
    "model",
)

RELEASES = Table(
    "releases",
    {
        "name": "VARCHAR",
        "visibility": "VARCHAR",
        "isNewUi": "BOOLEAN",
        "featured": "BOOLEAN",
        "description": "VARCHAR",
        "descriptionShort": "VARCHAR",
        "urls": "VARCHAR[]",
        "creatorEmail": "VARCHAR",
        "creatorName": "VARCHAR",
        "creatorNameShort": "VARCHAR",
        "creatorId": "VARCHAR",
        "defaultSourceSetName": "VARCHAR",
        "defaultSourceId": "VARCHAR",
        "defaultUmapSourceIds": "VARCHAR[]",
        "createdAt": "VARCHAR",
    },
    ("name",),
    "release",
)

SOURCE_SETS = Table(
    "source_sets",
    {
        "modelId": "VARCHAR",
        "name": "VARCHAR",
        "hasDashboards": "BOOLEAN",
        "allowInferenceSearch": "BOOLEAN",
        "visibility": "VARCHAR",
        "description": "VARCHAR",
        "type": "VARCHAR",
        "creatorName": "VARCHAR",
        "urls": "VARCHAR[]",
        "creatorEmail": "VARCHAR",
        "creatorId": "VARCHAR",
        "releaseName": "VARCHAR",
        "hasGraphs": "BOOLEAN",
        "graphEnabled": "BOOLEAN",
        "defaultOfModelId": "VARCHAR",
        "defaultRange": "BIGINT",
        "defaultShowBreaks": "BOOLEAN",
        "showDfa": "BOOLEAN",
        "showCorrelated": "BOOLEAN",
        "showHeadAttribution": "BOOLEAN",
        "showUmap": "BOOLEAN",
        "createdAt": "VARCHAR",
    },
    ("modelId", "name"),
    "sourceset",
)

SOURCES = Table(
    "sources",
    {
        "id": "VARCHAR",
        "modelId": "VARCHAR",
        "setName": "VARCHAR",
        "hasDashboards": "BOOLEAN",
        "inferenceEnabled": "BOOLEAN",
        "saelensConfig": "JSON",
        "saelensRelease": "VARCHAR",
        "saelensSaeId": "VARCHAR",
        "hfRepoId": "VARCHAR",
        "hfFolderId": "VARCHAR",
        "visibility": "VARCHAR",
        "defaultOfModelId": "VARCHAR",
        "creatorId": "VARCHAR",
        "hasUmap": "BOOLEAN",
        "hasUmapLogSparsity": "BOOLEAN",
        "hasUmapClusters": "BOOLEAN",
        "num_prompts": "BIGINT",
        "num_tokens_in_prompt": "BIGINT",
        "dataset": "VARCHAR",
        "notes": "VARCHAR",
        "cosSimMatchModelId": "VARCHAR",
        "cosSimMatchSourceId": "VARCHAR",
        "createdAt": "VARCHAR",
    },
    ("modelId", "id"),
    "source",
)

# Neuronpedia's Neuron row. `layer` holds the source id ("20-gemmascope-transcoder-16k").
FEATURES = Table(
    "features",
    {
        "modelId": "VARCHAR",
        "layer": "VARCHAR",
        "index": "BIGINT",
        "sourceSetName": "VARCHAR",
        "creatorId": "VARCHAR",
        "createdAt": "VARCHAR",
        "maxActApprox": "DOUBLE",
        "hasVector": "BOOLEAN",
        "vector": "DOUBLE[]",
        "vectorLabel": "VARCHAR",
        "vectorDefaultSteerStrength": "DOUBLE",
        "hookName": "VARCHAR",
        "topkCosSimIndices": "BIGINT[]",
        "topkCosSimValues": "DOUBLE[]",
        "neuron_alignment_indices": "BIGINT[]",
        "neuron_alignment_values": "DOUBLE[]",
        "neuron_alignment_l1": "DOUBLE[]",
        "correlated_neurons_indices": "BIGINT[]",
        "correlated_neurons_pearson": "DOUBLE[]",
        "correlated_neurons_l1": "DOUBLE[]",
        "correlated_features_indices": "BIGINT[]",
        "correlated_features_pearson": "DOUBLE[]",
        "correlated_features_l1": "DOUBLE[]",
        "neg_str": "VARCHAR[]",
        "neg_values": "DOUBLE[]",
        "pos_str": "VARCHAR[]",
        "pos_values": "DOUBLE[]",
        "frac_nonzero": "DOUBLE",
        "freq_hist_data_bar_heights": "DOUBLE[]",
        "freq_hist_data_bar_values": "DOUBLE[]",
        "logits_hist_data_bar_heights": "DOUBLE[]",
        "logits_hist_data_bar_values": "DOUBLE[]",
        "decoder_weights_dist": "DOUBLE[]",
        "umap_cluster": "BIGINT",
        "umap_log_feature_sparsity": "DOUBLE",
        "umap_x": "DOUBLE",
        "umap_y": "DOUBLE",
    },
    ("modelId", "layer", "index"),
    "features",
)

# Top examples have binMin = binContains = -1; interval examples carry their bin.
ACTIVATIONS = Table(
    "activations",
    {
        "id": "VARCHAR",
        "modelId": "VARCHAR",
        "layer": "VARCHAR",
        "index": "BIGINT",
        "tokens": "VARCHAR[]",
        "dataIndex": "VARCHAR",
        "dataSource": "VARCHAR",
        "maxValue": "DOUBLE",
        "maxValueTokenIndex": "BIGINT",
        "minValue": "DOUBLE",
        "values": "DOUBLE[]",
        "dfaValues": "DOUBLE[]",
        "dfaTargetIndex": "BIGINT",
        "dfaMaxValue": "DOUBLE",
        "lossValues": "DOUBLE[]",
        "logitContributions": "VARCHAR",
        "binMin": "DOUBLE",
        "binMax": "DOUBLE",
        "binContains": "DOUBLE",
        "qualifyingTokenIndex": "BIGINT",
        "creatorId": "VARCHAR",
        "createdAt": "VARCHAR",
    },
    ("id",),
    "activations",
)

EXPLANATIONS = Table(
    "explanations",
    {
        "id": "VARCHAR",
        "modelId": "VARCHAR",
        "layer": "VARCHAR",
        "index": "BIGINT",
        "description": "VARCHAR",
        "typeName": "VARCHAR",
        "explanationModelName": "VARCHAR",
        "scoreV1": "DOUBLE",
        "scoreV2": "DOUBLE",
        "authorId": "VARCHAR",
        "triggeredByUserId": "VARCHAR",
        "notes": "VARCHAR",
        "umap_x": "DOUBLE",
        "umap_y": "DOUBLE",
        "umap_cluster": "BIGINT",
        "umap_log_feature_sparsity": "DOUBLE",
        "createdAt": "VARCHAR",
        "updatedAt": "VARCHAR",
    },
    ("id",),
    "explanations",
)

# featuredb's own columns (schema v2): `settings` says how to load a model / transcoder again (paths, hooks);
# `feature_key` = "{modelId}/{layer}/{index}" is one indexed column, so point lookups use an ART index scan.
SETTINGS_COLUMN = ("settings", "JSON")
SETTINGS_TABLES = (MODELS, SOURCE_SETS, SOURCES)
FEATURE_KEY_COLUMN = ("feature_key", "VARCHAR")
FEATURE_KEY_TABLES = (FEATURES, ACTIVATIONS, EXPLANATIONS)
FEATURE_KEY_SQL = """"modelId" || '/' || "layer" || '/' || CAST("index" AS VARCHAR)"""
INTERNAL_COLUMNS = (SETTINGS_COLUMN[0], FEATURE_KEY_COLUMN[0])

# Schema v5: fields of Neuronpedia's published export records (utils/neuronpedia-utils/neuronpedia_utils/db_models)
# that the v1 tables lacked. `triggeredById` is db_models' name (Prisma's column is triggeredByUserId, kept above);
# `embedding` is JSON because exports carry pgvector's text ("[0.1,...]") where db_models says a list of floats.
DB_MODELS_COLUMNS: dict[str, dict[str, str]] = {
    "sources": {"inferenceHosts": "VARCHAR[]"},
    "activations": {"zIndices": "BIGINT[][]", "zValues": "DOUBLE[]"},
    "explanations": {"embedding": "JSON", "triggeredById": "VARCHAR"},
}


ACTIVATION_ORDER = '"maxValue" DESC NULLS LAST, "id"'  # GET feature's order of activations: strongest first


def feature_key(model: str, source: str, index: int) -> str:
    """The value of the feature_key column for one feature."""
    return f"{model}/{source}/{index}"


TABLES: tuple[Table, ...] = (MODELS, RELEASES, SOURCE_SETS, SOURCES, FEATURES, ACTIVATIONS, EXPLANATIONS)
TABLES_BY_NAME = {t.name: t for t in TABLES}


def columns_of(table: Table, version: int) -> dict[str, str]:
    """The table's columns as they stand at a schema version."""
    cols = dict(table.columns)
    if version >= 2 and table in SETTINGS_TABLES:
        cols[SETTINGS_COLUMN[0]] = SETTINGS_COLUMN[1]
    if version >= 2 and table in FEATURE_KEY_TABLES:
        cols[FEATURE_KEY_COLUMN[0]] = FEATURE_KEY_COLUMN[1]
    if version >= 5:
        cols.update(DB_MODELS_COLUMNS.get(table.name, {}))
    return cols


def _create_tables_v1(con: duckdb.DuckDBPyConnection) -> None:
    for t in TABLES:
        cols = ", ".join(f'"{n}" {ty}' for n, ty in t.columns.items())
        con.execute(f'CREATE TABLE "{t.name}" ({cols})')


def _add_settings_and_feature_keys_v2(con: duckdb.DuckDBPyConnection) -> None:
    for t in SETTINGS_TABLES:
        con.execute(f'ALTER TABLE "{t.name}" ADD COLUMN "{SETTINGS_COLUMN[0]}" {SETTINGS_COLUMN[1]}')
    name, ty = FEATURE_KEY_COLUMN
    for t in FEATURE_KEY_TABLES:
        # Rebuilt rather than UPDATEd: DuckDB cannot index a table with outstanding updates in one transaction.
        con.execute(f'CREATE TABLE "_{t.name}_v2" AS SELECT *, CAST({FEATURE_KEY_SQL} AS {ty}) AS "{name}" '
                    f'FROM "{t.name}"')
        con.execute(f'DROP TABLE "{t.name}"')
        con.execute(f'ALTER TABLE "_{t.name}_v2" RENAME TO "{t.name}"')
        con.execute(f'CREATE INDEX "{t.name}_{name}" ON "{t.name}" ("{name}")')


def _add_search_state_v3(con: duckdb.DuckDBPyConnection) -> None:
    # Writes to features/activations/explanations set `dirty`; the search indexes are rebuilt from it.
    con.execute("CREATE TABLE search_state (key VARCHAR PRIMARY KEY, value VARCHAR)")
    con.execute("INSERT INTO search_state VALUES ('dirty', 'true')")


def _add_graphs_v4(con: duckdb.DuckDBPyConnection) -> None:
    # Attribution graphs (the whole JSON) and their Neuronpedia subgraphs (pinned nodes, supernodes, clerps).
    con.execute(
        'CREATE TABLE graphs ("modelId" VARCHAR NOT NULL, slug VARCHAR NOT NULL, "sourceSetName" VARCHAR, '
        'prompt VARCHAR, "titlePrefix" VARCHAR, "isFeatured" BOOLEAN DEFAULT false, "userId" VARCHAR, '
        '"createdAt" TIMESTAMP DEFAULT now(), "updatedAt" TIMESTAMP DEFAULT now(), data VARCHAR NOT NULL, '
        'PRIMARY KEY ("modelId", slug))')
    con.execute(
        'CREATE TABLE subgraphs (id VARCHAR PRIMARY KEY, "modelId" VARCHAR NOT NULL, slug VARCHAR NOT NULL, '
        '"displayName" VARCHAR, "pinnedIds" VARCHAR, supernodes VARCHAR, clerps VARCHAR, '
        '"pruningThreshold" DOUBLE, "densityThreshold" DOUBLE, "userId" VARCHAR, '
        '"createdAt" TIMESTAMP DEFAULT now(), "updatedAt" TIMESTAMP DEFAULT now())')


def _add_db_models_fields_v5(con: duckdb.DuckDBPyConnection) -> None:
    for table, cols in DB_MODELS_COLUMNS.items():
        for name, ty in cols.items():
            con.execute(f'ALTER TABLE "{table}" ADD COLUMN "{name}" {ty}')


# Neuronpedia's ExplanationScore (apps/webapp/prisma/schema.prisma): one score of one explanation by one scorer
# (`explanationScoreTypeName`: eleuther_embedding, eleuther_recall, eleuther_fuzz, ...) and scorer model. `id` is
# 'fdb-' || md5(explanationId|type|model), so scoring again replaces a row (featuredb.store.score_tables).
EXPLANATION_SCORES_COLUMNS = {
    "id": "VARCHAR",
    "explanationId": "VARCHAR",
    "value": "DOUBLE",
    "explanationScoreTypeName": "VARCHAR",
    "explanationScoreModelName": "VARCHAR",
    "initiatedByUserId": "VARCHAR",
    "jsonDetails": "VARCHAR",
    "createdAt": "TIMESTAMP",
}


def _add_explanation_scores_v6(con: duckdb.DuckDBPyConnection) -> None:
    # No PRIMARY KEY: DuckDB refuses deleting and re-inserting a key in one transaction, which is how a score is
    # replaced; featuredb.store.score_tables keeps `id` unique.
    cols = ", ".join(f'"{n}" {ty}' for n, ty in EXPLANATION_SCORES_COLUMNS.items())
    con.execute(f"CREATE TABLE explanation_scores ({cols})")
    con.execute('CREATE INDEX explanation_scores_explanation ON explanation_scores ("explanationId")')


# Schema v7: compact examples. Ingested examples keep each corpus window's tokens once per model
# (`example_windows`, keyed by a hash of the window's token ids) and their values as UTINYINT[] relative to
# `maxValue` (`activation_examples`): v = q / 255 * maxValue, so a value is off by at most maxValue / 510 and
# zeros and the peak are exact. Other rows (imports, uploads, pulls) stay whole in `activation_rows`.
# `activations` is a view over both, in Neuronpedia's shape, so every reader sees one table.
ACTIVATION_ROWS = "activation_rows"  # the stored table behind the `activations` view, for whole rows
STORED_AS = {"activations": ACTIVATION_ROWS}
EXAMPLE_WINDOWS_COLUMNS = {"modelId": "VARCHAR", "window_key": "BIGINT", "tokens": "VARCHAR[]"}
ACTIVATION_EXAMPLES_COLUMNS = {
    "modelId": "VARCHAR",
    "layer": "VARCHAR",
    "index": "BIGINT",
    "feature_key": "VARCHAR",
    "kind": "VARCHAR",  # 't' top example, 'i' interval example: part of the id
    "dataIndex": "BIGINT",  # the window's number in the corpus
    "window_key": "BIGINT",
    "maxValue": "DOUBLE",
    "maxValueTokenIndex": "INTEGER",
    "q": "UTINYINT[]",
    "binMin": "DOUBLE",
    "binMax": "DOUBLE",
    "binContains": "DOUBLE",
    "dataSource": "VARCHAR",
    "creatorId": "VARCHAR",
}
Q_LEVELS = 255  # q = round(value / maxValue * 255)
# a compact example's id (alias t), the one ingest gave it: fdb:{model}:{source}:{index}:{t|i}{window}
def example_id(model: str, source: str, index: int, kind: str, window: int) -> str:
    """The id ingest gives an example (COMPACT_ID_SQL rebuilds it in SQL)."""
    return f"fdb:{model}:{source}:{index}:{kind}{window}"


COMPACT_ID_SQL = ("'fdb:' || t.\"modelId\" || ':' || t.\"layer\" || ':' || t.\"index\" || ':' || t.kind "
                  '|| t."dataIndex"')


def compact_activation_sql(version: int = 7) -> str:
    """SELECT of `activation_examples` (alias e, joined to `example_windows` w) in the activations' columns."""
    values = f'list_transform(e.q, lambda x: x / {float(Q_LEVELS)} * e."maxValue")'
    derived = {
        "id": COMPACT_ID_SQL.replace("t.", "e."),
        "tokens": "w.tokens",
        "dataIndex": 'CAST(e."dataIndex" AS VARCHAR)',
        "minValue": f"list_min({values})",
        "values": values,
        "maxValueTokenIndex": 'CAST(e."maxValueTokenIndex" AS BIGINT)',
    }
    exprs = []
    for col, ty in columns_of(ACTIVATIONS, version).items():
        if col in derived:
            src = derived[col]
        elif col in ACTIVATION_EXAMPLES_COLUMNS:
            src = f'e."{col}"'
        else:
            src = "NULL"
        exprs.append(f'CAST({src} AS {ty}) AS "{col}"')
    return (f"SELECT {', '.join(exprs)} FROM activation_examples e "
            'JOIN example_windows w ON w."modelId" = e."modelId" AND w.window_key = e.window_key')


def _create_activations_view(con: duckdb.DuckDBPyConnection, version: int = 7) -> None:
    cols = ", ".join(f'"{c}"' for c in columns_of(ACTIVATIONS, version))
    con.execute(f'CREATE OR REPLACE VIEW activations AS SELECT {cols} FROM {ACTIVATION_ROWS} '
                f'UNION ALL {compact_activation_sql(version)}')


def _add_compact_examples_v7(con: duckdb.DuckDBPyConnection) -> None:
    key = FEATURE_KEY_COLUMN[0]
    # Copied, not renamed: DuckDB renames no table with an index, and a WAL holding an index created on a
    # renamed table fails to replay ("GetDefaultDatabase with no default database set").
    con.execute(f'CREATE TABLE {ACTIVATION_ROWS} AS SELECT * FROM activations')
    con.execute(f'DROP INDEX "activations_{key}"')
    con.execute('DROP TABLE activations')
    con.execute(f'CREATE INDEX "{ACTIVATION_ROWS}_{key}" ON {ACTIVATION_ROWS} ("{key}")')
    cols = ", ".join(f'"{n}" {ty}' for n, ty in EXAMPLE_WINDOWS_COLUMNS.items())
    con.execute(f"CREATE TABLE example_windows ({cols})")
    con.execute('CREATE INDEX example_windows_key ON example_windows (window_key)')
    cols = ", ".join(f'"{n}" {ty}' for n, ty in ACTIVATION_EXAMPLES_COLUMNS.items())
    con.execute(f"CREATE TABLE activation_examples ({cols})")
    con.execute('CREATE INDEX activation_examples_feature_key ON activation_examples (feature_key)')
    # featuredb.store.feature_packs: a feature's row and compact examples in one BLOB, for GET feature
    con.execute('CREATE TABLE feature_packs (feature_key VARCHAR, "modelId" VARCHAR, "layer" VARCHAR, pack BLOB)')
    con.execute('CREATE INDEX feature_packs_feature_key ON feature_packs (feature_key)')
    _create_activations_view(con)


def stored_name(table: Table) -> str:
    """The stored table a Neuronpedia table's rows are written to (`activations` is a view)."""
    return STORED_AS.get(table.name, table.name)


# MIGRATIONS[v-1] brings a file from version v-1 to version v.
MIGRATIONS = (_create_tables_v1, _add_settings_and_feature_keys_v2, _add_search_state_v3, _add_graphs_v4,
              _add_db_models_fields_v5, _add_explanation_scores_v6, _add_compact_examples_v7)
CURRENT_VERSION = len(MIGRATIONS)


def stored_version(con: duckdb.DuckDBPyConnection) -> int:
    """The schema version recorded in the file; 0 for an empty file."""
    has = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_version'"
    ).fetchone()[0]
    if not has:
        return 0
    row = con.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def readable_version(con: duckdb.DuckDBPyConnection, path: str) -> int:
    """The file's schema version; a file from a newer featuredb is refused."""
    version = stored_version(con)
    if version > CURRENT_VERSION:
        raise SchemaVersionError(
            f"{path}: written by featuredb schema v{version}, this featuredb reads up to "
            f"v{CURRENT_VERSION}; upgrade featuredb"
        )
    return version


def migrate(con: duckdb.DuckDBPyConnection, path: str, target: int = CURRENT_VERSION) -> int:
    """Bring the file to `target` in one transaction; refuse files from a newer featuredb."""
    version = readable_version(con, path)
    if version >= target:
        return version
    con.execute("BEGIN TRANSACTION")
    try:
        if version == 0:
            con.execute("CREATE TABLE schema_version (version INTEGER, applied_at TIMESTAMP)")
        for v in range(version, target):
            MIGRATIONS[v](con)
            con.execute("INSERT INTO schema_version VALUES (?, now())", [v + 1])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return target
