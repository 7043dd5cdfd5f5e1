"""The GPU's dense state update (every feature row, no host synchronisation) keeps exactly the sparse path's state."""

from __future__ import annotations

import pytest
import torch

from ingest import feature_state
from featuredb.activation_bins import HIST_BINS
from ingest.feature_state import LayerState
from ingest.graphed_update import GraphedStateUpdate, StepRunner

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _batches(n_features: int, ctx_len: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Activation batches with many exact ties (values on a coarse grid), silent features and rare ones."""
    g = torch.Generator().manual_seed(seed)
    out, start = [], 0
    for width in (7, 16, 16, 3, 16, 11):
        acts = torch.randint(0, 6, (width, ctx_len, n_features), generator=g).float() * 0.5
        acts[torch.rand(acts.shape, generator=g) < 0.8] = 0  # mostly silent
        acts[..., : n_features // 8] = 0  # features that never fire
        rare = torch.rand(width, generator=g) < 0.2
        acts[..., -1] = 0
        acts[rare, 0, -1] = 1e-5  # a feature below the histogram's lowest bin, seen in few windows
        acts[:, 1, n_features // 4] = 3e4  # and one above its highest
        out.append((acts, torch.arange(start, start + width)))
        start += width
    return out


def _fold(dense: bool, device: torch.device, batches: list, k: int, reservoir: int) -> LayerState:
    n_features, ctx_len = batches[0][0].shape[2], batches[0][0].shape[1]
    state = LayerState.empty(n_features, k, reservoir, ctx_len, device)
    for acts, windows in batches:
        acts, windows = acts.to(device), windows.to(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")  # any wait for the GPU inside update raises
        try:
            state.update(acts, windows, dense=dense)
        finally:
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("default")
    return state.to("cpu")


def test_dense_update_keeps_exactly_the_sparse_state(monkeypatch) -> None:
    """Top-k (ties broken by the lower window), reservoir, counts and histogram are equal field for field, whether
    the best windows come early, late or tie. On a GPU the dense update runs there and must never wait for it."""
    monkeypatch.setattr(feature_state, "DENSE_ROWS", 24)  # rows merged in steps of 24, the last one partial
    batches = _batches(n_features=64, ctx_len=8, seed=0)
    sparse = _fold(False, torch.device("cpu"), batches, k=5, reservoir=6)
    dense = _fold(True, DEVICE, batches, k=5, reservoir=6)
    for name, want in sparse.__dict__.items():
        got = getattr(dense, name)
        assert got.dtype == want.dtype and torch.equal(got, want), name
    assert int(sparse.hist.sum()) == int((torch.cat([a for a, _ in batches]) > 0).sum())  # every positive counted
    assert sparse.hist[:, 0].sum() > 0 and sparse.hist[:, HIST_BINS - 1].sum() > 0  # both ends clamp, not drop


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (run on the lent H100)")
def test_graphed_update_on_a_gpu_keeps_the_sparse_state() -> None:
    """The ingest pass's GPU update, one captured graph per batch shape replayed, keeps the sparse path's state."""
    batches = _batches(n_features=64, ctx_len=8, seed=2)
    batches = batches + [(acts, windows + 100) for acts, windows in batches]  # every shape seen again: replays
    sparse = _fold(False, torch.device("cpu"), batches, k=5, reservoir=6)
    update = GraphedStateUpdate()
    state = LayerState.empty(64, 5, 6, 8, DEVICE)
    for acts, windows in batches:
        update(state, acts.to(DEVICE), windows.to(DEVICE), lambda s, a, w: s.update(a, w))
    assert update.broken is None and len(update.graphs) == len({a.shape for a, _ in batches})
    for name, want in sparse.__dict__.items():
        assert torch.equal(getattr(state.to("cpu"), name), want), name


def _run_batches(runner: StepRunner, n_batches: int, n_layers: int, now: list[float], cost: dict[str, float],
                 ) -> list[tuple[int, int, str]]:
    """Drive `runner` as the ingest pass does; each step advances the fake clock by its path's cost."""
    done: list[tuple[int, int, str]] = []
    for b in range(n_batches):
        with runner.batch():
            for layer in range(n_layers):
                def step(state: object, x: object, windows: object, b: int = b, layer: int = layer) -> None:
                    now[0] += cost[runner.path]
                    done.append((b, layer, runner.path))
                runner(None, None, None, step)  # type: ignore[arg-type]
    return done


def _fake_graphed(state: object, x: object, windows: object, step) -> None:
    step(state, x, windows)


def test_the_pass_times_both_gpu_paths_then_keeps_the_faster() -> None:
    """On a GPU the first batches run plain, then through graphs, each timed after waiting for the GPU; the
    faster path takes every later batch, and every layer's step runs exactly once per batch whichever path."""
    for plain_cost, graphed_cost, want in [(10.0, 4.0, "graphed"), (4.0, 10.0, "plain")]:
        now, syncs = [0.0], []
        runner = StepRunner(torch.device("cuda"), clock=lambda: now[0], sync=lambda: syncs.append(now[0]),
                            graphed=_fake_graphed)
        done = _run_batches(runner, 12, 3, now, {"plain": plain_cost, "graphed": graphed_cost})
        assert sorted((b, layer) for b, layer, _ in done) == [(b, layer) for b in range(12) for layer in range(3)]
        paths = [next(p for b2, _, p in done if b2 == b) for b in range(12)]
        assert paths[:7] == ["plain"] * 3 + ["graphed"] * 4  # 1 + 2 timed plain, 2 warm-up + 2 timed graphed
        assert runner.choice == want and paths[7:] == [want] * 5
        assert runner.times == {"plain": [3 * plain_cost] * 2, "graphed": [3 * graphed_cost] * 2}
        assert len(syncs) == 8  # before and after each timed batch, never after the choice
        assert (runner.graphed is None) == (want == "plain")  # a losing path's graphs are let go


def test_without_a_gpu_the_pass_never_waits_or_captures() -> None:
    now, syncs = [0.0], []
    runner = StepRunner(torch.device("cpu"), clock=lambda: now[0], sync=lambda: syncs.append(1),
                        graphed=_fake_graphed)
    done = _run_batches(runner, 8, 2, now, {"plain": 1.0, "graphed": 1.0})
    assert {p for _, _, p in done} == {"plain"} and not syncs and runner.choice == "plain"
