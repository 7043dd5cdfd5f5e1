"""Run the model once per batch and capture activations at hook points, stopping after the last one needed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ingest.architectures import hook_module
from ingest.transcoder import Transcoder

if TYPE_CHECKING:
    from transformers import PreTrainedModel

HookPoint = tuple[int, str]  # (layer, hook kind such as 'mlp_in')


class _StopForward(Exception):
    """Raised inside the last hook so the rest of the model never runs."""


class Harvester:
    """Captures {(layer, hook): (W, T, d_model)} activations for a batch of token windows."""

    def __init__(self, model: PreTrainedModel, points: list[HookPoint]) -> None:
        self.model = model
        self.captured: dict[HookPoint, torch.Tensor] = {}
        self._handles = []
        order = {"resid_mid": 0, "mlp_in": 1, "mlp_out": 2}
        last = max(points, key=lambda p: (p[0], order[p[1]]))
        for point in dict.fromkeys(points):
            module, kind = hook_module(model, *point)
            self._handles.append(self._register(module, kind, point, point == last))

    @classmethod
    def for_transcoders(cls, model: PreTrainedModel, transcoders: list[Transcoder]) -> "Harvester":
        """A harvester of each transcoder's input hook."""
        return cls(model, [(t.layer, t.hook_in) for t in transcoders])

    def _register(self, module: torch.nn.Module, kind: str, point: HookPoint, stop: bool) -> Any:
        def take(tensor: torch.Tensor) -> None:
            self.captured[point] = tensor.detach()
            if stop:
                raise _StopForward

        if kind == "pre":
            return module.register_forward_pre_hook(lambda _m, args, kwargs: take(args[0] if args else
                                                                                   next(iter(kwargs.values()))),
                                                    with_kwargs=True)
        return module.register_forward_hook(lambda _m, _args, out: take(out[0] if isinstance(out, tuple) else out))

    @torch.inference_mode()
    def run(self, input_ids: torch.Tensor) -> dict[HookPoint, torch.Tensor]:
        """Forward `input_ids` (W, T) up to the last hook; returns the captured activations by hook point."""
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
