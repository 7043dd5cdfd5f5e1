"""On a store ingested from a tiny Llama: inference search equals a direct encode; baseline labels; the demo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from featuredb import FeatureStore
from featuredb.cli.root import cli
from featuredb.labels.baseline import describe, label_features
from featuredb.labels.label_rule import BASELINE_TYPE
from featuredb.search.api import search
from featuredb.search.inference import inference_search
from ingest.harvest import Harvester
from ingest.model_loading import load_model
from ingest.transcoder_formats import load_transcoders
from tiny_model import ingest_tiny_store

TEXT = "the city of Texas was a state team"


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return ingest_tiny_store(tmp_path_factory.mktemp("inference"))


def test_inference_search_matches_a_direct_encode(ingested: dict[str, Path]) -> None:
    lm = load_model(str(ingested["model"]), dtype="float32")
    tset = load_transcoders([ingested["tc"]], [1, 2])
    ids = lm.tokenizer(TEXT).input_ids
    captured = Harvester.for_transcoders(lm.model, tset.transcoders).run(torch.tensor([ids]))
    with FeatureStore(ingested["db"], read_only=True) as store:
        result = inference_search(store, "tiny", TEXT, top_k=3, ignore_bos=True)
    assert result.tokens[0] == "<s>" and [t.position for t in result.by_token] == list(range(1, len(ids)))
    for tok in result.by_token:
        expected = []
        for t in tset.transcoders:
            acts = t.encode(captured[(t.layer, t.hook_in)][0, tok.position].float())
            expected += [(f"{t.layer}-tc16", i, float(v)) for i, v in enumerate(acts.tolist()) if v > 0]
        expected = sorted(expected, key=lambda x: -x[2])[:3]
        got = [(f.source, f.index, f.activation) for f in tok.top_features]
        assert [(s, i) for s, i, _ in got] == [(s, i) for s, i, _ in expected]
        assert [v for _, _, v in got] == pytest.approx([v for _, _, v in expected], rel=1e-5)
    assert result.overall[0].activation == max(f.activation for t in result.by_token for f in t.top_features)


def test_inference_density_threshold_and_unknown_model(ingested: dict[str, Path]) -> None:
    with FeatureStore(ingested["db"], read_only=True) as store:
        r = inference_search(store, "tiny", TEXT, top_k=50, density_threshold=0.05)
        assert all(f.density is not None and f.density <= 0.05 for t in r.by_token for f in t.top_features)
        with pytest.raises(Exception, match="model 'gpt2' is not registered"):
            inference_search(store, "gpt2", TEXT)


def test_cli_inference_json(ingested: dict[str, Path]) -> None:
    res = CliRunner().invoke(cli, ["search", TEXT, "--mode", "inference", "--db", str(ingested["db"]), "--json",
                                   "--top-k", "2"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["model"] == "tiny" and all(len(t["top_features"]) <= 2 for t in data["by_token"])


def test_describe_formats_peaks_next_token_and_logits() -> None:
    assert describe([" Texas"], None, [" Austin"]) == '"Texas" → says "Austin"'
    assert describe([" Dallas", " Houston"], " is", []) == '"Dallas"/"Houston" before "is"'
    assert describe(["\n"], None, []) == '"\\n"'
    assert describe([], None, []) is None


def test_baseline_labels_name_each_feature_peak_and_replace_old_ones(ingested: dict[str, Path]) -> None:
    with FeatureStore(ingested["db"]) as store:
        first = label_features(store, model="tiny")
        second = label_features(store, model="tiny")
        assert first == second and first.labelled > 0
        n = store.con.execute("SELECT count(*) FROM explanations WHERE \"typeName\" = ?", [BASELINE_TYPE]).fetchone()[0]
        assert n == first.labelled  # replaced, not duplicated
        rows = store.con.execute("""
            SELECT e.description, a.tokens[a."maxValueTokenIndex" + 1] FROM explanations e
            JOIN activations a USING (feature_key) WHERE a."binMin" = -1
            QUALIFY row_number() OVER (PARTITION BY e.feature_key ORDER BY a."maxValue" DESC) = 1""").fetchall()
        assert rows and all(f'"{peak.strip()}"' in text.split(" →")[0] for text, peak in rows)
    with FeatureStore(ingested["db"], read_only=True) as store:
        hits = search(store, "Texas", mode="text", limit=3)
        assert hits and all(h.label and "Texas" in h.label for h in hits)


@pytest.mark.slow
def test_demo_runs_every_step_on_the_default_model(tmp_path: Path) -> None:
    """The main job with a tiny profile: real SmolLM2, offline corpus, train, ingest, label, search, extra steps."""
    from ingest.demo import ExtraStep, run_demo
    from ingest.demo_profiles import Profile
    from ingest.transcoder_training import TrainSettings

    profile = Profile("smoke", [12], train_tokens=8192, test_tokens=1024, ingest_tokens=4096,
                      settings=TrainSettings(n_features=512, k=16, epochs=4), ce_tokens=256)
    db = tmp_path / "demo.duckdb"
    seen = []
    extra = ExtraStep("graphs", "a step another package adds", lambda s: seen.append((s.db, s.model_id)) or "done")
    summary = run_demo(profile, db=str(db), data_dir=str(tmp_path / "data"), quiet=True, extra_steps=(extra,))
    assert list(summary.steps) == ["fetch_model", "build_corpus", "train", "ingest", "label", "search", "graphs"]
    assert seen == [(str(db), "smollm2-135m-instruct")] and summary.extra == {"graphs": "done"}
    (layer,) = summary.training
    assert layer["layer"] == 12 and layer["fvu"] < layer["skip_only_fvu"] and layer["ce_recovered"] is not None
    assert all(len(hits) > 0 for hits in summary.searches.values())
    with FeatureStore(db, read_only=True) as store:
        assert store.sources("smollm2-135m-instruct") == [("smollm2-135m-instruct", "12-featuredb-skip-512")]
