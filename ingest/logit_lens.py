"""Top and bottom output logits of each decoder direction (W_dec @ W_U in chunks) and their histogram."""

from __future__ import annotations

from dataclasses import dataclass

import torch

LOGIT_HIST_BINS = 32


@dataclass
class LogitStats:
    """Per feature: top/bottom token ids and values, and a histogram over the whole vocabulary."""

    top_ids: torch.Tensor  # (F, n)
    top_values: torch.Tensor
    bottom_ids: torch.Tensor
    bottom_values: torch.Tensor
    hist_heights: torch.Tensor  # (F, LOGIT_HIST_BINS)
    hist_values: torch.Tensor  # (F, LOGIT_HIST_BINS) bin centres


@torch.inference_mode()
def logit_stats(W_dec: torch.Tensor, W_U: torch.Tensor, n: int = 10, chunk: int = 1024) -> LogitStats:
    """W_dec (F, d_model) against W_U (vocab, d_model), `chunk` features at a time."""
    W_U = W_U.to(device=W_dec.device, dtype=torch.float32)
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in LogitStats.__dataclass_fields__}
    for start in range(0, W_dec.shape[0], chunk):
        logits = W_dec[start:start + chunk].float() @ W_U.T  # (c, vocab)
        top = logits.topk(n, dim=1)
        bottom = logits.topk(n, dim=1, largest=False)
        lo, hi = logits.amin(dim=1, keepdim=True), logits.amax(dim=1, keepdim=True)
        width = (hi - lo).clamp_min(1e-12) / LOGIT_HIST_BINS
        centres = lo + width * (torch.arange(LOGIT_HIST_BINS, device=logits.device) + 0.5)
        # bin = floor((x - lo) / width) clamped; x >= lo, so truncating to int32 floors (in place, no int64 copy)
        idx = logits.sub_(lo).div_(width).clamp_(0, LOGIT_HIST_BINS - 1).to(torch.int32)
        idx += torch.arange(logits.shape[0], device=logits.device, dtype=torch.int32)[:, None] * LOGIT_HIST_BINS
        heights = torch.bincount(idx.view(-1), minlength=logits.shape[0] * LOGIT_HIST_BINS)
        heights = heights.view(-1, LOGIT_HIST_BINS).float()
        for key, value in (("top_ids", top.indices), ("top_values", top.values), ("bottom_ids", bottom.indices),
                           ("bottom_values", bottom.values), ("hist_heights", heights), ("hist_values", centres)):
            parts[key].append(value.cpu())
    return LogitStats(**{k: torch.cat(v) for k, v in parts.items()})
