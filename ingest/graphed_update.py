"""Each layer's encode and state update on a GPU replayed as one CUDA graph, where that is faster than plain calls.

A small model's forward pass is bound by kernel launches, not by the GPU, so every launch the state update
adds shows in the pass's time. The encode and the dense update have no host synchronisation (see
`LayerState.update`), so they are captured once per layer and batch shape and replayed, reading the layer's
input (W, T, d_model) from a fixed buffer; the graphs share one memory pool, since none of them returns a
tensor (they only change the state in place). A batch shape is captured the second time it is seen, so a
pass's short last batch runs plain. Without CUDA, or where capture fails, the step runs as plain calls, with
the same result.

Graphs win where launches dominate (few layers: 0.88x the bare pass instead of 1.25x on an H100) but were
measured slower when many layers keep the GPU busy, so `StepRunner` times a few batches each way at the start
of a pass and keeps the faster.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator

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
        self.sightings: dict[tuple[int, tuple[int, ...]], int] = {}

    def __call__(self, state: LayerState, acts: torch.Tensor, windows: torch.Tensor, step: Step) -> None:
        """Fold a batch into `state`: `step(state, acts, windows)`, which must not synchronise with the host and
        must do the same thing each time it is called for `state` (it is captured the second time a shape is seen)."""
        if self.broken or not acts.is_cuda:
            step(state, acts, windows)
            return
        key = (id(state), tuple(acts.shape))
        entry = self.graphs.get(key)
        graph = entry[1] if entry is not None and entry[0] is state else None
        if graph is None:
            self.sightings[key] = self.sightings.get(key, 0) + 1
            if self.sightings[key] < 2:  # a shape seen once (a pass's last batch) is not worth a capture
                step(state, acts, windows)
                return
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


class StepRunner:
    """Runs each layer's step of a batch: plain calls, or replayed graphs where a GPU runs those faster."""

    PLAIN_WARMUP, GRAPHED_WARMUP, TIMED = 1, 2, 2  # batches: untimed first ones (graphs are captured), then timed

    def __init__(self, device: torch.device, *, clock: Callable[[], float] = time.perf_counter,
                 sync: Callable[[], None] | None = None, graphed: Callable[..., None] | None = None,
                 choice: str | None = None) -> None:
        """`choice` ('plain' or 'graphed') skips the trial; without a GPU it is always 'plain'."""
        self.graphed = graphed if graphed is not None else GraphedStateUpdate()
        self.clock = clock
        self.sync = sync if sync is not None else (lambda: torch.cuda.synchronize(device))
        self.choice: str | None = choice if device.type == "cuda" else "plain"
        self.times: dict[str, list[float]] = {"plain": [], "graphed": []}
        self.batches = 0
        self.path = "plain"

    def _schedule(self) -> tuple[str, bool]:
        """(path, timed) for the next batch."""
        if self.choice is not None:
            return self.choice, False
        n = self.batches
        plain_end = self.PLAIN_WARMUP + self.TIMED
        if n < plain_end:
            return "plain", n >= self.PLAIN_WARMUP
        return "graphed", n >= plain_end + self.GRAPHED_WARMUP

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Wrap one batch's steps; during the trial batches, time them (waiting for the GPU before and after)."""
        self.path, timed = self._schedule()
        if timed:
            self.sync()
            start = self.clock()
        yield
        if timed:
            self.sync()
            self.times[self.path].append(self.clock() - start)
        self.batches += 1
        if self.choice is None and len(self.times["graphed"]) == self.TIMED:
            self.choice = "graphed" if sum(self.times["graphed"]) < sum(self.times["plain"]) else "plain"
            if self.choice == "plain":
                self.graphed = None  # the graphs' memory goes back

    def __call__(self, state: LayerState, x: torch.Tensor, windows: torch.Tensor, step: Step) -> None:
        """One layer's step, on the path this batch takes."""
        if self.path == "graphed" and self.graphed is not None:
            self.graphed(state, x, windows, step)
        else:
            step(state, x, windows)
