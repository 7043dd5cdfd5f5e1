"""`featuredb ingest`: model + transcoders + corpus -> Neuronpedia records in the store (resumable, shardable)."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import polars as pl
import pyarrow as pa
import torch
from tqdm import tqdm

from featuredb.errors import FeatureDBError
from featuredb.identity import source_id
from featuredb.store import FeatureStore
from ingest.architectures import arch_spec, blocks, d_model, unembedding
from ingest.corpus import CorpusStats, expects_bos, iter_documents, iter_windows
from ingest.feature_state import LayerState
from ingest.harvest import Harvester
from ingest.logit_lens import logit_stats
from ingest.model_loading import LoadedModel, load_model
from ingest.records import RecordOptions, layer_records
from ingest.transcoder_formats import TranscoderSet, load_transcoders


@dataclass
class IngestConfig:
    """Everything that decides an ingest's result (and so must match when resuming or merging)."""

    transcoders: list[str]
    model: str | None = None
    corpus: str | None = None
    layers: list[int] | None = None
    model_id: str | None = None
    source_set: str | None = None
    text_field: str = "text"
    text_column: str = "text"
    split: str = "train"
    max_tokens: int | None = None
    ctx_len: int = 128
    batch_size: int = 16
    k: int = 20
    intervals: int = 5
    per_interval: int = 5
    reservoir: int = 25
    dtype: str | None = None
    device: str | None = None

    def fingerprint(self) -> dict[str, Any]:
        """The fields a checkpoint or shard must agree on (device and dtype may differ)."""
        d = asdict(self)
        d.pop("device")
        return d


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


@dataclass
class _Progress:
    batches_done: int = 0
    tokens_counted: int = 0  # tokens whose activations entered the statistics (BOS excluded)
    windows_seen: int = 0


def _save_atomic(obj: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _load_state_file(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise FeatureDBError(f"{path}: not a readable featuredb ingest state ({e.__class__.__name__})") from None


class _Ingest:
    def __init__(self, cfg: IngestConfig, shard: tuple[int, int] | None, progress: bool | None) -> None:
        self.cfg = cfg
        self.shard = shard
        self.show_progress = progress
        # Everything that can be wrong with the inputs is checked before any compute.
        self.tset: TranscoderSet = load_transcoders(cfg.transcoders, cfg.layers)
        self.lm: LoadedModel = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device, model_id=cfg.model_id)
        arch_spec(self.lm.model)
        width, n_layers = d_model(self.lm.model), len(blocks(self.lm.model))
        for t in self.tset.transcoders:
            if t.layer >= n_layers:
                raise FeatureDBError(f"{t.path}: layer {t.layer} but the model has {n_layers} layers")
            if t.d_model != width:
                raise FeatureDBError(f"{t.path}: transcoder d_model {t.d_model} != model d_model {width}")
            t.to(self.lm.device, torch.float32)
        self.set_name = cfg.source_set or self.tset.name
        self.bos = expects_bos(self.lm.tokenizer)
        self.states = {t.layer: LayerState.empty(t.d_transcoder, cfg.k, cfg.reservoir, cfg.ctx_len, self.lm.device)
                       for t in self.tset.transcoders}
        self.bank: dict[int, np.ndarray] = {}
        self.stats = CorpusStats()
        self.progress = _Progress()

    # -- state ------------------------------------------------------------------------------------------

    def state_dict(self, complete: bool) -> dict[str, Any]:
        self._prune_bank()
        return {"featuredb_ingest": 1, "config": self.cfg.fingerprint(), "shard": self.shard, "complete": complete,
                "model_id": self.lm.model_id, "model_path": self.lm.path, "set_name": self.set_name,
                "progress": asdict(self.progress), "corpus": self.stats.as_dict(),
                "states": {layer: s.state_dict() for layer, s in self.states.items()}, "bank": self.bank}

    def load(self, saved: dict[str, Any], path: Path) -> None:
        if saved.get("config") != self.cfg.fingerprint() or saved.get("shard") != self.shard:
            raise FeatureDBError(f"{path}: checkpoint was written with different settings; start without --resume")
        self.progress = _Progress(**saved["progress"])
        self.stats = CorpusStats(**saved["corpus"])
        self.states = {int(k): LayerState.from_state_dict(v, self.lm.device) for k, v in saved["states"].items()}
        self.bank = dict(saved["bank"])

    def _prune_bank(self) -> None:
        keep = set()
        for s in self.states.values():
            keep.update(s.referenced_windows().tolist())
        self.bank = {w: ids for w, ids in self.bank.items() if w in keep}

    # -- the pass ------------------------------------------------------------------------------------------

    def batches(self) -> Iterator[tuple[int, list[list[int]], int]]:
        """(batch number, windows, first window id) in corpus order; tokenisation is repeated on resume."""
        stats = CorpusStats()
        docs = iter_documents(self.cfg.corpus, stats, text_field=self.cfg.text_field,
                              text_column=self.cfg.text_column, split=self.cfg.split)
        batch: list[list[int]] = []
        b = 0
        for w in iter_windows(docs, self.lm.tokenizer, self.cfg.ctx_len, self.cfg.max_tokens, stats):
            batch.append(w)
            if len(batch) == self.cfg.batch_size:
                yield b, batch, b * self.cfg.batch_size
                b, batch = b + 1, []
        if batch:
            yield b, batch, b * self.cfg.batch_size
        self.stats = stats

    def run(self, checkpoint: Path | None, every: int) -> None:
        harvester = Harvester(self.lm.model, self.tset.transcoders)
        total = self.cfg.max_tokens
        bar = tqdm(total=total, unit="tok", unit_scale=True, desc="ingest", smoothing=0.1,
                   disable=None if self.show_progress is None else not self.show_progress)
        try:
            for b, windows, first in self.batches():
                n_tok = len(windows) * self.cfg.ctx_len
                if b < self.progress.batches_done or (self.shard and b % self.shard[1] != self.shard[0]):
                    bar.update(n_tok)
                    continue
                ids = torch.tensor(windows, dtype=torch.long)
                captured = harvester.run(ids.to(self.lm.device))
                win_ids = torch.arange(first, first + len(windows))
                for t in self.tset.transcoders:
                    acts = t.encode(captured[t.layer].float())
                    if self.bos:
                        acts[:, 0, :] = 0  # BOS activations are outliers Neuronpedia hides too
                    self.states[t.layer].update(acts, win_ids)
                for w, row in zip(win_ids.tolist(), ids.numpy()):
                    self.bank[w] = row
                self.progress.batches_done = b + 1
                self.progress.windows_seen += len(windows)
                self.progress.tokens_counted += len(windows) * (self.cfg.ctx_len - (1 if self.bos else 0))
                bar.update(n_tok)
                if checkpoint is not None and self.progress.batches_done % every == 0:
                    _save_atomic(self.state_dict(complete=False), checkpoint)
                elif len(self.bank) > 50_000:
                    self._prune_bank()
        finally:
            bar.close()
            harvester.close()


def _vocab(tokenizer: Any) -> pa.Array:
    size = max(len(tokenizer), int(getattr(tokenizer, "vocab_size", 0) or 0))
    return pa.array([tokenizer.decode([i]) for i in range(size)], pa.string())


def write_records(store: FeatureStore, ing: _Ingest, states: dict[int, LayerState], tokens_counted: int,
                  bank: dict[int, np.ndarray], windows: int) -> tuple[int, int]:
    """Replace each source's features and activations in one transaction; returns (live, dead) features."""
    cfg = ing.cfg
    vocab = _vocab(ing.lm.tokenizer)
    W_U = unembedding(ing.lm.model).detach()
    opts = RecordOptions(intervals=cfg.intervals, per_interval=cfg.per_interval,
                         data_source=cfg.corpus or "installed-docs")
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    model = ing.lm.model
    live = dead = 0
    tables: list[tuple[str, pa.Table, pa.Table]] = []
    for t in ing.tset.transcoders:
        src = source_id(t.layer, ing.set_name)
        lstats = logit_stats(t.W_dec, W_U)
        feats, acts = layer_records(ing.lm.model_id, src, ing.set_name, states[t.layer], tokens_counted, bank,
                                    vocab, lstats, opts)
        n_live = int((states[t.layer].nonzero > 0).sum())
        live, dead = live + n_live, dead + t.d_transcoder - n_live
        tables.append((src, feats, acts))
    t0 = ing.tset.transcoders[0]
    model_row = pl.DataFrame([{
        "id": ing.lm.model_id, "displayName": ing.lm.model_id, "displayNameShort": ing.lm.model_id,
        "creatorId": "featuredb", "dimension": d_model(model), "layers": len(blocks(model)),
        "neuronsPerLayer": t0.d_transcoder, "owner": "featuredb", "visibility": "PRIVATE", "instruct": False,
        "inferenceEnabled": True, "defaultSourceSetName": ing.set_name, "createdAt": now, "updatedAt": now,
        "settings": _json({"path": ing.lm.path, "dtype": str(ing.lm.dtype).removeprefix("torch."),
                           "architecture": model.config.model_type}),
    }])
    set_row = pl.DataFrame([{
        "modelId": ing.lm.model_id, "name": ing.set_name, "hasDashboards": True, "visibility": "PRIVATE",
        "description": f"{ing.tset.format} transcoders", "type": "transcoder", "creatorName": "featuredb",
        "creatorId": "featuredb", "urls": [], "allowInferenceSearch": True, "createdAt": now,
        "settings": _json({"format": ing.tset.format, "transcoders": [str(p) for p in cfg.transcoders],
                           "layers": ing.tset.layers, **ing.tset.settings}),
    }])
    source_rows = pl.DataFrame([{
        "id": source_id(t.layer, ing.set_name), "modelId": ing.lm.model_id, "setName": ing.set_name,
        "hasDashboards": True, "inferenceEnabled": True, "visibility": "PRIVATE", "creatorId": "featuredb",
        "num_prompts": windows, "num_tokens_in_prompt": cfg.ctx_len, "dataset": opts.data_source,
        "createdAt": now,
        "settings": _json({"layer": t.layer, "path": t.path, "format": ing.tset.format, "hook_in": t.hook_in,
                           "hook_out": t.hook_out, "activation": t.activation, "k": t.k,
                           "d_transcoder": t.d_transcoder, "bos_excluded": ing.bos}),
    } for t in ing.tset.transcoders])
    with store.transaction() as con:
        store.upsert({"models": model_row, "source_sets": set_row, "sources": source_rows}, in_transaction=False)
        for src, feats, acts in tables:
            for table in ("features", "activations"):
                con.execute(f'DELETE FROM "{table}" WHERE "modelId" = ? AND "layer" = ?', [ing.lm.model_id, src])
            store.upsert({"features": feats, "activations": acts}, in_transaction=False,
                         scope=(ing.lm.model_id, src))
    return live, dead


def _json(d: dict[str, Any]) -> str:
    import json

    return json.dumps(d, default=str)


def run_ingest(cfg: IngestConfig, db: str | None, *, resume: bool = False, checkpoint: str | None = None,
               checkpoint_every: int = 50, shard: tuple[int, int] | None = None, state_out: str | None = None,
               progress: bool | None = None) -> IngestSummary:
    """Run an ingest; with `shard`, write the shard's state to `state_out` instead of the store."""
    started = time.perf_counter()
    if shard is not None and not (0 <= shard[0] < shard[1]):
        raise FeatureDBError(f"--shard {shard[0]}/{shard[1]}: expected i/n with 0 <= i < n")
    ing = _Ingest(cfg, shard, progress)
    ckpt = Path(checkpoint) if checkpoint else None
    if resume:
        if ckpt is None or not ckpt.is_file():
            raise FeatureDBError(f"--resume: no checkpoint at {ckpt}")
        ing.load(_load_state_file(ckpt), ckpt)
    loaded = time.perf_counter()
    ing.run(ckpt, max(1, checkpoint_every))
    passed = time.perf_counter()
    summary = IngestSummary(model_id=ing.lm.model_id, sources=[source_id(l, ing.set_name) for l in ing.tset.layers],
                            tokens=ing.stats.tokens, windows=ing.stats.windows, corpus=ing.stats.as_dict())
    if shard is not None:
        out = Path(state_out or f"data/ingest-shard-{shard[0]}-of-{shard[1]}.pt")
        _save_atomic(ing.state_dict(complete=True), out)
        summary.state_file = str(out)
        summary.tokens = ing.progress.windows_seen * cfg.ctx_len
        summary.windows = ing.progress.windows_seen
    else:
        with FeatureStore(db) as store:
            live, dead = write_records(store, ing, ing.states, ing.progress.tokens_counted, ing.bank,
                                       ing.progress.windows_seen)
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
    saved = [_load_state_file(Path(p)) for p in paths]
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
    ing = _Ingest(cfg, None, progress)
    states = {int(k): LayerState.from_state_dict(v, "cpu") for k, v in saved[0]["states"].items()}
    bank: dict[int, np.ndarray] = dict(saved[0]["bank"])
    for s in saved[1:]:
        for k, v in s["states"].items():
            states[int(k)].merge(LayerState.from_state_dict(v, "cpu"))
        bank.update(s["bank"])
    tokens = sum(s["progress"]["tokens_counted"] for s in saved)
    windows = sum(s["progress"]["windows_seen"] for s in saved)
    with FeatureStore(db) as store:
        live, dead = write_records(store, ing, states, tokens, bank, windows)
    return IngestSummary(model_id=ing.lm.model_id, sources=[source_id(l, ing.set_name) for l in ing.tset.layers],
                         tokens=windows * cfg.ctx_len, windows=windows, live_features=live, dead_features=dead,
                         seconds=time.perf_counter() - started, corpus=saved[0]["corpus"])
