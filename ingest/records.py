"""Turn final per-layer statistics into Neuronpedia rows (features, activations) as Arrow tables."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from featuredb.store.feature_packs import pack_table
from featuredb.store.schema import Q_LEVELS, example_id
from featuredb.activation_bins import HIST_BINS, HIST_BINS_PER_DECADE, HIST_LOG10_MIN, hist_centres
from ingest.feature_state import LayerState, pair_priority
from ingest.logit_lens import LogitStats


@dataclass
class RecordOptions:
    """How examples are chosen and labelled."""

    intervals: int = 5  # equal-width intervals of (0, max]
    per_interval: int = 5
    data_source: str = ""
    creator: str = "featuredb"


@dataclass
class LayerRecords:
    """One source's rows: `features`, compact `examples` (activation_examples), `whole` activations rows (those
    q cannot hold) and the features' `packs`."""

    features: pa.Table
    examples: pa.Table
    whole: pa.Table
    packs: pa.Table  # featuredb.store.feature_packs, for features without whole rows


def _list_array(flat: pa.Array, width: int, rows: int) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(np.arange(rows + 1, dtype=np.int32) * width), flat)


def _example_table(model_id: str, source: str, feats: np.ndarray, wins: np.ndarray, acts: np.ndarray,
                   bins: np.ndarray, bank: dict[int, np.ndarray], vocab: pa.Array, opts: RecordOptions,
                   kind: np.ndarray) -> pa.Table:
    """Rows of the activations table; bins is (N, 3) binMin, binMax, binContains; kind 't'/'i' ids."""
    n, width = acts.shape
    token_ids = np.stack([bank[int(w)] for w in wins]) if n else np.zeros((0, width), dtype=np.int64)
    tokens = _list_array(pc.take(vocab, pa.array(token_ids.reshape(-1))), width, n)
    values = _list_array(pa.array(acts.reshape(-1).astype(np.float64)), width, n)
    ids = [example_id(model_id, source, f, k, w) for f, k, w in zip(feats.tolist(), kind.tolist(), wins.tolist())]
    return pa.table({
        "id": pa.array(ids, pa.string()),
        "modelId": pa.array([model_id] * n, pa.string()),
        "layer": pa.array([source] * n, pa.string()),
        "index": pa.array(feats.astype(np.int64)),
        "tokens": tokens,
        "values": values,
        "maxValue": pa.array(acts.max(axis=1).astype(np.float64) if n else np.zeros(0)),
        "maxValueTokenIndex": pa.array(acts.argmax(axis=1).astype(np.int64) if n else np.zeros(0, np.int64)),
        "minValue": pa.array(acts.min(axis=1).astype(np.float64) if n else np.zeros(0)),
        "dataIndex": pa.array([str(int(w)) for w in wins], pa.string()),
        "dataSource": pa.array([opts.data_source] * n, pa.string()),
        "binMin": pa.array(bins[:, 0].astype(np.float64)),
        "binMax": pa.array(bins[:, 1].astype(np.float64)),
        "binContains": pa.array(bins[:, 2].astype(np.float64)),
        "creatorId": pa.array([opts.creator] * n, pa.string()),
    })


def window_key(token_ids: np.ndarray) -> int:
    """A window's key in `example_windows`: the first 8 bytes of the BLAKE2b hash of its token ids (int64)."""
    digest = hashlib.blake2b(np.ascontiguousarray(token_ids, dtype=np.int64).tobytes(), digest_size=8).digest()
    return int(np.frombuffer(digest, dtype=np.int64)[0])


def window_table(bank: dict[int, np.ndarray], windows: np.ndarray, vocab: pa.Array) -> pa.Table:
    """Rows of `example_windows` (window_key, tokens) for the given window numbers."""
    windows = np.unique(windows)
    ids = [bank[int(w)] for w in windows]
    width = len(ids[0]) if ids else 0
    if any(len(x) != width for x in ids):
        raise ValueError("windows of one ingest must have one length")
    flat = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    return pa.table({"window_key": pa.array([window_key(x) for x in ids], pa.int64()),
                     "tokens": _list_array(pc.take(vocab, pa.array(flat)), width, len(ids))})


def _compact_table(feats: np.ndarray, wins: np.ndarray, acts: np.ndarray, bins: np.ndarray,
                   bank: dict[int, np.ndarray], opts: RecordOptions, kind: np.ndarray) -> pa.Table:
    """Rows of `activation_examples`: values as q = round(v / maxValue * 255) in UTINYINT (schema v7)."""
    n, width = acts.shape
    top = acts.max(axis=1).astype(np.float64) if n else np.zeros(0)
    scale = np.where(top > 0, Q_LEVELS / np.where(top > 0, top, 1.0), 0.0)
    q = np.clip(np.rint(acts.astype(np.float64) * scale[:, None]), 0, Q_LEVELS).astype(np.uint8)
    keys = {int(w): window_key(bank[int(w)]) for w in np.unique(wins)}
    return pa.table({
        "index": pa.array(feats.astype(np.int64)),
        "kind": pa.array(kind.tolist(), pa.string()),
        "dataIndex": pa.array(wins.astype(np.int64)),
        "window_key": pa.array([keys[int(w)] for w in wins], pa.int64()),
        "maxValue": pa.array(top),
        "maxValueTokenIndex": pa.array(acts.argmax(axis=1).astype(np.int32) if n else np.zeros(0, np.int32)),
        "q": _list_array(pa.array(q.reshape(-1)), width, n),
        "binMin": pa.array(bins[:, 0].astype(np.float64)),
        "binMax": pa.array(bins[:, 1].astype(np.float64)),
        "binContains": pa.array(bins[:, 2].astype(np.float64)),
        "dataSource": pa.array([opts.data_source] * n, pa.string()),
        "creatorId": pa.array([opts.creator] * n, pa.string()),
    })


def _examples(model_id: str, source: str, feats: np.ndarray, wins: np.ndarray, acts: np.ndarray, bins: np.ndarray,
              bank: dict[int, np.ndarray], vocab: pa.Array, opts: RecordOptions, kind: str
              ) -> tuple[pa.Table, pa.Table]:
    """(compact, whole) example rows: an example with a negative value (q cannot hold it) stays whole."""
    kinds = np.array([kind] * len(feats))
    whole = (acts < 0).any(axis=1) if len(feats) else np.zeros(0, bool)
    keep = ~whole
    return (_compact_table(feats[keep], wins[keep], acts[keep], bins[keep], bank, opts, kinds[keep]),
            _example_table(model_id, source, feats[whole], wins[whole], acts[whole], bins[whole], bank, vocab, opts,
                           kinds[whole]))


def _count_below(hist: np.ndarray, x: np.ndarray, top: np.ndarray | None = None) -> np.ndarray:
    """Per row, how many of the histogram's activations lie below x (within a bin, spread evenly in log10);
    all of them from the row's maximum activation `top` on."""
    with np.errstate(divide="ignore"):
        pos = (np.log10(np.maximum(x, 1e-30)) - HIST_LOG10_MIN) * HIST_BINS_PER_DECADE
    pos = np.clip(pos, 0.0, float(HIST_BINS))
    j = np.minimum(np.floor(pos).astype(np.int64), HIST_BINS - 1)
    cum = np.concatenate([np.zeros((len(hist), 1)), np.cumsum(hist, axis=1)], axis=1)
    whole = np.take_along_axis(cum, j[:, None], axis=1)[:, 0]
    part = np.take_along_axis(hist, j[:, None], axis=1)[:, 0] * (pos - j)
    below = np.where(x <= 0, 0.0, whole + part)
    return below if top is None else np.where(x >= top, hist.sum(axis=1), below)


def _interval_examples(state: LayerState, max_act: np.ndarray, opts: RecordOptions, first: int = 0
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per feature and interval, the examples with the smallest priority among reservoir and top windows.

    For each live feature, candidates (top and reservoir windows) are taken in priority order; a window is
    taken once; interval b of (0, maxAct] keeps its first `per_interval` candidates. Vectorised over features.
    """
    F, k = state.n_features, state.top_win.shape[1]
    width = state.top_acts.shape[2]
    live = np.nonzero(max_act > 0)[0]
    if not len(live):
        return (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, width), np.float32), np.zeros((0, 3)))
    top_pri = pair_priority(state.top_win, torch.arange(first, first + F)[:, None])
    pri = torch.cat([torch.where(state.top_win >= 0, top_pri, float("inf")), state.res_pri], dim=1).numpy()[live]
    val = torch.cat([state.top_val, state.res_val], dim=1).numpy()[live]
    win = torch.cat([state.top_win, state.res_win], dim=1).numpy()[live]
    order = np.argsort(pri, axis=1, kind="stable")  # candidates in priority order
    pri, val, win = (np.take_along_axis(a, order, axis=1) for a in (pri, val, win))
    ok = np.isfinite(pri) & (win >= 0)
    # a window is taken once: drop later copies of a window (copies share peak and priority, so the same fate)
    key = np.where(ok, win, -1 - np.arange(win.shape[1])[None, :])
    by_win = np.argsort(key, axis=1, kind="stable")
    sorted_key = np.take_along_axis(key, by_win, axis=1)
    repeat_sorted = np.zeros_like(ok)
    repeat_sorted[:, 1:] = sorted_key[:, 1:] == sorted_key[:, :-1]
    repeat = np.zeros_like(ok)
    np.put_along_axis(repeat, by_win, repeat_sorted, axis=1)
    n_bins = opts.intervals
    edges = max_act[live][:, None] * np.arange(n_bins + 1)[None, :] / n_bins  # (L, n_bins + 1)
    below = (edges[:, None, :] < val.astype(np.float64)[:, :, None]).sum(axis=2)  # searchsorted(side="left")
    b = np.minimum(below - 1, n_bins - 1)
    cand = ok & ~repeat & (b >= 0)
    in_bin = cand[:, :, None] & (b[:, :, None] == np.arange(n_bins)[None, None, :])
    rank = np.take_along_axis(np.cumsum(in_bin, axis=1), np.clip(b, 0, None)[:, :, None], axis=2)[:, :, 0]
    take = cand & (rank <= opts.per_interval)
    rows, cols = np.nonzero(take)  # by feature, then priority: the order rows are written in
    feats, chosen, bins = live[rows], order[rows, cols], b[rows, cols]
    acts = np.where((chosen < k)[:, None],
                    state.top_acts.numpy()[feats, np.minimum(chosen, k - 1)],
                    state.res_acts.numpy()[feats, np.maximum(chosen - k, 0)])
    # binContains: share of the feature's nonzero activations in (lo, hi], read off the histogram with each bin's
    # count spread evenly over its log-width (whole bins by centre gave 0% to a top interval narrower than a bin)
    hist = state.hist.numpy()[feats].astype(np.float64)
    lo, hi = edges[rows, bins], edges[rows, bins + 1]
    top = max_act[feats]  # no activation lies above the feature's maximum, whatever its bin's width
    contains = (_count_below(hist, hi, top) - _count_below(hist, lo, top)) / np.maximum(hist.sum(axis=1), 1)
    return (feats.astype(np.int64), win[rows, cols].astype(np.int64), acts.astype(np.float32),
            np.stack([lo, hi, contains], axis=1).astype(np.float64))


def layer_records(model_id: str, source: str, set_name: str, state: LayerState, tokens_counted: int,
                  bank: dict[int, np.ndarray], vocab: pa.Array, logits: LogitStats, opts: RecordOptions,
                  first: int = 0) -> LayerRecords:
    """Features and example rows of one source; dead features get frac_nonzero 0 and no examples.

    `state` and `logits` may cover a block of the source's features: those from index `first` on."""
    state = state.to("cpu")
    F = state.n_features
    max_act = state.top_val[:, 0].clamp(min=0).nan_to_num(0.0, neginf=0.0).numpy().astype(np.float64)
    vocab_size = len(vocab)

    def strs(ids: torch.Tensor) -> pa.Array:
        flat = pa.array(ids.clamp(max=vocab_size - 1).reshape(-1).numpy())
        return _list_array(pc.take(vocab, flat), ids.shape[1], F)

    def floats(x: torch.Tensor | np.ndarray) -> pa.Array:
        arr = x.numpy() if isinstance(x, torch.Tensor) else x
        return _list_array(pa.array(arr.reshape(-1).astype(np.float64)), arr.shape[1], F)

    centres = np.broadcast_to(hist_centres(), (F, HIST_BINS))
    features = pa.table({
        "modelId": pa.array([model_id] * F, pa.string()),
        "layer": pa.array([source] * F, pa.string()),
        "index": pa.array(np.arange(first, first + F, dtype=np.int64)),
        "sourceSetName": pa.array([set_name] * F, pa.string()),
        "creatorId": pa.array([opts.creator] * F, pa.string()),
        "maxActApprox": pa.array(max_act),
        "frac_nonzero": pa.array(state.nonzero.numpy().astype(np.float64) / max(tokens_counted, 1)),
        "pos_str": strs(logits.top_ids), "pos_values": floats(logits.top_values),
        "neg_str": strs(logits.bottom_ids), "neg_values": floats(logits.bottom_values),
        "freq_hist_data_bar_heights": floats(state.hist.numpy().astype(np.float64)),
        "freq_hist_data_bar_values": floats(np.ascontiguousarray(centres)),
        "logits_hist_data_bar_heights": floats(logits.hist_heights),
        "logits_hist_data_bar_values": floats(logits.hist_values),
    })
    top_mask = state.top_win >= 0
    tf, tj = top_mask.nonzero(as_tuple=True)
    top_wins = state.top_win[tf, tj].numpy()
    top_acts = state.top_acts[tf, tj].numpy()
    top_bins = np.stack([np.full(len(tf), -1.0), max_act[tf.numpy()], np.full(len(tf), -1.0)], axis=1) \
        if len(tf) else np.zeros((0, 3))
    top = _examples(model_id, source, tf.numpy() + first, top_wins, top_acts, top_bins, bank, vocab, opts, "t")
    i_f, i_w, i_a, i_b = _interval_examples(state, max_act, opts, first)
    intervals = _examples(model_id, source, i_f + first, i_w, i_a, i_b, bank, vocab, opts, "i")
    examples, whole = pa.concat_tables([top[0], intervals[0]]), pa.concat_tables([top[1], intervals[1]])
    return LayerRecords(features, examples, whole, pack_table(features, examples, skip=set(whole["index"].to_pylist())))
