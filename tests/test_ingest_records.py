"""How ingest turns a feature's statistics into Neuronpedia's interval fields (binContains)."""

from __future__ import annotations

import numpy as np
import torch

from ingest.feature_state import LayerState
from ingest.records import RecordOptions, _count_below, _interval_examples


def test_count_below_spreads_a_bins_count_over_its_log_width() -> None:
    hist = np.zeros((1, 64))
    hist[0, 32] = 80.0  # bin 32 holds [10^0, 10^0.125): 80 activations
    inside = 10 ** 0.0625  # half-way through the bin in log10
    assert _count_below(hist, np.array([inside]))[0] == 40.0
    assert _count_below(hist, np.array([1.0]))[0] == 0.0 and _count_below(hist, np.array([0.0]))[0] == 0.0
    assert _count_below(hist, np.array([1e9]))[0] == 80.0


def test_interval_shares_add_up_and_a_narrow_top_interval_is_not_zero() -> None:
    """One-token windows with activations from 0.1 to 6.2: every interval has examples and a share, and the shares
    of the intervals of (0, max] add up to all activations."""
    torch.manual_seed(0)
    state = LayerState.empty(1, k=4, reservoir=64, ctx_len=1, device=torch.device("cpu"))
    for start in range(0, 4000, 16):
        acts = torch.rand(16, 1, 1) * 6.2
        acts[acts < 0.1] = 0
        state.update(acts, torch.arange(start, start + 16))
    max_act = state.top_val[:, 0].numpy().astype(np.float64)
    feats, _, _, bins = _interval_examples(state, max_act, RecordOptions(intervals=5, per_interval=5))
    shares = {(lo, hi): c for lo, hi, c in bins}
    assert len(shares) == 5 and all(c > 0 for c in shares.values())  # uniform data: each fifth holds some
    assert abs(sum(shares.values()) - 1.0) < 1e-9
    top = max(shares)  # the top fifth, (0.8 max, max]: by bin centres it held no activation at all
    assert 0.1 < shares[top] < 0.3
