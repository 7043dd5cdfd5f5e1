"""One layer's transcoder in a common form: encode MLP inputs into feature activations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

HOOK_MLP_IN = "mlp_in"  # input of the MLP, after the pre-MLP norm
HOOK_RESID_MID = "resid_mid"  # residual stream after attention, before the pre-MLP norm
HOOK_MLP_OUT = "mlp_out"  # output of the MLP (after Gemma's post-MLP norm)
WEIGHTS = ("W_enc", "b_enc", "W_dec", "threshold", "b_dec", "input_bias", "W_skip")

# Hook names used by circuit-tracer, TransformerLens, SAELens and sparsify, mapped onto ours.
HOOK_ALIASES = {
    "ln2.hook_normalized": HOOK_MLP_IN,
    "mlp.hook_in": HOOK_MLP_IN,
    "hook_mlp_in": HOOK_MLP_IN,
    "mlp": HOOK_MLP_IN,
    "mlp_in": HOOK_MLP_IN,
    "hook_resid_mid": HOOK_RESID_MID,
    "resid_mid": HOOK_RESID_MID,
    "hook_mlp_out": HOOK_MLP_OUT,
    "mlp.hook_out": HOOK_MLP_OUT,
    "mlp_out": HOOK_MLP_OUT,
}


def canonical_hook(name: str) -> str | None:
    """Our hook kind for a hook name such as 'blocks.8.ln2.hook_normalized'; None when unknown."""
    parts = name.split(".")
    if len(parts) > 2 and parts[0] in ("blocks", "layers", "model") and parts[1].isdigit():
        name = ".".join(parts[2:])
    return HOOK_ALIASES.get(name)


@dataclass
class Transcoder:
    """Encoder, decoder and activation of one layer; W_enc is (d_model, d_t), W_dec is (d_t, d_model)."""

    layer: int
    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    activation: str = "relu"  # relu | jumprelu | topk
    threshold: torch.Tensor | None = None
    k: int | None = None
    b_dec: torch.Tensor | None = None
    input_bias: torch.Tensor | None = None  # subtracted from the input before encoding (SAELens b_dec)
    W_skip: torch.Tensor | None = None
    hook_in: str = HOOK_MLP_IN
    hook_out: str = HOOK_MLP_OUT
    path: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    reload: Callable[[], "Transcoder"] | None = field(default=None, repr=False, compare=False)  # reads the weights

    @property
    def d_model(self) -> int:
        """Width of the residual stream this transcoder reads."""
        return int(self.W_enc.shape[0])

    @property
    def d_transcoder(self) -> int:
        """Number of features."""
        return int(self.W_enc.shape[1])

    @property
    def loaded(self) -> bool:
        """Whether the weights are in memory (a released transcoder keeps only their shapes)."""
        return self.W_enc.device.type != "meta"

    def weight_bytes(self) -> int:
        """Memory the weights take as float32, loaded or not."""
        return sum(getattr(self, n).numel() * 4 for n in WEIGHTS if getattr(self, n) is not None)

    def release(self) -> "Transcoder":
        """Let the weights go, keeping their shapes, when `reload` can read them again; else keep them."""
        if self.reload is not None:
            for name in WEIGHTS:
                t = getattr(self, name)
                if t is not None:
                    setattr(self, name, t.to("meta"))
        return self

    def materialise(self) -> "Transcoder":
        """Read released weights back from disk (a no-op when they are loaded)."""
        if not self.loaded and self.reload is not None:
            fresh = self.reload()
            for name in WEIGHTS:
                setattr(self, name, getattr(fresh, name))
        return self

    def to(self, device: torch.device | str, dtype: torch.dtype) -> "Transcoder":
        """Move every tensor to a device and dtype (k stays an int)."""
        for name in WEIGHTS:
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.to(device=device, dtype=dtype))
        return self

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations (..., d_t) for inputs (..., d_model)."""
        if self.input_bias is not None:
            x = x - self.input_bias
        pre = x.to(self.W_enc.dtype) @ self.W_enc + self.b_enc
        if self.activation == "jumprelu":
            assert self.threshold is not None
            return pre * (pre > self.threshold)
        if self.activation == "topk":
            assert self.k is not None
            pre = torch.relu(pre)
            vals, idx = pre.topk(self.k, dim=-1)
            return torch.zeros_like(pre).scatter_(-1, idx, vals)
        return torch.relu(pre)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The transcoder's estimate of the MLP output for inputs (..., d_model): features, b_dec and skip."""
        out = self.encode(x) @ self.W_dec
        if self.b_dec is not None:
            out = out + self.b_dec
        if self.W_skip is not None:
            out = out + x.to(self.W_skip.dtype) @ self.W_skip.T
        return out
