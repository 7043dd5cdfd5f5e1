"""Where the MLP hook points live in Hugging Face module trees (Llama, Gemma-2/3, Qwen-2/3, Mistral, GPT-2)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from featuredb.errors import FeatureDBError


class UnknownArchitectureError(FeatureDBError):
    """The model's architecture has no hook-point mapping."""


@dataclass(frozen=True)
class ArchSpec:
    """Attribute paths, relative to the causal-LM module, of the blocks and their MLP parts."""

    layers: str  # dotted path to the list of blocks
    pre_mlp_norm: str  # inside a block: the norm whose output feeds the MLP
    mlp: str  # inside a block: the MLP
    post_mlp_norm: str | None = None  # inside a block: a norm applied to the MLP output (Gemma)


_LLAMA = ArchSpec("model.layers", "post_attention_layernorm", "mlp")
_GEMMA = ArchSpec("model.layers", "pre_feedforward_layernorm", "mlp", "post_feedforward_layernorm")
ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gemma": ArchSpec("model.layers", "post_attention_layernorm", "mlp"),
    "gemma2": _GEMMA,
    "gemma3": ArchSpec("model.language_model.layers", "pre_feedforward_layernorm", "mlp",
                       "post_feedforward_layernorm"),
    "gemma3_text": _GEMMA,
    "gpt2": ArchSpec("transformer.h", "ln_2", "mlp"),
}


def arch_spec(model: nn.Module) -> ArchSpec:
    """The ArchSpec for a loaded model, from config.model_type."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ARCHITECTURES:
        raise UnknownArchitectureError(
            f"model type {model_type!r} is not supported; known: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[model_type]


def _get(root: nn.Module, dotted: str) -> nn.Module:
    obj: nn.Module = root
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks in order."""
    spec = arch_spec(model)
    try:
        return list(_get(model, spec.layers))  # type: ignore[arg-type]
    except AttributeError:
        raise UnknownArchitectureError(f"{type(model).__name__}: no {spec.layers} module list") from None


def hook_module(model: nn.Module, layer: int, hook: str) -> tuple[nn.Module, str]:
    """(module, 'pre' | 'post'): hook the module's input ('pre') or output ('post') to read `hook` at `layer`."""
    spec = arch_spec(model)
    block = blocks(model)[layer]
    if hook == "mlp_in":
        return _get(block, spec.mlp), "pre"
    if hook == "resid_mid":
        return _get(block, spec.pre_mlp_norm), "pre"
    if hook == "mlp_out":
        return _get(block, spec.post_mlp_norm or spec.mlp), "post"
    raise UnknownArchitectureError(f"unknown hook point {hook!r}")


def unembedding(model: nn.Module) -> "nn.Parameter":
    """W_U as (vocab, d_model): the output embedding weight."""
    out = model.get_output_embeddings()  # type: ignore[operator]
    if out is None:
        raise UnknownArchitectureError(f"{type(model).__name__}: no output embedding")
    return out.weight


def d_model(model: nn.Module) -> int:
    """Width of the residual stream."""
    cfg = model.config  # type: ignore[attr-defined]
    return int(getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd"))
