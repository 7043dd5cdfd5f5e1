"""`featuredb ingest` and `featuredb merge`: run the pass (or merge shard states) and write the records."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
from tqdm import tqdm

from featuredb.errors import FeatureDBError
from featuredb.identity import source_id
from featuredb.store import FeatureStore
from ingest.architectures import blocks, d_model, unembedding
from ingest.feature_state import LayerState
from ingest.ingest_pass import IngestConfig, IngestPass, load_state_file, save_state_file
from ingest.logit_lens import logit_stats
from ingest.records import RecordOptions, layer_records
from ingest.sink_positions import SINK_POSITIONS

__all__ = ["IngestConfig", "IngestSummary", "merge_shards", "run_ingest"]


@dataclass
class IngestSummary:
    """What an ingest did."""

    model_id: str
    sources: list[str]
    tokens: int
    windows: int
    live_features: int = 0
    dead_features: int = 0
    seconds: float = 0.0
    corpus: dict[str, int] = field(default_factory=dict)
    state_file: str | None = None
    timings: dict[str, float] = field(default_factory=dict)  # seconds: load, pass, write

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def _vocab(tokenizer: Any) -> pa.Array:
    size = max(len(tokenizer), int(getattr(tokenizer, "vocab_size", 0) or 0))
    return pa.array([tokenizer.decode([i]) for i in range(size)], pa.string())


def write_records(store: FeatureStore, ing: IngestPass, states: dict[int, LayerState], tokens_counted: int,
                  bank: dict[int, np.ndarray], windows: int, progress: bool | None = None) -> tuple[int, int]:
    """Replace each source's features and activations in one transaction; returns (live, dead) features.

    Layers are turned into rows and written one at a time, and each layer's state is dropped from `states` once
    written, so the write holds one layer's rows at a time, not every layer's. (The peak RSS of a 30-layer write
    is DuckDB's staging of the rows, not these tables: 11.3 GB for 30 x 2,048 features either way.)"""
    cfg = ing.cfg
    vocab = _vocab(ing.lm.tokenizer)
    W_U = unembedding(ing.lm.model).detach()
    opts = RecordOptions(intervals=cfg.intervals, per_interval=cfg.per_interval,
                         data_source=cfg.corpus or "installed-docs")
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    model = ing.lm.model
    live = dead = 0
    t0 = ing.tset.transcoders[0]
    model_row = pl.DataFrame([{
        "id": ing.lm.model_id, "displayName": ing.lm.model_id, "displayNameShort": ing.lm.model_id,
        "creatorId": "featuredb", "dimension": d_model(model), "layers": len(blocks(model)),
        "neuronsPerLayer": t0.d_transcoder, "owner": "featuredb", "visibility": "PRIVATE", "instruct": False,
        "inferenceEnabled": True, "defaultSourceSetName": ing.set_name, "createdAt": now, "updatedAt": now,
        "settings": _json({"path": _absolute(ing.lm.path), "dtype": str(ing.lm.dtype).removeprefix("torch."),
                           "architecture": model.config.model_type}),
    }])
    set_row = pl.DataFrame([{
        "modelId": ing.lm.model_id, "name": ing.set_name, "hasDashboards": True, "visibility": "PRIVATE",
        "description": f"{ing.tset.format} transcoders", "type": "transcoder", "creatorName": "featuredb",
        "creatorId": "featuredb", "urls": [], "allowInferenceSearch": True, "createdAt": now,
        "settings": _json({"format": ing.tset.format, "transcoders": [_absolute(p) for p in cfg.transcoders],
                           "layers": ing.tset.layers, **ing.tset.settings}),
    }])
    source_rows = pl.DataFrame([{
        "id": source_id(t.layer, ing.set_name), "modelId": ing.lm.model_id, "setName": ing.set_name,
        "hasDashboards": True, "inferenceEnabled": True, "visibility": "PRIVATE", "creatorId": "featuredb",
        "num_prompts": windows, "num_tokens_in_prompt": cfg.ctx_len, "dataset": opts.data_source,
        "createdAt": now,
        "settings": _json({"layer": t.layer, "path": _absolute(t.path), "format": ing.tset.format, "hook_in": t.hook_in,
                           "hook_out": t.hook_out, "activation": t.activation, "k": t.k,
                           "d_transcoder": t.d_transcoder, "bos_excluded": True, "sink_positions_excluded": SINK_POSITIONS}),
    } for t in ing.tset.transcoders])
    bar = tqdm(total=len(ing.tset.transcoders), unit="layer", desc="write", disable=None if progress is None
               else not progress)
    with store.transaction() as con, bar:
        store.upsert({"models": model_row, "source_sets": set_row, "sources": source_rows}, in_transaction=False)
        for t in ing.tset.transcoders:
            src = source_id(t.layer, ing.set_name)
            state = states.pop(t.layer)
            feats, acts = layer_records(ing.lm.model_id, src, ing.set_name, state, tokens_counted, bank, vocab,
                                        logit_stats(t.W_dec, W_U), opts)
            n_live = int((state.nonzero > 0).sum())
            live, dead = live + n_live, dead + t.d_transcoder - n_live
            del state
            for table in ("features", "activations"):
                con.execute(f'DELETE FROM "{table}" WHERE "modelId" = ? AND "layer" = ?', [ing.lm.model_id, src])
            store.upsert({"features": feats, "activations": acts}, in_transaction=False,
                         scope=(ing.lm.model_id, src))
            del feats, acts
            bar.update(1)
    return live, dead


def _absolute(path: str) -> str:
    """An absolute path when `path` exists locally (so the store can find it from any directory), else as given."""
    p = Path(path)
    return str(p.resolve()) if p.exists() else str(path)


def _json(d: dict[str, Any]) -> str:
    return json.dumps(d, default=str)


def run_ingest(cfg: IngestConfig, db: str | None, *, resume: bool = False, checkpoint: str | None = None,
               checkpoint_every: int = 50, shard: tuple[int, int] | None = None, state_out: str | None = None,
               progress: bool | None = None) -> IngestSummary:
    """Run an ingest; with `shard`, write the shard's state to `state_out` instead of the store."""
    started = time.perf_counter()
    if shard is not None and not (0 <= shard[0] < shard[1]):
        raise FeatureDBError(f"--shard {shard[0]}/{shard[1]}: expected i/n with 0 <= i < n")
    ing = IngestPass(cfg, shard, progress)
    ckpt = Path(checkpoint) if checkpoint else None
    if resume:
        if ckpt is None or not ckpt.is_file():
            raise FeatureDBError(f"--resume: no checkpoint at {ckpt}")
        ing.load(load_state_file(ckpt), ckpt)
    loaded = time.perf_counter()
    ing.run(ckpt, max(1, checkpoint_every))
    passed = time.perf_counter()
    summary = IngestSummary(model_id=ing.lm.model_id, sources=[source_id(l, ing.set_name) for l in ing.tset.layers],
                            tokens=ing.stats.tokens, windows=ing.stats.windows, corpus=ing.stats.as_dict())
    if shard is not None:
        out = Path(state_out or f"data/ingest-shard-{shard[0]}-of-{shard[1]}.pt")
        save_state_file(ing.state_dict(complete=True), out)
        summary.state_file = str(out)
        summary.tokens = ing.progress.windows_seen * cfg.ctx_len
        summary.windows = ing.progress.windows_seen
    else:
        with FeatureStore(db) as store:
            live, dead = write_records(store, ing, ing.states, ing.progress.tokens_counted, ing.bank,
                                       ing.progress.windows_seen, progress)
        summary.live_features, summary.dead_features = live, dead
        if ckpt is not None and ckpt.exists():
            ckpt.unlink()
    summary.seconds = time.perf_counter() - started
    summary.timings = {"load": round(loaded - started, 3), "pass": round(passed - loaded, 3),
                       "write": round(time.perf_counter() - passed, 3)}
    return summary


def merge_shards(paths: list[str], db: str | None, *, device: str | None = None,
                 progress: bool | None = None) -> IngestSummary:
    """Combine finished shard states into the store: the same rows as one unsharded run."""
    started = time.perf_counter()
    saved = [load_state_file(Path(p)) for p in paths]
    for p, s in zip(paths, saved):
        if not s.get("complete"):
            raise FeatureDBError(f"{p}: shard did not finish (resume it with --resume first)")
        if s["config"] != saved[0]["config"]:
            raise FeatureDBError(f"{p}: shard was run with different settings than {paths[0]}")
    n = saved[0]["shard"][1]
    got = sorted(s["shard"][0] for s in saved)
    if got != list(range(n)):
        raise FeatureDBError(f"merge needs shards 0..{n - 1} of {n}; got {got}")
    cfg = IngestConfig(**{**saved[0]["config"], "device": device})
    ing = IngestPass(cfg, None, progress)
    states = {int(k): LayerState.from_state_dict(v, "cpu") for k, v in saved[0]["states"].items()}
    bank: dict[int, np.ndarray] = dict(saved[0]["bank"])
    for s in saved[1:]:
        for k, v in s["states"].items():
            states[int(k)].merge(LayerState.from_state_dict(v, "cpu"))
        bank.update(s["bank"])
    tokens = sum(s["progress"]["tokens_counted"] for s in saved)
    windows = sum(s["progress"]["windows_seen"] for s in saved)
    with FeatureStore(db) as store:
        live, dead = write_records(store, ing, states, tokens, bank, windows, progress)
    return IngestSummary(model_id=ing.lm.model_id, sources=[source_id(l, ing.set_name) for l in ing.tset.layers],
                         tokens=windows * cfg.ctx_len, windows=windows, live_features=live, dead_features=dead,
                         seconds=time.perf_counter() - started, corpus=saved[0]["corpus"])
