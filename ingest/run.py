"""`featuredb ingest` and `featuredb merge`: run the pass (or merge shard states) and write the records."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import numpy as np
import polars as pl
import pyarrow as pa
import torch
from tqdm import tqdm

from featuredb.errors import FeatureDBError
from featuredb.identity import source_id
from featuredb.store.feature_store import FeatureStore, default_db_path
from featuredb.store.reads import ModelSettings, SourceSetSettings, SourceSettings
from ingest.architectures import blocks, d_model, unembedding
from ingest.feature_state import LayerState
from ingest.ingest_pass import IngestConfig, IngestPass, load_state_file, save_state_file
from ingest.logit_lens import logit_stats
from ingest.memory_budget import (GB, RECORD_BLOCK, MemoryPlan, current_rss_bytes, default_memory_gb, plan_memory,
                                  transient_bytes)
from ingest.record_spill import RecordSpill
from ingest.records import RecordOptions, layer_records, window_table
from ingest.sink_positions import SINK_POSITIONS

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

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
    timings: dict[str, float] = field(default_factory=dict)  # seconds: load, pass, write (records, commit, reindex)
    memory: dict[str, Any] = field(default_factory=dict)  # the memory plan: budget, passes, layer groups (bytes)
    ray: dict[str, Any] = field(default_factory=dict)  # with --ray: cluster, shards run and reused, tokens/s

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def _vocab(tokenizer: PreTrainedTokenizerBase) -> pa.Array:
    size = max(len(tokenizer), int(getattr(tokenizer, "vocab_size", 0) or 0))
    return pa.array([tokenizer.decode([i]) for i in range(size)], pa.string())


def store_rows(ing: IngestPass) -> dict[str, pl.DataFrame]:
    """The model, source-set and source rows of this ingest (taken before any transcoder is dropped)."""
    cfg = ing.cfg
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    model = ing.lm.model
    t0 = ing.tset.transcoders[0]
    data_source = cfg.corpus or "installed-docs"
    model_row = pl.DataFrame([{
        "id": ing.lm.model_id, "displayName": ing.lm.model_id, "displayNameShort": ing.lm.model_id,
        "creatorId": "featuredb", "dimension": d_model(model), "layers": len(blocks(model)),
        "neuronsPerLayer": t0.d_transcoder, "owner": "featuredb", "visibility": "PRIVATE", "instruct": False,
        "inferenceEnabled": True, "defaultSourceSetName": ing.set_name, "createdAt": now, "updatedAt": now,
        "settings": ModelSettings(path=_absolute(ing.lm.path), dtype=str(ing.lm.dtype).removeprefix("torch."),
                                  architecture=model.config.model_type).to_json(),
    }])
    set_row = pl.DataFrame([{
        "modelId": ing.lm.model_id, "name": ing.set_name, "hasDashboards": True, "visibility": "PRIVATE",
        "description": f"{ing.tset.format} transcoders", "type": "transcoder", "creatorName": "featuredb",
        "creatorId": "featuredb", "urls": [], "allowInferenceSearch": True, "createdAt": now,
        "settings": SourceSetSettings(format=ing.tset.format, transcoders=tuple(_absolute(p) for p in cfg.transcoders),
                                      layers=tuple(ing.tset.layers), extra=dict(ing.tset.settings)).to_json(),
    }])
    source_rows = pl.DataFrame([{
        "id": source_id(t.layer, ing.set_name), "modelId": ing.lm.model_id, "setName": ing.set_name,
        "hasDashboards": True, "inferenceEnabled": True, "visibility": "PRIVATE", "creatorId": "featuredb",
        "num_prompts": 0, "num_tokens_in_prompt": cfg.ctx_len, "dataset": data_source,
        "createdAt": now,
        "settings": SourceSettings(layer=t.layer, path=_absolute(t.path), format=ing.tset.format, hook_in=t.hook_in,
                                   hook_out=t.hook_out, activation=t.activation, k=t.k, d_transcoder=t.d_transcoder,
                                   bos_excluded=True, sink_positions_excluded=SINK_POSITIONS).to_json(),
    } for t in ing.tset.transcoders])
    return {"models": model_row, "source_sets": set_row, "sources": source_rows}


def spill_records(spill: RecordSpill, ing: IngestPass, states: dict[int, LayerState], tokens_counted: int,
                  bank: dict[int, np.ndarray], progress: bool | None = None) -> tuple[int, int]:
    """Turn each layer's state into rows, `RECORD_BLOCK` features at a time, into `spill`; returns (live, dead).

    Each layer's state is dropped from `states` once its rows are on disk."""
    cfg = ing.cfg
    vocab = _vocab(ing.lm.tokenizer)
    W_U = unembedding(ing.lm.model).detach()
    opts = RecordOptions(intervals=cfg.intervals, per_interval=cfg.per_interval,
                         data_source=cfg.corpus or "installed-docs")
    live = dead = 0
    layers = [t for t in ing.tset.transcoders if t.layer in states]
    bar = tqdm(total=sum(t.d_transcoder for t in layers), unit="feature", unit_scale=True, desc="records",
               disable=None if progress is None else not progress)
    with bar:
        for t in layers:
            src = source_id(t.layer, ing.set_name)
            state = states.pop(t.layer).to("cpu")
            released = not t.loaded  # a merge's transcoders: read one layer's weights at a time
            t.materialise().to(ing.lm.device, torch.float32)
            for lo in range(0, t.d_transcoder, RECORD_BLOCK):
                hi = min(lo + RECORD_BLOCK, t.d_transcoder)
                spill.add(src, layer_records(ing.lm.model_id, src, ing.set_name, state.rows(lo, hi), tokens_counted,
                                             bank, vocab, logit_stats(t.W_dec[lo:hi], W_U), opts, first=lo))
                bar.update(hi - lo)
            n_live = int((state.nonzero > 0).sum())
            live, dead = live + n_live, dead + t.d_transcoder - n_live
            del state
            if released:
                t.release()
    spill.add_windows(window_table(bank, np.array(sorted(spill.windows_used), np.int64), vocab))
    return live, dead


def commit_records(store: FeatureStore, rows: dict[str, pl.DataFrame], spill: RecordSpill, model_id: str,
                   windows: int) -> None:
    """Write the model, set and source rows and replace every spilled source's rows, in one transaction."""
    rows = {**rows, "sources": rows["sources"].with_columns(pl.lit(windows).alias("num_prompts"))}
    with store.transaction():
        store.upsert(rows, in_transaction=False)
        spill.commit(store, model_id)


def write_records(store: FeatureStore, ing: IngestPass, states: dict[int, LayerState], tokens_counted: int,
                  bank: dict[int, np.ndarray], windows: int, progress: bool | None = None) -> tuple[int, int]:
    """Replace each source's features and activations in one transaction; returns (live, dead) features."""
    with RecordSpill(store.path) as spill:
        live_dead = spill_records(spill, ing, states, tokens_counted, bank, progress)
        commit_records(store, store_rows(ing), spill, ing.lm.model_id, windows)
    return live_dead


def _absolute(path: str) -> str:
    """An absolute path when `path` exists locally (so the store can find it from any directory), else as given."""
    p = Path(path)
    return str(p.resolve()) if p.exists() else str(path)


def run_ingest(cfg: IngestConfig, db: str | None, *, resume: bool = False, checkpoint: str | None = None,
               checkpoint_every: int = 50, shard: tuple[int, int] | None = None, state_out: str | None = None,
               progress: bool | None = None, memory_gb: float | None = None) -> IngestSummary:
    """Run an ingest under a memory budget; with `shard`, write the shard's state to `state_out` instead of the store.

    When the state of every layer does not fit `memory_gb`, layers are split into passes over the corpus."""
    started = time.perf_counter()
    if shard is not None and not (0 <= shard[0] < shard[1]):
        raise FeatureDBError(f"--shard {shard[0]}/{shard[1]}: expected i/n with 0 <= i < n")
    ing = IngestPass(cfg, shard, progress, group=[])
    plan = _plan(ing, memory_gb)
    if plan.passes > 1 and (shard is not None or resume):
        raise FeatureDBError(f"--memory-gb {plan.budget / GB:g}: the state needs {plan.passes} passes, which "
                             f"{'--shard' if shard is not None else '--resume'} does not support; raise --memory-gb "
                             f"or split the layers with --layers")
    if progress is not False and plan.passes > 1:
        click.echo(plan.describe(), err=True)
    ckpt = Path(checkpoint) if checkpoint and plan.passes == 1 else None  # a multi-pass run is not checkpointed
    db_path = str(db or default_db_path())
    rows = store_rows(ing)
    summary = IngestSummary(model_id=ing.lm.model_id, sources=[source_id(l, ing.set_name) for l in ing.tset.layers],
                            tokens=0, windows=0, memory=plan.as_dict())
    loaded = time.perf_counter()
    pass_s = write_s = 0.0
    with RecordSpill(db_path) as spill:
        for n, group in enumerate(plan.groups):
            t0 = time.perf_counter()
            ing.begin(group)
            if resume and n == 0:
                if ckpt is None or not ckpt.is_file():
                    raise FeatureDBError(f"--resume: no checkpoint at {ckpt}")
                ing.load(load_state_file(ckpt), ckpt)
            ing.run(ckpt, max(1, checkpoint_every))
            t1 = time.perf_counter()
            pass_s += t1 - t0
            summary.tokens, summary.windows = ing.stats.tokens, ing.stats.windows
            summary.corpus = ing.stats.as_dict()
            if shard is not None:
                break
            live, dead = spill_records(spill, ing, ing.states, ing.progress.tokens_counted, ing.bank, progress)
            summary.live_features += live
            summary.dead_features += dead
            ing.drop_transcoders(group)
            write_s += time.perf_counter() - t1
        t1 = time.perf_counter()
        if shard is not None:
            out = Path(state_out or f"data/ingest-shard-{shard[0]}-of-{shard[1]}.pt")
            save_state_file(ing.state_dict(complete=True), out)
            summary.state_file = str(out)
            summary.tokens = ing.progress.windows_seen * cfg.ctx_len
            summary.windows = ing.progress.windows_seen
        else:
            with FeatureStore(db_path) as store:
                store.limit_memory(plan.duckdb_limit)
                commit_records(store, rows, spill, ing.lm.model_id, ing.progress.windows_seen)
                committed = time.perf_counter()
            if ckpt is not None and ckpt.exists():
                ckpt.unlink()
    records_s = write_s
    write_s += time.perf_counter() - t1
    summary.seconds = time.perf_counter() - started
    summary.timings = {"load": round(loaded - started, 3), "pass": round(pass_s, 3), "write": round(write_s, 3)}
    if shard is None:  # the write's parts: rows to Parquet, the transaction, the search refresh on close
        summary.timings.update({"records": round(records_s, 3), "commit": round(committed - t1, 3),
                                "reindex": round(time.perf_counter() - committed, 3)})
    return summary


def _plan(ing: IngestPass, memory_gb: float | None) -> MemoryPlan:
    """The memory plan of this ingest, from the process's memory with the model loaded; each layer's transcoder
    weights count with its state, since a pass holds only its own layers' weights."""
    cfg = ing.cfg
    widths = {t.layer: t.d_transcoder for t in ing.tset.transcoders}
    weights = {t.layer: t.weight_bytes() for t in ing.tset.transcoders}
    transient = transient_bytes(widths, batch=cfg.batch_size, ctx_len=cfg.ctx_len, k=cfg.k, reservoir=cfg.reservoir,
                                vocab=len(ing.lm.tokenizer), d_model=d_model(ing.lm.model))
    return plan_memory(memory_gb if memory_gb is not None else default_memory_gb(), widths,
                       fixed=current_rss_bytes(), transient=transient, k=cfg.k, reservoir=cfg.reservoir,
                       ctx_len=cfg.ctx_len, weights=weights)


def merge_shards(paths: list[str], db: str | None, *, device: str | None = None,
                 progress: bool | None = None) -> IngestSummary:
    """Combine finished shard states into the store: the same rows as one unsharded run."""
    started = time.perf_counter()
    states: dict[int, LayerState] = {}  # shard states are folded in one at a time: two in memory at most
    bank: dict[int, np.ndarray] = {}
    got, tokens, windows = [], 0, 0
    head: dict[str, Any] = {}
    for p in paths:
        s = load_state_file(Path(p))
        if not s.get("complete"):
            raise FeatureDBError(f"{p}: shard did not finish (resume it with --resume first)")
        head = head or {"config": s["config"], "n": s["shard"][1], "corpus": s["corpus"]}
        if s["config"] != head["config"] or s["shard"][1] != head["n"]:
            raise FeatureDBError(f"{p}: shard was run with different settings than {paths[0]}")
        got.append(s["shard"][0])
        for k, v in s["states"].items():
            state = LayerState.from_state_dict(v, "cpu")
            if int(k) in states:
                states[int(k)].merge(state)
            else:
                states[int(k)] = state
        bank.update(s["bank"])
        tokens += s["progress"]["tokens_counted"]
        windows += s["progress"]["windows_seen"]
        del s
    n = head["n"]
    if sorted(got) != list(range(n)):
        raise FeatureDBError(f"merge needs shards 0..{n - 1} of {n}; got {sorted(got)}")
    cfg = IngestConfig(**{**head["config"], "device": device})
    ing = IngestPass(cfg, None, progress, group=[])
    with FeatureStore(db) as store:
        live, dead = write_records(store, ing, states, tokens, bank, windows, progress)
    return IngestSummary(model_id=ing.lm.model_id, sources=[source_id(l, ing.set_name) for l in ing.tset.layers],
                         tokens=windows * cfg.ctx_len, windows=windows, live_features=live, dead_features=dead,
                         seconds=time.perf_counter() - started, corpus=head["corpus"])
