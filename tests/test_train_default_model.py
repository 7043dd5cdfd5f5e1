"""`featuredb train` on every layer of the real default model: the layers that used to diverge (11 and 28) beat
their skip path, and the report's figures are recomputed here from the saved files alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import DEFAULT_TRAIN as TOKENS
from ingest.default_model import ensure_default_model
from ingest.model_loading import load_model
from ingest.train_run import DEAD_SAMPLE, REPORT
from ingest.training_data import collect_pairs, held_out_windows

pytestmark = pytest.mark.slow
LAYERS = [11, 28]  # the layers that diverged (FVU 84 and 14.9) when position 0 was trained on


@pytest.fixture(scope="module")
def trained(default_transcoders: Path) -> tuple[Path, dict]:
    return default_transcoders, json.loads((default_transcoders / REPORT).read_text())


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    return load_model(str(ensure_default_model()), dtype="float32")


def _weights(out: Path, layer: int) -> dict[str, torch.Tensor]:
    return load_file(str(out / f"layer_{layer}.safetensors"))


def _recon(w: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    pre = x @ w["W_enc"].T + w["b_enc"]
    acts = pre * (pre > w["activation_function.threshold"])
    return acts @ w["W_dec"] + w["b_dec"] + x @ w["W_skip"].T


def test_layers_that_used_to_diverge_beat_their_skip_path(trained: tuple[Path, dict]) -> None:
    _, report = trained
    assert [r["layer"] for r in report["layers"]] == list(range(30))
    for r in report["layers"]:
        assert r["fvu"] < r["skip_only_fvu"] and r["fvu"] < 1, r  # every saved layer, as train guarantees
        assert r["l0"] > 4
    for r in (r for r in report["layers"] if r["layer"] in LAYERS):
        assert r["fvu"] < 0.6, r
    assert report["sink_tokens"] > 0, "position 0 of every window is left out"


def test_spliced_in_losses_match_an_independent_recomputation(trained: tuple[Path, dict], model) -> None:  # type: ignore[no-untyped-def]
    out, report = trained
    lm = model
    windows = held_out_windows(lm.tokenizer, None, text_field="text", ctx_len=128, **TOKENS)
    ids = torch.tensor(windows[:2])
    weights = {layer: _weights(out, layer) for layer in range(30)}

    def loss(replace: dict[int, str]) -> float:
        handles = []
        for layer, how in replace.items():
            def hook(mod, args, output, layer=layer, how=how):  # type: ignore[no-untyped-def]
                new = output.clone()
                new[:, 1:] = 0 if how == "zero" else _recon(weights[layer], args[0][:, 1:])
                return new
            handles.append(lm.model.model.layers[layer].mlp.register_forward_hook(hook))
        try:
            with torch.no_grad():
                logits = lm.model(input_ids=ids).logits
        finally:
            for h in handles:
                h.remove()
        pred, target = logits[:, 1:-1], ids[:, 2:]  # position 0's prediction is not scored
        return float(torch.nn.functional.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1)))

    clean = loss({})
    assert report["ce_clean"] == pytest.approx(clean, rel=1e-4)
    assert report["ce_tokens"] == 2 * 126
    for r in (r for r in report["layers"] if r["layer"] in LAYERS):
        spliced, zero = loss({r["layer"]: "tc"}), loss({r["layer"]: "zero"})
        assert r["ce_spliced"] == pytest.approx(spliced, rel=1e-4)
        assert r["ce_zero_ablated"] == pytest.approx(zero, rel=1e-4)
        assert r["ce_recovered"] == pytest.approx((zero - spliced) / (zero - clean), rel=1e-3, abs=1e-3)
    spliced, zero = loss({layer: "tc" for layer in range(30)}), loss({layer: "zero" for layer in range(30)})
    a = report["all_layers"]
    assert a["spliced"] == pytest.approx(spliced, rel=1e-4) and a["zero_ablated"] == pytest.approx(zero, rel=1e-4)
    assert spliced < zero, "the transcoders must predict better than no MLPs at all"


def test_duplicate_and_dead_fractions_match_the_saved_weights(trained: tuple[Path, dict], model) -> None:  # type: ignore[no-untyped-def]
    out, report = trained
    pairs, _ = collect_pairs(model, LAYERS, corpus=None, progress=False, **TOKENS)
    for r in (r for r in report["layers"] if r["layer"] in LAYERS):
        w = _weights(out, r["layer"])
        d = w["W_dec"] / w["W_dec"].norm(dim=1, keepdim=True)
        cos = (d @ d.T).tril(diagonal=-1)  # each feature against lower-numbered ones
        duplicates = float((cos > 0.99).any(1).float().mean())
        assert r["duplicate_fraction"] == pytest.approx(duplicates, abs=1e-9)
        assert duplicates < 0.01
        p = pairs[r["layer"]]
        fired = torch.zeros(len(d), dtype=torch.bool)
        for x in (p.x_test.float(), p.x_train[:DEAD_SAMPLE].float()):
            pre = x @ w["W_enc"].T + w["b_enc"]
            fired |= (pre > w["activation_function.threshold"]).any(0)
        assert r["dead_fraction"] == pytest.approx(float((~fired).float().mean()), abs=1e-9)
        assert r["dead_fraction"] < 0.2
