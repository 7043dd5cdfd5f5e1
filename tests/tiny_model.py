"""Tiny models, tokenizers, corpora and transcoders (in every supported format) written by the tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import save_file

WORDS = ("the of and to in a was for on as with by he it at from his an were are which this also be has had one "
         "their first new after two time year city state team album season game Texas Austin Dallas Paris France "
         "river music football king queen rain snow doctor church ocean mountain train star poem film").split()
D_MODEL = 32
N_LAYERS = 3


def make_tiny_llama(path: Path, *, bos: bool = True, seed: int = 0) -> Path:
    """A randomly initialised 3-layer Llama (d_model 32) with a word-level tokenizer, saved as a HF folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=D_MODEL, intermediate_size=64, num_hidden_layers=N_LAYERS,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


def write_corpus(path: Path, n_words: int, seed: int = 0) -> Path:
    """A text file of random sentences from WORDS, in paragraphs."""
    rng = random.Random(seed)
    paras = []
    while sum(len(p.split()) for p in paras) < n_words:
        paras.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))))
    path.write_text("\n\n".join(paras) + "\n", encoding="utf-8")
    return path


def random_weights(d_t: int, seed: int, d_model: int = D_MODEL) -> dict[str, torch.Tensor]:
    """Encoder (d_model, d_t), decoder (d_t, d_model), biases, a JumpReLU threshold and W_skip."""
    g = torch.Generator().manual_seed(seed)
    return {
        "W_enc": torch.randn(d_model, d_t, generator=g) * 0.3,
        "b_enc": torch.randn(d_t, generator=g) * 0.1 - 0.05,
        "W_dec": torch.randn(d_t, d_model, generator=g) * 0.3,
        "b_dec": torch.randn(d_model, generator=g) * 0.01,
        "threshold": torch.rand(d_t, generator=g) * 0.2,
        "W_skip": torch.randn(d_model, d_model, generator=g) * 0.01,
    }


def write_circuit_tracer(folder: Path, weights: dict[int, dict[str, torch.Tensor]], *, activation: str = "relu",
                         k: int | None = None) -> Path:
    """config.yaml + layer_{i}.safetensors (W_enc stored as (d_t, d_model), as circuit-tracer does)."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"model_name": "tiny-llama", "model_kind": "transcoder_set", "feature_input_hook": "mlp.hook_in",
           "feature_output_hook": "mlp.hook_out", "scan": "tiny-scan"}
    if sorted(weights) == list(range(len(weights))):  # circuit-tracer's list is positional: entry i is layer i
        cfg["transcoders"] = [f"layer_{i}.safetensors" for i in sorted(weights)]
    if activation != "jumprelu":
        cfg["activation"] = activation
    if k:
        cfg["k"] = k
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    for layer, w in weights.items():
        t = {"W_enc": w["W_enc"].T.contiguous(), "W_dec": w["W_dec"], "b_enc": w["b_enc"], "b_dec": w["b_dec"],
             "W_skip": w["W_skip"]}
        if activation == "jumprelu":
            t["activation_function.threshold"] = w["threshold"]
        save_file(t, str(folder / f"layer_{layer}.safetensors"))
    return folder


def write_clt(folder: Path, weights: dict[int, dict[str, torch.Tensor]]) -> Path:
    """circuit-tracer cross-layer files W_enc_{i}.safetensors / W_dec_{i}.safetensors (layers 0..n-1)."""
    folder.mkdir(parents=True, exist_ok=True)
    n = len(weights)
    for i, w in weights.items():
        save_file({f"W_enc_{i}": w["W_enc"].T.contiguous(), f"b_enc_{i}": w["b_enc"], f"b_dec_{i}": w["b_dec"],
                   f"threshold_{i}": w["threshold"]}, str(folder / f"W_enc_{i}.safetensors"))
        dec = w["W_dec"][:, None, :].repeat(1, n - i, 1) / (n - i)
        save_file({f"W_dec_{i}": dec.contiguous()}, str(folder / f"W_dec_{i}.safetensors"))
    return folder


def write_saelens(folder: Path, layer: int, w: dict[str, torch.Tensor], architecture: str = "jumprelu",
                  k: int | None = None) -> Path:
    """cfg.json + sae_weights.safetensors with W_enc (d_in, d_sae), as SAELens saves them."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"architecture": architecture, "d_in": D_MODEL, "d_sae": w["W_enc"].shape[1],
           "hook_name": f"blocks.{layer}.ln2.hook_normalized", "hook_name_out": f"blocks.{layer}.hook_mlp_out",
           "apply_b_dec_to_input": False}
    if k:
        cfg["activation_fn_kwargs"] = {"k": k}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    t = {"W_enc": w["W_enc"], "W_dec": w["W_dec"], "b_enc": w["b_enc"], "b_dec": w["b_dec"]}
    if architecture == "jumprelu":
        t["threshold"] = w["threshold"]
    save_file(t, str(folder / "sae_weights.safetensors"))
    return folder


def write_gemmascope(path: Path, w: dict[str, torch.Tensor]) -> Path:
    """GemmaScope params.npz: W_enc (d_model, d_sae), W_dec, b_enc, b_dec, threshold."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{k: w[k].numpy() for k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")})
    return path


def write_sparsify(folder: Path, layer: int, w: dict[str, torch.Tensor], k: int) -> Path:
    """EleutherAI sparsify transcoder: layers.N.mlp/cfg.json + sae.safetensors."""
    hp = folder / f"layers.{layer}.mlp"
    hp.mkdir(parents=True, exist_ok=True)
    (hp / "cfg.json").write_text(json.dumps({"k": k, "num_latents": w["W_enc"].shape[1], "transcode": True,
                                             "d_in": D_MODEL}))
    save_file({"encoder.weight": w["W_enc"].T.contiguous(), "encoder.bias": w["b_enc"], "W_dec": w["W_dec"],
               "b_dec": w["b_dec"]}, str(hp / "sae.safetensors"))
    return folder


def ingest_tiny_store(root: Path) -> dict[str, Path]:
    """A store ingested from the tiny Llama with 16-feature transcoders on layers 1 and 2 (model 'tiny', set 'tc16')."""
    from ingest.run import IngestConfig, run_ingest

    model = make_tiny_llama(root / "model")
    tc = write_circuit_tracer(root / "tc", {i: random_weights(16, seed=i) for i in range(3)}, activation="jumprelu")
    db = root / "store.duckdb"
    run_ingest(IngestConfig(transcoders=[str(tc)], model=str(model), corpus=str(write_corpus(root / "c.txt", 3000)),
                            layers=[1, 2], ctx_len=16, batch_size=4, k=5, model_id="tiny", source_set="tc16"),
               str(db), checkpoint=None, progress=False)
    return {"model": model, "tc": tc, "db": db}
