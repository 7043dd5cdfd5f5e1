"""One fused GPU pass over a batch's activations: each window's peak, each feature's positive count and histogram.

Reading the (W, T, F) activations once instead of a dozen elementwise passes is what keeps the ingest pass near
its bare forward pass on a GPU when every layer is hooked. Needs Triton (it ships with CUDA builds of PyTorch);
`fused_scan` is None without it, and the caller falls back to plain tensor operations with the same result.
"""

from __future__ import annotations

from typing import Callable

import torch

try:  # pragma: no cover - Triton exists only beside a CUDA build of PyTorch
    import triton
    import triton.language as tl

    from triton.language.extra import libdevice
except ImportError:  # CPU-only PyTorch, or a Triton without libdevice
    triton = None


def _build() -> Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None:
    if triton is None:
        return None

    @triton.jit
    def scan_kernel(acts_ptr, peak_ptr, nonzero_ptr, hist_ptr, T, F, W, stride_w, stride_t,
                    log10_min, per_decade, N_BINS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_F: tl.constexpr):
        # one program: one window's whole (T, BLOCK_F) tile, read once
        w = tl.program_id(0)
        feats = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
        tokens = tl.arange(0, BLOCK_T)
        inside = (tokens[:, None] < T) & (feats[None, :] < F)
        x = tl.load(acts_ptr + w * stride_w + tokens[:, None] * stride_t + feats[None, :], mask=inside,
                    other=float("-inf"))
        pos = inside & (x > 0)
        b = tl.floor((libdevice.log10(tl.where(pos, x, 1.0)) - log10_min) * per_decade)
        b = tl.minimum(tl.maximum(b, 0.0), N_BINS - 1.0).to(tl.int32)
        tl.atomic_add(hist_ptr + feats[None, :] * N_BINS + b, 1, mask=pos)
        tl.store(peak_ptr + feats * W + w, tl.max(x, axis=0), mask=feats < F)
        tl.atomic_add(nonzero_ptr + feats, tl.sum(pos.to(tl.int32), axis=0), mask=feats < F)

    def scan(acts: torch.Tensor, log10_min: float, per_decade: float,
             n_bins: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(peak (F, W) float32, positive counts (F,) int32, histogram (F, n_bins) int32) of acts (W, T, F)."""
        acts = acts.contiguous()
        n_w, n_t, n_f = acts.shape
        peak = torch.empty((n_f, n_w), device=acts.device, dtype=torch.float32)
        nonzero = torch.zeros(n_f, device=acts.device, dtype=torch.int32)
        hist = torch.zeros((n_f, n_bins), device=acts.device, dtype=torch.int32)
        block_t = triton.next_power_of_2(n_t)
        block_f = max(1, min(64, 4096 // block_t))
        scan_kernel[(n_w, triton.cdiv(n_f, block_f))](acts, peak, nonzero, hist, n_t, n_f, n_w, acts.stride(0),
                                                      acts.stride(1), log10_min, per_decade, N_BINS=n_bins,
                                                      BLOCK_T=block_t, BLOCK_F=block_f)
        return peak, nonzero, hist

    return scan


fused_scan = _build()
