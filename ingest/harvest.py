"""Run the model once per batch and capture each transcoder's input, stopping after the last hook needed."""

from __future__ import annotations

from typing import Any

import torch

from ingest.architectures import hook_module
from ingest.transcoder import Transcoder


class _StopForward(Exception):
    """Raised inside the last hook so the rest of the model never runs."""


class Harvester:
    """Captures {layer: (W, T, d_model)} transcoder inputs for a batch of token windows."""

    def __init__(self, model: Any, transcoders: list[Transcoder]) -> None:
        self.model = model
        self.captured: dict[int, torch.Tensor] = {}
        self._handles = []
        points = [(t.layer, t.hook_in) for t in transcoders]
        order = {"resid_mid": 0, "mlp_in": 1, "mlp_out": 2}
        last = max(points, key=lambda p: (p[0], order[p[1]]))
        for layer, hook in points:
            module, kind = hook_module(model, layer, hook)
            self._handles.append(self._register(module, kind, layer, (layer, hook) == last))

    def _register(self, module: torch.nn.Module, kind: str, layer: int, stop: bool) -> Any:
        def take(tensor: torch.Tensor) -> None:
            self.captured[layer] = tensor.detach()
            if stop:
                raise _StopForward

        if kind == "pre":
            return module.register_forward_pre_hook(lambda _m, args, kwargs: take(args[0] if args else
                                                                                   next(iter(kwargs.values()))),
                                                    with_kwargs=True)
        return module.register_forward_hook(lambda _m, _args, out: take(out[0] if isinstance(out, tuple) else out))

    @torch.inference_mode()
    def run(self, input_ids: torch.Tensor) -> dict[int, torch.Tensor]:
        """Forward `input_ids` (W, T) up to the last hook; returns the captured inputs by layer."""
        self.captured = {}
        try:
            self.model(input_ids=input_ids, use_cache=False)
        except _StopForward:
            pass
        return self.captured

    def close(self) -> None:
        """Remove the hooks."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
