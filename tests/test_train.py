"""`featuredb train` on a tiny Llama: circuit-tracer files that both loaders read, honest FVU, resume, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ingest.model_loading import load_model
from ingest.train_run import CHECKPOINT, REPORT, TrainConfig, TrainRun
from ingest.training_data import collect_pairs
from ingest.transcoder_formats import load_transcoders
from ingest.transcoder_training import TrainSettings
from tiny_model import D_MODEL, N_LAYERS, make_tiny_llama, write_corpus

SETTINGS = TrainSettings(n_features=64, k=4, epochs=3, batch_tokens=128, dead_tokens=1000)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("train")
    return {"model": make_tiny_llama(root / "model"), "corpus": write_corpus(root / "corpus.txt", 9000), "root": root}


def _cfg(inputs: dict[str, Path], out: Path, **kw) -> TrainConfig:  # type: ignore[no-untyped-def]
    base = dict(out=str(out), model=str(inputs["model"]), corpus=str(inputs["corpus"]), train_tokens=3000,
                test_tokens=600, ctx_len=16, batch_size=8, settings=SETTINGS)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def trained(inputs: dict[str, Path]) -> Path:
    out = inputs["root"] / "tc"
    TrainRun(_cfg(inputs, out), progress=False).run()
    return out


def test_writes_circuit_tracer_layout(trained: Path) -> None:
    cfg = yaml.safe_load((trained / "config.yaml").read_text())
    assert cfg["model_kind"] == "transcoder_set"
    assert cfg["transcoders"] == [str((trained / f"layer_{i}.safetensors").resolve()) for i in range(N_LAYERS)]
    assert Path(cfg["model_name"]).is_absolute(), "circuit-tracer resolves nothing relative to the config"
    assert (cfg["feature_input_hook"], cfg["feature_output_hook"]) == ("mlp.hook_in", "mlp.hook_out")
    t = load_file(str(trained / "layer_1.safetensors"))
    assert t["W_enc"].shape == (64, D_MODEL) and t["W_dec"].shape == (64, D_MODEL)
    assert t["W_skip"].shape == (D_MODEL, D_MODEL) and t["activation_function.threshold"].shape == (64,)
    assert not (trained / CHECKPOINT).exists()


def test_reported_fvu_matches_the_saved_files(inputs: dict[str, Path], trained: Path) -> None:
    """Recompute held-out FVU and L0 from the files through our loader: the report must be what users get."""
    report = {r["layer"]: r for r in json.loads((trained / REPORT).read_text())["layers"]}
    tset = load_transcoders([trained])
    assert tset.layers == [0, 1, 2] and all(t.activation == "jumprelu" for t in tset.transcoders)
    lm = load_model(str(inputs["model"]), dtype="float32")
    pairs, _ = collect_pairs(lm, [0, 1, 2], corpus=str(inputs["corpus"]), train_tokens=3000, test_tokens=600,
                             ctx_len=16, batch_size=8, progress=False)
    for t in tset.transcoders:
        x, y = pairs[t.layer].x_test.float(), pairs[t.layer].y_test.float()
        acts = t.encode(x)
        y_hat = acts @ t.W_dec + t.b_dec + x @ t.W_skip.T
        fvu = float((y - y_hat).pow(2).sum() / (y - y.mean(0)).pow(2).sum())
        r = report[t.layer]
        assert fvu == pytest.approx(r["fvu"], rel=1e-3, abs=1e-4)
        assert float((acts > 0).sum(1).float().mean()) == pytest.approx(r["l0"], rel=1e-3)
        assert r["fvu"] < r["skip_only_fvu"] and r["fvu"] < 1.0, "features must explain more than the skip alone"
        assert 0.0 <= r["dead_fraction"] < 1.0


def test_resume_after_interruption_gives_the_same_weights(inputs: dict[str, Path], trained: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    out = inputs["root"] / "resumed"
    run = TrainRun(_cfg(inputs, out), progress=False)
    original = TrainRun._save_checkpoint
    saves = {"n": 0}

    def save_then_stop(self, *args, **kw):  # type: ignore[no-untyped-def]
        original(self, *args, **kw)
        saves["n"] += 1
        if saves["n"] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(TrainRun, "_save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run.run(checkpoint_every=10)
    monkeypatch.setattr(TrainRun, "_save_checkpoint", original)
    assert (out / CHECKPOINT).exists() and not (out / "config.yaml").exists()
    TrainRun(_cfg(inputs, out), progress=False).run(resume=True, checkpoint_every=10)
    for layer in range(N_LAYERS):
        a, b = load_file(str(trained / f"layer_{layer}.safetensors")), load_file(str(out / f"layer_{layer}.safetensors"))
        for key in a:
            assert torch.equal(a[key], b[key]), (layer, key)


def test_resume_refuses_other_settings(inputs: dict[str, Path], tmp_path: Path) -> None:
    from featuredb.errors import FeatureDBError
    from ingest.ingest_pass import save_state_file

    save_state_file({"config": _cfg(inputs, tmp_path).fingerprint()}, tmp_path / CHECKPOINT)
    other = _cfg(inputs, tmp_path, settings=replace(SETTINGS, k=8))
    with pytest.raises(FeatureDBError, match="different settings"):
        TrainRun(other, progress=False).run(resume=True)


def test_jumprelu_training_reaches_its_l0_target(inputs: dict[str, Path], tmp_path: Path) -> None:
    s = replace(SETTINGS, activation="jumprelu", k=8, epochs=4)
    summary = TrainRun(_cfg(inputs, tmp_path / "jr", layers=[1], settings=s), progress=False).run()
    (r,) = summary.layers
    assert r.fvu < r.skip_only_fvu
    assert 1.0 < r.l0 < 40.0, "the L0 controller must keep the penalty near the target"
    assert load_transcoders([tmp_path / "jr"]).layers == [1]


def test_cli_rejects_a_layer_the_model_lacks(inputs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "never"
    res = subprocess.run([sys.executable, "-m", "featuredb.cli", "train", "--model", str(inputs["model"]), "--layers", "7",
                          "--out", str(out), "--corpus", str(inputs["corpus"])], capture_output=True, text=True)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1] == "featuredb: error: --layers: [7] out of range; the model has layers 0-2"
    assert not out.exists()


@pytest.mark.circuit_tracer
def test_loads_with_circuit_tracer_own_loader(trained: Path) -> None:
    """circuit-tracer's own loader reads our config.yaml as written (it lives in .venv, pinned to transformers 4.57)."""
    from circuit_tracer.utils.hf_utils import load_transcoders as ct_load

    cfg = yaml.safe_load((trained / "config.yaml").read_text())  # used as written: absolute paths
    ct_set = ct_load(cfg, device=torch.device("cpu"), lazy_decoder=False)
    ours = load_transcoders([trained])
    x = torch.randn(50, D_MODEL)
    for layer, t in enumerate(ours.transcoders):
        assert torch.allclose(ct_set.encode_layer(x, layer), t.encode(x), atol=1e-5)
        assert torch.allclose(ct_set[layer].compute_skip(x), x @ t.W_skip.T, atol=1e-5)


def test_finished_report_is_found_only_for_the_same_settings(inputs: dict[str, Path], trained: Path) -> None:
    from ingest.train_run import finished_report

    report = finished_report(_cfg(inputs, trained))
    assert report is not None and [r["layer"] for r in report["layers"]] == [0, 1, 2]
    assert finished_report(_cfg(inputs, trained, settings=replace(SETTINGS, k=8))) is None


def _plant(model: torch.nn.Module, layers: list[int], *, position: int, scale: float, where: str) -> list:  # type: ignore[type-arg]
    """Make `position` of every window an extreme outlier at `layers`: the MLP input ('mlp_in') or the residual."""
    handles = []
    for layer in layers:
        norm = model.model.layers[layer].post_attention_layernorm
        if where == "mlp_in":
            def boost_out(_m, _a, out, position=position):  # type: ignore[no-untyped-def]
                out = out.clone()
                out[:, position] *= scale
                return out
            handles.append(norm.register_forward_hook(boost_out))
        else:
            def boost_in(_m, args, position=position):  # type: ignore[no-untyped-def]
                x = args[0].clone()
                x[:, position] *= scale
                return (x, *args[1:])
            handles.append(norm.register_forward_pre_hook(boost_in))
    return handles


@pytest.fixture(scope="module")
def no_bos_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("nobos") / "model", bos=False)


def test_position_zero_never_reaches_training_pairs(inputs: dict[str, Path], no_bos_model: Path) -> None:
    """A tokenizer without BOS still has a sink at position 0: a huge activation planted there is left out."""
    lm = load_model(str(no_bos_model), dtype="float32")
    clean, _ = collect_pairs(lm, [1], corpus=str(inputs["corpus"]), train_tokens=1500, test_tokens=300,
                             ctx_len=16, batch_size=8, progress=False)
    handles = _plant(lm.model, [1], position=0, scale=1e4, where="mlp_in")
    try:
        pairs, summary = collect_pairs(lm, [1], corpus=str(inputs["corpus"]), train_tokens=1500, test_tokens=300,
                                       ctx_len=16, batch_size=8, progress=False)
    finally:
        for h in handles:
            h.remove()
    assert summary.sink_tokens > 0 and summary.train_tokens + summary.test_tokens == summary.sink_tokens * 15
    planted = pairs[1].x_train.float().norm(dim=1).max()
    assert planted < 10 * clean[1].x_train.float().norm(dim=1).max(), "a position-0 activation was kept"
    assert torch.equal(pairs[1].x_train, clean[1].x_train) and torch.equal(pairs[1].y_test, clean[1].y_test)


def test_residual_outliers_are_left_out_and_counted(inputs: dict[str, Path]) -> None:
    lm = load_model(str(inputs["model"]), dtype="float32")
    handles = _plant(lm.model, [0, 2], position=5, scale=1e3, where="resid_mid")
    try:
        pairs, summary = collect_pairs(lm, [0, 2], corpus=str(inputs["corpus"]), train_tokens=1500, test_tokens=300,
                                       ctx_len=16, batch_size=8, progress=False)
    finally:
        for h in handles:
            h.remove()
    windows = summary.sink_tokens  # one sink per window
    assert summary.outlier_tokens == windows, "position 5 of every window is an outlier"
    assert summary.outliers_by_layer[0] == windows and summary.outliers_by_layer[2] >= windows
    assert summary.train_tokens + summary.test_tokens == windows * 14
    assert len(pairs[0].x_train) == len(pairs[2].x_train) == summary.train_tokens


def test_a_layer_that_diverges_is_retrained(inputs: dict[str, Path], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from ingest.transcoder_training import SkipTranscoder

    real = SkipTranscoder.loss

    def nan_on_first_attempt(self, x, y):  # type: ignore[no-untyped-def]
        loss, parts = real(self, x, y)
        if self.s.lr == SETTINGS.lr:  # retries use a lower learning rate
            parts["fvu"] = float("nan")
        return loss, parts

    monkeypatch.setattr(SkipTranscoder, "loss", nan_on_first_attempt)
    summary = TrainRun(_cfg(inputs, tmp_path / "tc", layers=[1]), progress=False).run()
    (r,) = summary.layers
    assert r.attempts == 2 and r.fvu < r.skip_only_fvu
    assert (tmp_path / "tc" / "layer_1.safetensors").exists()


def test_a_layer_that_never_recovers_is_an_error_not_a_file(inputs: dict[str, Path], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from featuredb.errors import FeatureDBError
    from ingest.transcoder_training import SkipTranscoder

    real = SkipTranscoder.loss

    def always_nan(self, x, y):  # type: ignore[no-untyped-def]
        loss, parts = real(self, x, y)
        parts["fvu"] = float("nan")
        return loss, parts

    monkeypatch.setattr(SkipTranscoder, "loss", always_nan)
    with pytest.raises(FeatureDBError, match=r"^layer 1: training diverged after 3 attempts; layer 1 was not saved$"):
        TrainRun(_cfg(inputs, tmp_path / "tc", layers=[1]), progress=False).run()
    assert not (tmp_path / "tc" / "layer_1.safetensors").exists()
    assert not (tmp_path / "tc" / "config.yaml").exists()


def test_sparse_training_gradients_equal_dense_ones() -> None:
    """The sparse BatchTopK path must compute exactly the gradients of the dense formulation it replaces."""
    from ingest.transcoder_training import SkipTranscoder

    torch.manual_seed(0)
    x, y = torch.randn(600, 24), torch.randn(600, 24)
    m = SkipTranscoder(24, replace(SETTINGS, aux_k=0))
    m.initialise(x, y)
    loss, _ = m.loss(x[:64], y[:64])
    loss.backward()
    sparse_grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    m.zero_grad()
    xn, yn = x[:64] / m.scale_in, y[:64] / m.scale_out
    pre = m.pre_activations(xn)
    with torch.no_grad():
        sel = m.select(pre)
        mask = torch.zeros_like(pre, dtype=torch.bool)
        mask[sel.rows, sel.feats] = True
    out = (pre * mask) @ m.W_dec + m.b_dec + xn @ m.W_skip.T
    ((yn - out).pow(2).sum() / (yn - yn.mean(0)).pow(2).sum()).backward()
    assert set(sparse_grads) == {"W_enc", "b_enc", "W_dec", "b_dec", "W_skip"}
    for name, g in sparse_grads.items():
        assert torch.allclose(g, dict(m.named_parameters())[name].grad, atol=1e-6), name


def test_a_moved_transcoder_folder_still_loads(trained: Path, tmp_path: Path) -> None:
    """config.yaml lists absolute paths (circuit-tracer needs them); featuredb's loader falls back to the folder."""
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(trained, moved)
    tset = load_transcoders([moved])
    assert tset.layers == [0, 1, 2] and all(Path(t.path).parent == moved for t in tset.transcoders)
