"""`featuredb ingest` on a tiny random Llama: the records, their correctness, shards, resume and corpora."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import table_snapshot
from featuredb import FeatureStore
from ingest.run import IngestConfig, merge_shards, run_ingest
from tiny_model import make_tiny_llama, random_weights, write_circuit_tracer, write_corpus

N_FEATURES = 16
DEAD = (0, 1)  # features whose encoder bias keeps them off


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ingest")
    weights = {i: random_weights(N_FEATURES, seed=i) for i in range(3)}
    for w in weights.values():
        w["b_enc"][list(DEAD)] = -1e4
    return {"model": make_tiny_llama(root / "model"), "corpus": write_corpus(root / "corpus.txt", 4000),
            "tc": write_circuit_tracer(root / "tc", weights, activation="jumprelu"), "root": root}


def _cfg(setup: dict[str, Path], **kw) -> IngestConfig:  # type: ignore[no-untyped-def]
    base = dict(transcoders=[str(setup["tc"])], model=str(setup["model"]), corpus=str(setup["corpus"]),
                layers=[1, 2], ctx_len=16, batch_size=4, k=5, model_id="tiny", source_set="tc16")
    base.update(kw)
    return IngestConfig(**base)


def test_ingest_writes_neuronpedia_records_for_every_feature(setup: dict[str, Path], tmp_path: Path) -> None:
    summary = run_ingest(_cfg(setup), str(tmp_path / "db.duckdb"), progress=False)
    assert summary.sources == ["1-tc16", "2-tc16"]
    assert summary.dead_features == 2 * len(DEAD) and summary.live_features == 2 * (N_FEATURES - len(DEAD))
    assert summary.tokens == summary.windows * 16 and summary.tokens > 3000
    with FeatureStore(tmp_path / "db.duckdb", read_only=True) as store:
        dead = store.get_feature("tiny", "1-tc16", DEAD[0])
        assert dead.frac_nonzero == 0 and dead.activations == [] and dead.maxActApprox == 0
        f = store.get_feature("tiny", "2-tc16", 7)
        top = [a for a in f.activations if a.binMin == -1]
        assert len(top) == 5
        assert len({a.dataIndex for a in top}) == 5  # one example per context window
        assert top[0].maxValue == pytest.approx(f.maxActApprox)
        for a in f.activations:
            assert len(a.tokens) == len(a.values) == 16 and a.values[a.maxValueTokenIndex] == a.maxValue
        intervals = [a for a in f.activations if a.binMin != -1]
        assert intervals and all(a.binMin < a.maxValue <= a.binMax + 1e-9 for a in intervals)
        assert {round(a.binMax - a.binMin, 6) for a in intervals} == {round(f.maxActApprox / 5, 6)}
        assert 0 < f.frac_nonzero < 1 and len(f.pos_str) == 10 and len(f.neg_values) == 10
        assert f.pos_values == sorted(f.pos_values, reverse=True)
        assert sum(f.freq_hist_data_bar_heights) == pytest.approx(f.frac_nonzero * (summary.tokens - summary.windows))
        settings = json.loads(store.con.execute(
            "SELECT settings FROM sources WHERE id = '2-tc16'").fetchone()[0])
        assert settings["layer"] == 2 and settings["hook_in"] == "mlp_in" and settings["activation"] == "jumprelu"
        model_settings = json.loads(store.con.execute("SELECT settings FROM models WHERE id = 'tiny'").fetchone()[0])
        assert model_settings["path"] == str(setup["model"])


def test_stored_example_equals_an_independent_recomputation(setup: dict[str, Path], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_ingest(_cfg(setup), str(tmp_path / "db.duckdb"), progress=False)
    with FeatureStore(tmp_path / "db.duckdb", read_only=True) as store:
        example = store.get_feature("tiny", "2-tc16", 9).activations[0]
    tok = AutoTokenizer.from_pretrained(setup["model"])
    model = AutoModelForCausalLM.from_pretrained(setup["model"]).eval()
    ids = torch.tensor([tok.convert_tokens_to_ids(example.tokens)])
    captured = {}
    hook = model.model.layers[2].post_attention_layernorm.register_forward_hook(
        lambda _m, _i, out: captured.setdefault("x", out))
    with torch.no_grad():
        model(ids)
    hook.remove()
    w = load_file(str(setup["tc"] / "layer_2.safetensors"))
    pre = captured["x"][0] @ w["W_enc"].T + w["b_enc"]
    acts = (pre * (pre > w["activation_function.threshold"]))[:, 9]
    acts[0] = 0.0  # BOS position is excluded, as on Neuronpedia
    # values are stored as q = round(v / maxValue * 255): off by at most maxValue / 510; zeros and the peak exact
    stored = torch.tensor(example.values, dtype=torch.float32)
    torch.testing.assert_close(stored, acts, rtol=1e-4, atol=float(acts.max()) / 510 + 1e-5)
    assert ((stored == 0) == (acts <= float(acts.max()) / 510)).all()
    peak = int(acts.argmax())
    assert example.maxValueTokenIndex == peak and example.maxValue == pytest.approx(float(acts[peak]), rel=1e-5)
    assert stored[peak] == example.maxValue


def test_position_zero_never_reaches_examples_or_statistics(setup: dict[str, Path], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """No BOS in the tokenizer: position 0 is still the sink, and a huge activation planted there is not indexed."""
    import ingest.ingest_pass as ingest_pass

    model = make_tiny_llama(tmp_path / "nobos", bos=False)
    cfg = _cfg(setup, model=str(model), layers=[1])
    run_ingest(cfg, str(tmp_path / "clean.duckdb"), progress=False)
    real_load = ingest_pass.load_model

    def load_with_planted_sink(*args, **kw):  # type: ignore[no-untyped-def]
        lm = real_load(*args, **kw)

        def boost(_m, _a, out):  # type: ignore[no-untyped-def]
            out = out.clone()
            out[:, 0] *= 1e4
            return out

        lm.model.model.layers[1].post_attention_layernorm.register_forward_hook(boost)
        return lm

    monkeypatch.setattr(ingest_pass, "load_model", load_with_planted_sink)
    run_ingest(cfg, str(tmp_path / "planted.duckdb"), progress=False)
    clean, planted = _rows(tmp_path / "clean.duckdb"), _rows(tmp_path / "planted.duckdb")
    assert planted["features"] == clean["features"] and planted["activations"] == clean["activations"]
    with FeatureStore(tmp_path / "planted.duckdb", read_only=True) as store:
        for i in range(N_FEATURES):
            for a in store.get_feature("tiny", "1-tc16", i).activations:
                assert a.values[0] == 0 and a.maxValueTokenIndex != 0


def _rows(db: Path) -> dict[str, list[tuple]]:
    with FeatureStore(db, read_only=True) as store:
        return {t: table_snapshot(store.con, t) for t in ("features", "activations")}


def test_shards_merge_to_the_same_rows_as_one_run(setup: dict[str, Path], tmp_path: Path) -> None:
    run_ingest(_cfg(setup), str(tmp_path / "one.duckdb"), progress=False)
    states = []
    for i in range(2):
        s = run_ingest(_cfg(setup), None, shard=(i, 2), state_out=str(tmp_path / f"s{i}.pt"), progress=False)
        states.append(s.state_file)
    merged = merge_shards([str(s) for s in states], str(tmp_path / "merged.duckdb"), progress=False)
    assert merged.live_features == 2 * (N_FEATURES - len(DEAD))
    assert _rows(tmp_path / "one.duckdb") == _rows(tmp_path / "merged.duckdb")


def _ingest_cmd(setup: dict[str, Path], db: Path, ckpt: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "featuredb.cli", "ingest", "--model", str(setup["model"]), "--transcoders",
            str(setup["tc"]), "--corpus", str(setup["big_corpus"]), "--layers", "1,2", "--ctx-len", "16",
            "--batch-size", "1", "--top-examples", "5", "--model-id", "tiny", "--source-set", "tc16", "--db", str(db),
            "--checkpoint", str(ckpt), "--checkpoint-every", "25", *extra]


def test_sigkilled_run_resumes_to_the_rows_of_an_uninterrupted_run(setup: dict[str, Path], tmp_path: Path) -> None:
    setup = {**setup, "big_corpus": write_corpus(tmp_path / "big.txt", 60_000, seed=3)}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    whole = subprocess.run(_ingest_cmd(setup, tmp_path / "whole.duckdb", tmp_path / "w.pt"), capture_output=True,
                           text=True, env=env)
    assert whole.returncode == 0, whole.stderr[-2000:]
    ckpt = tmp_path / "k.pt"
    proc = subprocess.Popen(_ingest_cmd(setup, tmp_path / "killed.duckdb", ckpt), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # let it get past the first checkpoint
    assert proc.poll() is None, "the run finished before it could be killed; make the corpus bigger"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = torch.load(ckpt, weights_only=False)["progress"]["batches_done"]
    assert done > 0
    resumed = subprocess.run(_ingest_cmd(setup, tmp_path / "killed.duckdb", ckpt, "--resume", "--json"),
                             capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _rows(tmp_path / "whole.duckdb") == _rows(tmp_path / "killed.duckdb")
