"""The logit lens of each decoder direction: top/bottom tokens and a histogram over the whole vocabulary."""

from __future__ import annotations

import torch

from ingest.logit_lens import LOGIT_HIST_BINS, logit_stats


def test_logit_stats_match_a_direct_computation() -> None:
    gen = torch.Generator().manual_seed(0)
    W_dec, W_U = torch.randn(37, 16, generator=gen), torch.randn(500, 16, generator=gen)
    got = logit_stats(W_dec, W_U, n=5, chunk=10)  # chunks that do not divide the feature count
    logits = W_dec @ W_U.T
    assert torch.equal(got.top_ids, logits.topk(5, dim=1).indices)
    assert torch.allclose(got.bottom_values, logits.topk(5, dim=1, largest=False).values)
    for f in range(37):
        lo, hi = logits[f].min().item(), logits[f].max().item()
        expected = torch.histc(logits[f], bins=LOGIT_HIST_BINS, min=lo, max=hi)
        assert got.hist_heights[f].sum() == 500
        assert (got.hist_heights[f] - expected).abs().sum() <= 2  # histc and floor may differ at a bin edge
        width = (hi - lo) / LOGIT_HIST_BINS
        assert torch.allclose(got.hist_values[f], lo + width * (torch.arange(LOGIT_HIST_BINS) + 0.5), atol=1e-5)
