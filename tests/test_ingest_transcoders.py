"""Every on-disk transcoder format loads to the same encoder, and bad transcoders fail before compute."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from featuredb.errors import FeatureDBError
from ingest.transcoder_formats import TranscoderFormatError, load_transcoders
from tiny_model import (D_MODEL, make_tiny_llama, random_weights, write_circuit_tracer, write_clt, write_corpus,
                        write_gemmascope, write_saelens, write_sparsify)


def _reference(w: dict[str, torch.Tensor], x: torch.Tensor, activation: str, k: int | None = None) -> torch.Tensor:
    """The activation written out by hand from the raw weights."""
    pre = x @ w["W_enc"] + w["b_enc"]
    if activation == "jumprelu":
        return pre * (pre > w["threshold"])
    if activation == "topk":
        pre = F.relu(pre)
        v, i = pre.topk(k, dim=-1)  # type: ignore[arg-type]
        return torch.zeros_like(pre).scatter(-1, i, v)
    return F.relu(pre)


@pytest.mark.parametrize("fmt", ["circuit-tracer-relu", "circuit-tracer-jumprelu", "circuit-tracer-topk", "clt",
                                 "saelens-jumprelu", "saelens-topk", "gemmascope", "sparsify"])
def test_every_format_encodes_like_the_raw_weights(fmt: str, tmp_path: Path) -> None:
    weights = {i: random_weights(24, seed=10 + i) for i in range(2)}
    x = torch.randn(5, D_MODEL)
    if fmt.startswith("circuit-tracer"):
        activation = fmt.split("-")[-1]
        path = write_circuit_tracer(tmp_path / "ct", weights, activation=activation, k=4 if activation == "topk" else None)
        expected_k = 4 if activation == "topk" else None
    elif fmt == "clt":
        path, activation, expected_k = write_clt(tmp_path / "clt", weights), "jumprelu", None
    elif fmt.startswith("saelens"):
        activation = fmt.split("-")[1]
        path = write_saelens(tmp_path / "sae", 1, weights[1], architecture=activation, k=6 if activation == "topk" else None)
        expected_k = 6 if activation == "topk" else None
    elif fmt == "gemmascope":
        path, activation, expected_k = write_gemmascope(tmp_path / "layer_1" / "width_24" / "params.npz", weights[1]), "jumprelu", None
    else:
        path, activation, expected_k = write_sparsify(tmp_path / "sp", 1, weights[1], k=3), "topk", 3
    tset = load_transcoders([path])
    for t in tset.transcoders:
        assert t.d_model == D_MODEL and t.d_transcoder == 24
        torch.testing.assert_close(t.encode(x), _reference(weights[t.layer], x, activation, expected_k))
        assert t.hook_in == ("resid_mid" if fmt == "clt" else "mlp_in")  # circuit-tracer's load_clt default
    assert tset.layers == ([0, 1] if fmt.startswith(("circuit", "clt")) else [1])
    # Lazily, ingest's way: every layer's weights are read and checked, then let go until a pass needs them.
    lazy = load_transcoders([path], lazy=True)
    assert [t.loaded for t in lazy.transcoders] == [False] * len(tset.layers)
    for t, eager in zip(lazy.transcoders, tset.transcoders):
        assert (t.d_model, t.d_transcoder, t.weight_bytes()) == (eager.d_model, eager.d_transcoder, eager.weight_bytes())
        torch.testing.assert_close(t.materialise().encode(x), eager.encode(x), rtol=0, atol=0)
        assert t.release().loaded is False and eager.release().loaded  # one that cannot be read again is kept


def test_layers_option_selects_and_reports_missing_layers(tmp_path: Path) -> None:
    path = write_circuit_tracer(tmp_path / "ct", {i: random_weights(8, i) for i in range(3)})
    assert load_transcoders([path], layers=[0, 2]).layers == [0, 2]
    with pytest.raises(TranscoderFormatError, match=r"no transcoder for layer\(s\) \[5\]"):
        load_transcoders([path], layers=[5])


def test_missing_layer_file_is_a_clear_error(tmp_path: Path) -> None:
    path = write_circuit_tracer(tmp_path / "ct", {i: random_weights(8, i) for i in range(2)})
    (path / "layer_1.safetensors").unlink()
    with pytest.raises(TranscoderFormatError, match=r"layer_1.safetensors: missing transcoder file"):
        load_transcoders([path])


def test_unknown_format_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "weights.bin").write_bytes(b"\0" * 10)
    with pytest.raises(TranscoderFormatError, match="unknown transcoder format"):
        load_transcoders([tmp_path / "junk"])


def test_d_model_mismatch_and_unknown_architecture_fail_before_compute(tmp_path: Path) -> None:
    from ingest.run import IngestConfig, run_ingest

    model = make_tiny_llama(tmp_path / "m")
    corpus = write_corpus(tmp_path / "c.txt", 200)
    wide = write_circuit_tracer(tmp_path / "wide", {0: random_weights(8, 0, d_model=D_MODEL + 8)})
    with pytest.raises(FeatureDBError, match=rf"d_model {D_MODEL + 8} != model d_model {D_MODEL}"):
        run_ingest(IngestConfig(transcoders=[str(wide)], model=str(model), corpus=str(corpus)), str(tmp_path / "db"))
    cfg = json.loads((model / "config.json").read_text())
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    neox = tmp_path / "neox"
    GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=cfg["vocab_size"], hidden_size=D_MODEL, num_hidden_layers=1,
                                     num_attention_heads=4, intermediate_size=64)).save_pretrained(neox)
    for f in model.glob("tokenizer*"):
        (neox / f.name).write_bytes(f.read_bytes())
    ok = write_circuit_tracer(tmp_path / "ok", {0: random_weights(8, 0)})
    with pytest.raises(FeatureDBError, match="model type 'gpt_neox' is not supported"):
        run_ingest(IngestConfig(transcoders=[str(ok)], model=str(neox), corpus=str(corpus)), str(tmp_path / "db"))
    assert not (tmp_path / "db").exists()  # nothing written
