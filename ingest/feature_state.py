"""Streaming, mergeable per-feature statistics: top-k windows, an interval reservoir, counts and a histogram.

Every part is order-independent, so shards merged together and a resumed run give exactly the rows of
one uninterrupted run:
- top-k keeps the k windows with the highest peak activation (ties broken by the lower window id);
- the reservoir keeps the R active windows with the smallest hash priority (a uniform sample);
- counts and the log-spaced histogram are sums.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from featuredb.activation_bins import HIST_BINS, HIST_BINS_PER_DECADE, HIST_LOG10_MIN
from ingest.activation_scan import fused_scan

MERGE_ROWS = 2048  # features merged per step: bounds the temporaries of a merge, whatever the layer's width
DENSE_ROWS = 16384  # features merged per step on a GPU (every row, no selection): bounds the temporaries there
HIST_SCRATCH = 1 << 16  # slots that absorb the non-positive entries of a dense histogram update


def pair_priority(windows: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """A deterministic uniform [0, 1) priority per (window, feature) pair; inputs broadcast together."""
    x = windows.to(torch.int64) * 0x9E3779B1 + features.to(torch.int64) * 0x85EBCA77 + 0x27D4EB2F
    x = x & 0xFFFFFFFF
    x = ((x ^ (x >> 15)) * 0x2C1B3C6D) & 0xFFFFFFFF  # one xorshift-multiply round: cheap and well mixed
    x = ((x ^ (x >> 12)) * 0x297A2D39) & 0xFFFFFFFF
    x = x ^ (x >> 15)
    return x.to(torch.float32).mul_(2.0**-32)


def window_priority(windows: torch.Tensor, n_features: int) -> torch.Tensor:
    """Priorities of every (window, feature): shape (len(windows), n_features)."""
    f = torch.arange(n_features, device=windows.device, dtype=torch.int64)
    return pair_priority(windows[:, None], f[None, :])


def _hist_bin(values: torch.Tensor) -> torch.Tensor:
    """The histogram bin (int64) of positive activation values."""
    return ((values.log10() - HIST_LOG10_MIN) * HIST_BINS_PER_DECADE).floor().clamp_(0, HIST_BINS - 1).long()


def _select(keep_idx: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Rows from [a | b] along dim 1 at keep_idx (indices < a.shape[1] come from a)."""
    n_a = a.shape[1]
    extra = a.shape[2:]
    ia = keep_idx.clamp(max=n_a - 1)
    ib = (keep_idx - n_a).clamp(min=0)
    expand = (*keep_idx.shape, *extra)
    view = (*keep_idx.shape, *([1] * len(extra)))
    from_a = a.gather(1, ia.view(view).expand(expand))
    from_b = b.gather(1, ib.view(view).expand(expand))
    mask = (keep_idx < n_a).view(view)
    return torch.where(mask, from_a, from_b)


@dataclass
class LayerState:
    """Running statistics of one transcoder's features (F features, windows of T tokens)."""

    top_val: torch.Tensor  # (F, k) peak activation of each kept window, -inf when empty
    top_win: torch.Tensor  # (F, k) window ids, -1 when empty
    top_acts: torch.Tensor  # (F, k, T) per-token activations of those windows
    res_pri: torch.Tensor  # (F, R) priority of reservoir windows, +inf when empty
    res_val: torch.Tensor  # (F, R)
    res_win: torch.Tensor  # (F, R)
    res_acts: torch.Tensor  # (F, R, T)
    nonzero: torch.Tensor  # (F,) tokens with activation > 0
    hist: torch.Tensor  # (F, HIST_BINS) counts of nonzero activations in log-spaced bins

    @classmethod
    def empty(cls, n_features: int, k: int, reservoir: int, ctx_len: int, device: torch.device) -> "LayerState":
        """A state that has seen nothing."""
        f32 = dict(device=device, dtype=torch.float32)
        i64 = dict(device=device, dtype=torch.int64)
        return cls(
            top_val=torch.full((n_features, k), float("-inf"), **f32),
            top_win=torch.full((n_features, k), -1, **i64),
            top_acts=torch.zeros((n_features, k, ctx_len), **f32),
            res_pri=torch.full((n_features, reservoir), float("inf"), **f32),
            res_val=torch.zeros((n_features, reservoir), **f32),
            res_win=torch.full((n_features, reservoir), -1, **i64),
            res_acts=torch.zeros((n_features, reservoir, ctx_len), **f32),
            nonzero=torch.zeros(n_features, **i64),
            hist=torch.zeros((n_features, HIST_BINS), **i64),
        )

    @staticmethod
    def bytes_per_feature(k: int, reservoir: int, ctx_len: int) -> int:
        """Memory one feature's state takes (the tensors of `empty`)."""
        return k * (4 + 8 + 4 * ctx_len) + reservoir * (4 + 4 + 8 + 4 * ctx_len) + 8 + HIST_BINS * 8

    def rows(self, lo: int, hi: int) -> "LayerState":
        """The state of features lo..hi-1 (views, no copy)."""
        return LayerState(**{k: v[lo:hi] for k, v in self.__dict__.items()})

    @property
    def n_features(self) -> int:
        """F."""
        return int(self.top_val.shape[0])

    def update(self, acts: torch.Tensor, windows: torch.Tensor, *, dense: bool | None = None) -> None:
        """Fold in a batch: acts (W, T, F) for windows (W,) with distinct ids.

        `dense` (the default on a GPU) merges every feature row at once with no host synchronisation, so the
        CPU never waits for the GPU, and reads the activations once in a fused kernel where Triton is present;
        the sparse path (the default on a CPU) touches only the rows that change. Both give identical state."""
        acts = acts.float()
        windows = windows.to(acts.device)
        dense = acts.is_cuda if dense is None else dense
        hist = None
        if dense and acts.is_cuda and fused_scan is not None:
            peak, nonzero, hist = fused_scan(acts, HIST_LOG10_MIN, HIST_BINS_PER_DECADE, HIST_BINS)
        else:
            peak = acts.amax(dim=1).T.contiguous()  # (F, W)
            pos = acts > 0
            nonzero = pos.sum(dim=(0, 1))
        self.nonzero += nonzero
        active = peak > 0
        cand_win = torch.where(active, windows[None, :].expand_as(peak), -1)
        per_feature = acts.permute(2, 0, 1)  # (F, W, T)
        if dense:  # every row's candidates are gathered: one transposing copy makes those reads contiguous
            per_feature = per_feature.contiguous()
        top = torch.where(active, peak, float("-inf"))
        pri = torch.where(active, window_priority(windows, self.n_features).T, float("inf"))  # (F, W)
        if dense:
            for lo in range(0, self.n_features, DENSE_ROWS):
                rows = slice(lo, lo + DENSE_ROWS)
                self._merge_top_rows(rows, top, cand_win, per_feature)
                self._merge_reservoir_rows(rows, pri, peak, cand_win, per_feature)
            if hist is not None:
                self.hist += hist
            else:
                self._histogram_dense(acts, pos)
            return
        self._merge_top(top, cand_win, per_feature)
        self._merge_reservoir(pri, peak, cand_win, per_feature)
        values = acts[pos]
        if values.numel():
            feats = torch.arange(self.n_features, device=acts.device).expand_as(acts)[pos]
            self.hist.view(-1).index_add_(0, feats * HIST_BINS + _hist_bin(values), torch.ones_like(feats))

    def _histogram_dense(self, acts: torch.Tensor, pos: torch.Tensor) -> None:
        # Count every (token, feature) without selecting the positive ones (a selection waits for the GPU).
        # Non-positive entries are counted into a scratch area spread over many slots, not one: a single slot
        # would serialise millions of atomic adds.
        n_hist = self.n_features * HIST_BINS
        index = torch.int32 if acts.numel() + n_hist + HIST_SCRATCH < 2**31 else torch.int64
        feats = torch.arange(self.n_features, device=acts.device, dtype=index) * HIST_BINS
        slot = feats + _hist_bin(torch.where(pos, acts, 1.0)).to(index)  # (W, T, F)
        spread = torch.arange(slot.numel(), device=acts.device, dtype=index).view_as(slot) % HIST_SCRATCH
        slot = torch.where(pos, slot, n_hist + spread)
        counts = torch.zeros(n_hist + HIST_SCRATCH, device=acts.device, dtype=torch.int64)
        counts.index_add_(0, slot.view(-1), torch.ones(1, device=acts.device, dtype=torch.int64).expand(slot.numel()))
        self.hist += counts[:n_hist].view(self.n_features, HIST_BINS)

    def merge(self, other: "LayerState") -> None:
        """Fold in another shard's state (same features and window length)."""
        self._merge_top(other.top_val, other.top_win, other.top_acts)
        self._merge_reservoir(other.res_pri, other.res_val, other.res_win, other.res_acts)
        self.nonzero += other.nonzero
        self.hist += other.hist

    def _merge_top(self, val: torch.Tensor, win: torch.Tensor, acts: torch.Tensor) -> None:
        # Only features where a candidate beats (or ties) the current k-th best can change.
        rows = (val >= self.top_val[:, -1:]).any(dim=1) & (val > float("-inf")).any(dim=1)
        for idx in rows.nonzero().squeeze(1).split(MERGE_ROWS):
            self._merge_top_rows(idx, val, win, acts)

    def _merge_top_rows(self, idx: torch.Tensor | slice, val: torch.Tensor, win: torch.Tensor, acts: torch.Tensor) -> None:
        k = self.top_val.shape[1]
        old_val, old_win = self.top_val[idx], self.top_win[idx]
        all_val = torch.cat([old_val, val[idx]], dim=1)
        all_win = torch.cat([old_win, win[idx]], dim=1)
        # highest peak first; among equal peaks the lower window id (empty slots, id -1, go last)
        order = torch.sort(torch.where(all_win < 0, torch.iinfo(torch.int64).max, all_win), dim=1, stable=True).indices
        order = order.gather(1, torch.sort(all_val.gather(1, order), dim=1, descending=True, stable=True).indices)
        keep = order[:, :k]
        self.top_acts[idx] = _select(keep, self.top_acts[idx], acts[idx])
        self.top_val[idx] = all_val.gather(1, keep)
        self.top_win[idx] = all_win.gather(1, keep)

    def _merge_reservoir(self, pri: torch.Tensor, val: torch.Tensor, win: torch.Tensor, acts: torch.Tensor) -> None:
        # Only features with a candidate of lower priority than their current worst kept one can change.
        rows = (pri < self.res_pri.amax(dim=1, keepdim=True)).any(dim=1)
        for idx in rows.nonzero().squeeze(1).split(MERGE_ROWS):
            self._merge_reservoir_rows(idx, pri, val, win, acts)

    def _merge_reservoir_rows(self, idx: torch.Tensor | slice, pri: torch.Tensor, val: torch.Tensor, win: torch.Tensor,
                              acts: torch.Tensor) -> None:
        r = self.res_pri.shape[1]
        all_pri = torch.cat([self.res_pri[idx], pri[idx]], dim=1)
        keep = torch.sort(all_pri, dim=1, stable=True).indices[:, :r]
        self.res_acts[idx] = _select(keep, self.res_acts[idx], acts[idx])
        self.res_val[idx] = torch.cat([self.res_val[idx], val[idx]], dim=1).gather(1, keep)
        self.res_win[idx] = torch.cat([self.res_win[idx], win[idx]], dim=1).gather(1, keep)
        self.res_pri[idx] = all_pri.gather(1, keep)

    def to(self, device: torch.device | str) -> "LayerState":
        """The same state on another device."""
        return LayerState(**{k: v.to(device) for k, v in self.__dict__.items()})

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors for a checkpoint (on CPU)."""
        return {k: v.detach().cpu() for k, v in self.__dict__.items()}

    @classmethod
    def from_state_dict(cls, d: dict[str, torch.Tensor], device: torch.device | str) -> "LayerState":
        """Rebuild from state_dict()."""
        return cls(**{k: v.to(device) for k, v in d.items()})

    def referenced_windows(self) -> torch.Tensor:
        """Window ids any kept example refers to."""
        ids = torch.cat([self.top_win.flatten(), self.res_win.flatten()])
        return ids[ids >= 0].unique()
