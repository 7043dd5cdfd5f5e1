"""Shared fixtures: small Neuronpedia exports the tests write themselves."""

from __future__ import annotations

from pathlib import Path

import os

import polars as pl
import pytest
from hypothesis import settings

# Property tests draw the same examples on every run, so CI passes or fails for the code, not the dice;
# HYPOTHESIS_PROFILE=explore draws new ones (what to run after changing the import or graph boundary).
settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

from featuredb import FeatureStore
from featuredb.formats.neuronpedia_import import import_neuronpedia
from featuredb.synthetic_export import generate_export

MODEL = "demo-model"
SOURCE = "6-demo-transcoder"
SHARED = Path(__file__).resolve().parents[2] / "shared"


def imported_store(work: Path, **sizes: int) -> Path:
    """work/store.duckdb holding a synthetic export of MODEL/SOURCE (sizes as generate_export takes them)."""
    export = generate_export(work / "export", model=MODEL, source=SOURCE, progress=False, **sizes)
    db = work / "store.duckdb"
    with FeatureStore(db) as store:
        import_neuronpedia(store, export, progress=False)
    return db


@pytest.fixture
def small_export(tmp_path: Path) -> Path:
    """A 40-feature export with 6 examples (4 top, 2 interval) of 8 tokens each."""
    return generate_export(tmp_path / "export", model=MODEL, source=SOURCE, n_features=40, n_activations=6,
                           ctx_len=8, n_top=4, progress=False)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Where a test's store file goes."""
    return tmp_path / "store.duckdb"


@pytest.fixture
def store_db(small_export: Path, db_path: Path) -> Path:
    """The 40-feature export, plus explanations of several types on features 1-3."""
    with FeatureStore(db_path) as store:
        import_neuronpedia(store, small_export, progress=False)
        store.con.execute("DELETE FROM explanations WHERE \"index\" IN (1, 2, 3)")
        rows = [  # (index, id, type, score, text)
            (1, "a", "oai_token-act-pair", 0.5, "equal-score other type"),  # equal scores: the type decides
            (1, "b", "np_max-act", 0.5, "max-act label"),
            (1, "c", "np_max-act-logits", 0.5, "max-act-logits label"),
            (2, "d", "featuredb-baseline", None, "baseline label"),
            (2, "e", "oai_token-act-pair", 0.5, "other at 0.5"),
            (2, "f", "oai_token-act-pair", 0.8, "other at 0.8"),
            (3, "g", "featuredb-baseline", None, '"Texas" → says "Austin"'),
        ]
        store.upsert({"explanations": pl.DataFrame({
            "id": [r[1] for r in rows], "modelId": [MODEL] * len(rows), "layer": [SOURCE] * len(rows),
            "index": [r[0] for r in rows], "typeName": [r[2] for r in rows],
            "scoreV1": [r[3] for r in rows], "description": [r[4] for r in rows]})})
    return db_path


def table_snapshot(con, table: str) -> list[tuple]:  # type: ignore[no-untyped-def]
    """Every row of a table, in a stable order, for equality checks."""
    cols = [r[0] for r in con.execute(f'DESCRIBE "{table}"').fetchall()]
    order = ", ".join(f'"{c}"::VARCHAR' for c in cols)
    return con.execute(f'SELECT * FROM "{table}" ORDER BY {order}').fetchall()


# Transcoders for every layer of the real default model, small enough to train in about a minute: what the
# default-model training tests check and what circuit-tracer's attribution needs (a transcoder per layer).
DEFAULT_TRAIN = dict(train_tokens=6_000, test_tokens=1_000)


@pytest.fixture(scope="session")
def default_transcoders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All 30 layers of SmolLM2-135M-Instruct, 256 features each, trained in the test session."""
    from ingest.default_model import ensure_default_model
    from ingest.train_run import TrainConfig, TrainRun
    from ingest.transcoder_training import TrainSettings

    out = tmp_path_factory.mktemp("default-transcoders") / "tc"
    cfg = TrainConfig(out=str(out), model=str(ensure_default_model()), settings=TrainSettings(n_features=256, k=16,
                      epochs=2), ce_tokens=256, **DEFAULT_TRAIN)
    TrainRun(cfg, progress=False).run()
    return out


@pytest.fixture(scope="session")
def default_store(default_transcoders: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Those transcoders' features indexed over 4,096 tokens, with baseline labels."""
    from featuredb.labels.baseline import label_features
    from ingest.run import IngestConfig, run_ingest

    db = tmp_path_factory.mktemp("default-store") / "store.duckdb"
    summary = run_ingest(IngestConfig(transcoders=[str(default_transcoders)], model="default", max_tokens=4096,
                                      model_id="smollm2-135m-instruct"), str(db), checkpoint=None, progress=False)
    with FeatureStore(db) as store:
        label_features(store, model=summary.model_id)
    return db
