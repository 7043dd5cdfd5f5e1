"""Each layer's encode and state update on a GPU replayed as one CUDA graph: one launch instead of about 80.

A small model's forward pass is bound by kernel launches, not by the GPU, so every launch the state update
adds shows in the pass's time. The encode and the dense update have no host synchronisation (see
`LayerState.update`), so they are captured once per layer and batch shape and replayed, reading the layer's
input (W, T, d_model) from a fixed buffer; the graphs share one memory pool, since none of them returns a
tensor (they only change the state in place). Without CUDA, or where capture fails, the step runs as plain
calls, with the same result.
"""

from __future__ import annotations

import sys
from typing import Callable

import torch

from ingest.feature_state import LayerState

Step = Callable[[LayerState, torch.Tensor, torch.Tensor], None]  # (state, layer input, window ids): updates state


class GraphedStateUpdate:
    """Calls `step(state, x, windows)`, through a captured CUDA graph where it can."""

    def __init__(self) -> None:
        # keyed by the state's id, holding the state too: a graph writes into that state's memory, so the state
        # must outlive it (and an id reused by a later state must not find it)
        self.graphs: dict[tuple[int, tuple[int, ...]], tuple[LayerState, torch.cuda.CUDAGraph]] = {}
        self.inputs: dict[tuple[tuple[int, ...], str], tuple[torch.Tensor, torch.Tensor]] = {}
        self.pool = None
        self.broken: str | None = None

    def __call__(self, state: LayerState, acts: torch.Tensor, windows: torch.Tensor, step: Step) -> None:
        """Fold a batch into `state`: `step(state, acts, windows)`, which must not synchronise with the host and
        must do the same thing each time it is called for `state` (it is captured on the first call)."""
        if self.broken or not acts.is_cuda:
            step(state, acts, windows)
            return
        key = (id(state), tuple(acts.shape))
        entry = self.graphs.get(key)
        graph = entry[1] if entry is not None and entry[0] is state else None
        if graph is None:
            try:
                graph = self._capture(state, acts, windows, step)
            except RuntimeError as e:  # a PyTorch or driver without graph support for one of the ops
                self.broken = str(e).splitlines()[0]
                print(f"featuredb: CUDA graphs off for the state update ({self.broken})", file=sys.stderr)
                step(state, acts, windows)
                return
            self.graphs[key] = (state, graph)
        static_acts, static_windows = self.inputs[(tuple(acts.shape), str(acts.device))]
        static_acts.copy_(acts)
        static_windows.copy_(windows)
        graph.replay()

    def _capture(self, state: LayerState, acts: torch.Tensor, windows: torch.Tensor,
                 step: Step) -> torch.cuda.CUDAGraph:
        shape = (tuple(acts.shape), str(acts.device))
        if shape not in self.inputs:
            self.inputs[shape] = (torch.empty_like(acts), torch.empty_like(windows, device=acts.device))
        static_acts, static_windows = self.inputs[shape]
        static_acts.copy_(acts)
        static_windows.copy_(windows)
        # Capture records without running, but every kernel must have run once before: warm up on a scratch
        # state of the same shape (the real one must be updated exactly once per batch), off the main stream.
        scratch = LayerState.empty(state.n_features, state.top_val.shape[1], state.res_pri.shape[1],
                                   state.top_acts.shape[2], acts.device)
        side = torch.cuda.Stream(acts.device)
        side.wait_stream(torch.cuda.current_stream(acts.device))
        with torch.cuda.stream(side):
            step(scratch, static_acts, static_windows)
        torch.cuda.current_stream(acts.device).wait_stream(side)
        del scratch
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            step(state, static_acts, static_windows)
        return graph
