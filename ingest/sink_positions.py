"""Which token positions no transcoder is trained, evaluated or indexed on: the attention sink and outliers.

Position 0 of every window is an attention sink whether or not the tokenizer adds a BOS (SmolLM2 adds none,
and its first token's residual reaches ~24,000 in norm after layer 11, about 100x the others). Any other
position whose residual stream (before the pre-MLP norm) is more than OUTLIER_RATIO times the median norm of
its batch at that layer is an outlier too.
"""

from __future__ import annotations

import torch

SINK_POSITIONS = 1  # leading positions of every window that are always excluded
OUTLIER_RATIO = 10.0


def outlier_mask(resid: torch.Tensor, ratio: float = OUTLIER_RATIO) -> torch.Tensor:
    """(W, T-1) bool: positions after the sink whose residual norm exceeds `ratio` x the batch median."""
    norms = resid[:, SINK_POSITIONS:, :].float().norm(dim=-1)
    return norms > ratio * norms.median()
