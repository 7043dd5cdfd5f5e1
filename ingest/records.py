"""Turn final per-layer statistics into Neuronpedia rows (features, activations) as Arrow tables."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from ingest.feature_state import HIST_BINS, HIST_BINS_PER_DECADE, HIST_LOG10_MIN, LayerState, pair_priority
from ingest.logit_lens import LogitStats


@dataclass
class RecordOptions:
    """How examples are chosen and labelled."""

    intervals: int = 5  # equal-width intervals of (0, max]
    per_interval: int = 5
    data_source: str = ""
    creator: str = "featuredb"


def hist_centres() -> np.ndarray:
    """Activation values at the centres of the fixed log-spaced histogram bins."""
    return 10 ** (HIST_LOG10_MIN + (np.arange(HIST_BINS) + 0.5) / HIST_BINS_PER_DECADE)


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
    ids = [f"fdb:{model_id}:{source}:{f}:{k}{w}" for f, k, w in zip(feats.tolist(), kind.tolist(), wins.tolist())]
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


def _interval_examples(state: LayerState, max_act: np.ndarray, opts: RecordOptions
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per feature and interval, the examples with the smallest priority among reservoir and top windows."""
    F = state.n_features
    top_pri = pair_priority(state.top_win, torch.arange(F)[:, None])
    pri = torch.cat([torch.where(state.top_win >= 0, top_pri, float("inf")), state.res_pri], dim=1).numpy()
    val = torch.cat([state.top_val, state.res_val], dim=1).numpy()
    win = torch.cat([state.top_win, state.res_win], dim=1).numpy()
    acts = torch.cat([state.top_acts, state.res_acts], dim=1).numpy()
    hist = state.hist.numpy()
    centres = hist_centres()
    out_f, out_w, out_a, out_b = [], [], [], []
    n_bins = opts.intervals
    for f in np.nonzero(max_act > 0)[0]:
        edges = max_act[f] * np.arange(n_bins + 1) / n_bins
        ok = np.isfinite(pri[f]) & (win[f] >= 0)
        order = np.argsort(pri[f], kind="stable")
        seen: set[int] = set()
        taken = [0] * n_bins
        total = max(int(hist[f].sum()), 1)
        for j in order:
            if not ok[j] or int(win[f, j]) in seen:
                continue
            b = min(int(np.searchsorted(edges, val[f, j], side="left")) - 1, n_bins - 1)
            if b < 0 or taken[b] >= opts.per_interval:
                continue
            seen.add(int(win[f, j]))
            taken[b] += 1
            lo, hi = edges[b], edges[b + 1]
            contains = float(hist[f][(centres > lo) & (centres <= hi)].sum()) / total
            out_f.append(f)
            out_w.append(win[f, j])
            out_a.append(acts[f, j])
            out_b.append((lo, hi, contains))
    width = state.top_acts.shape[2]
    return (np.array(out_f, dtype=np.int64), np.array(out_w, dtype=np.int64),
            np.stack(out_a) if out_a else np.zeros((0, width), np.float32),
            np.array(out_b, dtype=np.float64).reshape(-1, 3))


def layer_records(model_id: str, source: str, set_name: str, state: LayerState, tokens_counted: int,
                  bank: dict[int, np.ndarray], vocab: pa.Array, logits: LogitStats, opts: RecordOptions
                  ) -> tuple[pa.Table, pa.Table]:
    """(features, activations) tables for one source; dead features get frac_nonzero 0 and no examples."""
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
        "index": pa.array(np.arange(F, dtype=np.int64)),
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
    top = _example_table(model_id, source, tf.numpy(), top_wins, top_acts, top_bins, bank, vocab, opts,
                         np.array(["t"] * len(tf)))
    i_f, i_w, i_a, i_b = _interval_examples(state, max_act, opts)
    intervals = _example_table(model_id, source, i_f, i_w, i_a, i_b, bank, vocab, opts, np.array(["i"] * len(i_f)))
    return features, pa.concat_tables([top, intervals])
