"""Spliced-in next-token loss: held-out cross-entropy with MLP outputs replaced by transcoder outputs.

The usual "CE loss recovered" of SAELens and sparsify: (zero-ablated - spliced) / (zero-ablated - clean). Every
window's position 0 (the attention sink) keeps its real MLP output in every variant, and the prediction made at
position 0 is not scored, so the sink is neither spliced nor evaluated. Single-layer variants re-run only the
blocks from that layer on, from block inputs cached in the clean pass.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ingest.architectures import arch_spec, blocks, hook_module
from ingest.sink_positions import SINK_POSITIONS
from ingest.transcoder import HOOK_MLP_IN, HOOK_MLP_OUT, Transcoder

Replace = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (mlp input, mlp output) -> new mlp output


@dataclass
class SplicedLoss:
    """Held-out next-token losses (nats per token)."""

    clean: float
    tokens: int
    layers: dict[int, dict[str, float | None]] = field(default_factory=dict)  # spliced, zero_ablated, recovered
    all_layers: dict[str, float | None] = field(default_factory=dict)


def loss_recovered(clean: float, spliced: float, zero_ablated: float) -> float | None:
    """(zero-ablated - spliced) / (zero-ablated - clean): 1 is a perfect replacement, 0 no better than zeros;
    None when zero-ablating costs nothing (the ratio is undefined)."""
    gap = zero_ablated - clean
    return (zero_ablated - spliced) / gap if gap > 1e-6 else None


def transcoder_output(t: Transcoder) -> Replace:
    """Replace the MLP output with the transcoder's reconstruction."""
    return lambda x, _out: t.reconstruct(x.float()).to(_out.dtype)


def zero_output(_x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Zero-ablate the MLP output."""
    return torch.zeros_like(out)


@contextmanager
def spliced(model: nn.Module, replacements: dict[int, Replace]) -> Iterator[None]:
    """Within the block, each listed layer's MLP output (after position 0) comes from its replacement."""
    handles: list[Any] = []
    inputs: dict[int, torch.Tensor] = {}
    for layer, fn in replacements.items():
        mod_in, kind_in = hook_module(model, layer, HOOK_MLP_IN)
        mod_out, _ = hook_module(model, layer, HOOK_MLP_OUT)
        assert kind_in == "pre"

        def take(_m: nn.Module, args: tuple, kwargs: dict, layer: int = layer) -> None:
            inputs[layer] = args[0] if args else next(iter(kwargs.values()))

        def put(_m: nn.Module, _args: tuple, out: Any, layer: int = layer, fn: Replace = fn) -> Any:
            real = out[0] if isinstance(out, tuple) else out
            new = real.clone()
            new[:, SINK_POSITIONS:] = fn(inputs[layer][:, SINK_POSITIONS:], real[:, SINK_POSITIONS:])
            return (new, *out[1:]) if isinstance(out, tuple) else new

        handles.append(mod_in.register_forward_pre_hook(take, with_kwargs=True))
        handles.append(mod_out.register_forward_hook(put))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _scored_loss(logits: torch.Tensor, ids: torch.Tensor) -> tuple[float, int]:
    """Summed next-token CE of predictions made at positions SINK_POSITIONS..T-2, and their count."""
    pred = logits[:, SINK_POSITIONS:-1].float()
    target = ids[:, SINK_POSITIONS + 1:]
    ce = torch.nn.functional.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1), reduction="sum")
    return float(ce), target.numel()


class _Tail:
    """Runs blocks from a given layer to the logits, from block inputs cached in a clean forward pass."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.blocks = blocks(model)
        base_path = arch_spec(model).layers.rsplit(".", 1)[0]
        base: Any = model
        for part in base_path.split("."):
            base = getattr(base, part)
        self.norm = getattr(base, "norm", None) or getattr(base, "ln_f", None)
        self.cache: dict[int, torch.Tensor] = {}
        self.kwargs: dict[int, dict[str, Any]] = {}

    @property
    def usable(self) -> bool:
        """Whether the final norm was found (otherwise callers run whole forward passes)."""
        return self.norm is not None

    def clean_logits(self, ids: torch.Tensor, first: int) -> torch.Tensor:
        """Full forward pass caching every block input from `first` on."""
        handles = []
        for i in range(first, len(self.blocks)):
            def grab(_m: nn.Module, args: tuple, kwargs: dict, i: int = i) -> None:
                self.cache[i] = args[0] if args else kwargs["hidden_states"]
                self.kwargs[i] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            handles.append(self.blocks[i].register_forward_pre_hook(grab, with_kwargs=True))
        try:
            return self.model(input_ids=ids, use_cache=False).logits
        finally:
            for h in handles:
                h.remove()

    def logits_from(self, layer: int) -> torch.Tensor:
        """Logits when blocks `layer`.. run again on the cached input of block `layer`."""
        hidden = self.cache[layer]
        for i in range(layer, len(self.blocks)):
            out = self.blocks[i](hidden, **self.kwargs[i])
            hidden = out[0] if isinstance(out, tuple) else out
        logits = self.model.get_output_embeddings()(self.norm(hidden))  # type: ignore[operator]
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits


@torch.inference_mode()
def spliced_losses(model: nn.Module, windows: torch.Tensor, transcoders: dict[int, Transcoder],
                   batch_size: int = 8) -> SplicedLoss:
    """Clean, per-layer spliced and zero-ablated, and all-layers-at-once losses on `windows` (W, T)."""
    layers = sorted(transcoders)
    sums: dict[str, float] = {}
    n_tokens = 0

    def add(key: str, logits: torch.Tensor, ids: torch.Tensor) -> int:
        total, n = _scored_loss(logits, ids)
        sums[key] = sums.get(key, 0.0) + total
        return n

    for i in range(0, len(windows), batch_size):
        ids = windows[i:i + batch_size]
        tail = _Tail(model)
        n_tokens += add("clean", tail.clean_logits(ids, layers[0]), ids)
        for layer in layers:
            for name, fn in (("spliced", transcoder_output(transcoders[layer])), ("zero", zero_output)):
                with spliced(model, {layer: fn}):
                    logits = tail.logits_from(layer) if tail.usable else model(input_ids=ids, use_cache=False).logits
                add(f"{layer}/{name}", logits, ids)
        for name, make in (("spliced", transcoder_output), ("zero", lambda _t: zero_output)):
            with spliced(model, {layer: make(transcoders[layer]) for layer in layers}):
                add(f"all/{name}", model(input_ids=ids, use_cache=False).logits, ids)
    mean = {k: v / n_tokens for k, v in sums.items()}
    out = SplicedLoss(clean=mean["clean"], tokens=n_tokens)
    for key in [str(layer) for layer in layers] + ["all"]:
        row = {"spliced": mean[f"{key}/spliced"], "zero_ablated": mean[f"{key}/zero"]}
        row["recovered"] = loss_recovered(out.clean, row["spliced"], row["zero_ablated"])
        if key == "all":
            out.all_layers = row
        else:
            out.layers[int(key)] = row
    return out
