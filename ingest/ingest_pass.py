"""The ingest pass: load model and transcoders, stream the corpus through them, keep per-feature state."""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from tqdm import tqdm

from featuredb.atomic_write import atomic_output
from featuredb.errors import FeatureDBError
from ingest.architectures import arch_spec, blocks, d_model
from ingest.corpus import CorpusStats, iter_documents, iter_windows
from ingest.feature_state import LayerState
from ingest.graphed_update import StepRunner
from ingest.harvest import Harvester
from ingest.model_loading import LoadedModel, load_model
from ingest.sink_positions import SINK_POSITIONS
from ingest.transcoder import Transcoder
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
class _Progress:
    batches_done: int = 0
    tokens_counted: int = 0  # tokens whose activations entered the statistics (BOS excluded)
    windows_seen: int = 0


def save_state_file(obj: dict[str, Any], path: Path) -> None:
    """Write a checkpoint or shard state atomically (temp file, fsync, rename)."""
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)


def load_state_file(path: Path) -> dict[str, Any]:
    """Read a checkpoint or shard state."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise FeatureDBError(f"{path}: not a readable featuredb ingest state ({e.__class__.__name__})") from None


def _step(t: Transcoder, state: LayerState, x: torch.Tensor, windows: torch.Tensor) -> None:
    """Encode one layer's input (W, T, d_model) and fold the features into its state."""
    acts = t.encode(x.float())
    acts[:, :SINK_POSITIONS, :] = 0  # the attention sink (BOS or not), hidden as Neuronpedia hides BOS
    state.update(acts, windows)


class IngestPass:
    """One ingest over the corpus: checks inputs before compute, then updates per-layer state batch by batch."""

    def __init__(self, cfg: IngestConfig, shard: tuple[int, int] | None, progress: bool | None, *,
                 group: list[int] | None = None) -> None:
        """Load and check model and transcoders; keep state for the layers of `group` (default: all)."""
        self.cfg = cfg
        self.shard = shard
        self.show_progress = progress
        # Everything that can be wrong with the inputs is checked before any compute.
        # each layer's weights are read and checked here, then let go until its pass (`begin`) needs them
        self.tset: TranscoderSet = load_transcoders(cfg.transcoders, cfg.layers, lazy=True)
        self.lm: LoadedModel = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device, model_id=cfg.model_id)
        arch_spec(self.lm.model)
        width, n_layers = d_model(self.lm.model), len(blocks(self.lm.model))
        for t in self.tset.transcoders:
            if t.layer >= n_layers:
                raise FeatureDBError(f"{t.path}: layer {t.layer} but the model has {n_layers} layers")
            if t.d_model != width:
                raise FeatureDBError(f"{t.path}: transcoder d_model {t.d_model} != model d_model {width}")
        self.set_name = cfg.source_set or self.tset.name
        self.begin(self.tset.layers if group is None else group)

    def begin(self, group: list[int]) -> None:
        """Start a fresh pass that keeps state for the layers in `group` only (the others are not encoded); only
        the group's transcoders hold their weights."""
        self.states = {}  # the previous pass's state goes before the new one is allocated
        for t in self.tset.transcoders:
            if t.layer not in set(group):
                t.release()
        self.active = [t.materialise().to(self.lm.device, torch.float32)
                       for t in self.tset.transcoders if t.layer in set(group)]
        cfg = self.cfg
        self.states = {t.layer: LayerState.empty(t.d_transcoder, cfg.k, cfg.reservoir, cfg.ctx_len, self.lm.device)
                       for t in self.active}
        self.bank: dict[int, np.ndarray] = {}
        self.stats = CorpusStats()
        self.progress = _Progress()

    def drop_transcoders(self, layers: list[int]) -> None:
        """Forget finished layers' transcoders (their memory returns before the next pass)."""
        for t in self.tset.transcoders:
            if t.layer in set(layers):
                t.release()
        self.tset.transcoders = [t for t in self.tset.transcoders if t.layer not in set(layers)]
        self.active = [t for t in self.active if t.layer not in set(layers)]

    # -- state ------------------------------------------------------------------------------------------

    def state_dict(self, complete: bool) -> dict[str, Any]:
        """Everything needed to resume or merge: settings, progress, per-layer state and referenced windows."""
        self._prune_bank()
        return {"featuredb_ingest": 1, "config": self.cfg.fingerprint(), "shard": self.shard, "complete": complete,
                "model_id": self.lm.model_id, "model_path": self.lm.path, "set_name": self.set_name,
                "progress": asdict(self.progress), "corpus": self.stats.as_dict(),
                "states": {layer: s.state_dict() for layer, s in self.states.items()}, "bank": self.bank}

    def load(self, saved: dict[str, Any], path: Path) -> None:
        """Continue from a checkpoint written by state_dict() with the same settings."""
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
        """Stream the corpus through model and transcoders, checkpointing every `every` batches."""
        harvester = Harvester.for_transcoders(self.lm.model, self.active)
        self.steps = StepRunner(self.lm.device)  # this pass's states only: its graphs go with it
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
                # made where the state lives: copying it there, or reading it back, would make the CPU wait
                win_ids = torch.arange(first, first + len(windows), device=self.lm.device)
                with self.steps.batch():
                    for t in self.active:
                        self.steps(self.states[t.layer], captured[(t.layer, t.hook_in)], win_ids,
                                   functools.partial(_step, t))
                for w, row in zip(range(first, first + len(windows)), ids.numpy()):
                    self.bank[w] = row
                self.progress.batches_done = b + 1
                self.progress.windows_seen += len(windows)
                self.progress.tokens_counted += len(windows) * (self.cfg.ctx_len - SINK_POSITIONS)
                bar.update(n_tok)
                if checkpoint is not None and self.progress.batches_done % every == 0:
                    save_state_file(self.state_dict(complete=False), checkpoint)
                elif len(self.bank) > 50_000:
                    self._prune_bank()
        finally:
            bar.close()
            harvester.close()
