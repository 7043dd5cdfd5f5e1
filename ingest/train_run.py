"""`featuredb train`: harvest MLP pairs, train skip-transcoders for many layers at once, checkpoint, save, report."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from featuredb.errors import FeatureDBError
from ingest.architectures import arch_spec, blocks, d_model
from ingest.ingest_pass import load_state_file, save_state_file
from ingest.model_loading import LoadedModel, load_model
from ingest.training_data import LayerPairs, collect_pairs
from ingest.transcoder_training import SkipTranscoder, TrainSettings
from ingest.transcoder_writer import write_config, write_layer

CHECKPOINT = "train-checkpoint.pt"
REPORT = "training_report.json"


@dataclass
class TrainConfig:
    """Everything that decides a training run's result (and so must match on --resume)."""

    out: str
    model: str | None = None
    layers: list[int] | None = None  # None: every layer
    corpus: str | None = None
    text_field: str = "text"
    train_tokens: int = 40_000
    test_tokens: int = 8_000
    ctx_len: int = 128
    batch_size: int = 16  # windows per forward pass while harvesting
    set_name: str | None = None
    settings: TrainSettings = field(default_factory=TrainSettings)
    memory_gb: float = 6.0  # activation memory per group of layers trained together
    device: str | None = None

    def fingerprint(self) -> dict[str, Any]:
        """Fields a checkpoint must agree on."""
        d = asdict(self)
        for k in ("device", "memory_gb", "out"):
            d.pop(k)
        return d


@dataclass
class LayerReport:
    """Held-out quality of one trained layer."""

    layer: int
    fvu: float
    skip_only_fvu: float
    l0: float
    dead_fraction: float
    threshold: float


@dataclass
class TrainSummary:
    """What a training run produced."""

    out: str
    model_id: str
    set_name: str
    layers: list[LayerReport]
    train_tokens: int
    test_tokens: int
    tokens_per_second: float  # training tokens x layers per second of optimisation
    timings: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def finished_report(cfg: TrainConfig) -> dict[str, Any] | None:
    """The training report in cfg.out when a finished run there used exactly these settings, else None."""
    path = Path(cfg.out) / REPORT
    if not path.exists():
        return None
    report = json.loads(path.read_text())
    return report if report.get("fingerprint") == json.loads(json.dumps(cfg.fingerprint(), default=str)) else None


def _groups(layers: list[int], per_layer_bytes: int, budget: float) -> list[list[int]]:
    size = max(1, int(budget * 2**30 // max(1, per_layer_bytes)))
    return [layers[i:i + size] for i in range(0, len(layers), size)]


def _skip_only_fvu(m: SkipTranscoder, p: LayerPairs) -> float:
    saved = m.batch_threshold.clone(), m.log_threshold.detach().clone()
    with torch.no_grad():
        m.batch_threshold.fill_(float("inf"))
        m.log_threshold.fill_(float("inf"))
        fvu = m.evaluate(p.x_test, p.y_test)["fvu"]
        m.batch_threshold.copy_(saved[0])
        m.log_threshold.copy_(saved[1])
    return fvu


class TrainRun:
    """One `featuredb train`: inputs are checked before any compute; groups of layers share one harvest."""

    def __init__(self, cfg: TrainConfig, progress: bool | None = None) -> None:
        self.cfg = cfg
        self.progress = progress
        s = cfg.settings
        if s.activation not in ("topk", "jumprelu"):
            raise FeatureDBError(f"--activation {s.activation!r}: expected topk or jumprelu")
        if s.k >= s.n_features:
            raise FeatureDBError(f"--k {s.k} must be smaller than --features {s.n_features}")
        self.lm: LoadedModel = load_model(cfg.model, device=cfg.device, dtype="float32")
        arch_spec(self.lm.model)
        n_layers = len(blocks(self.lm.model))
        self.layers = sorted(set(cfg.layers)) if cfg.layers else list(range(n_layers))
        bad = [layer for layer in self.layers if not 0 <= layer < n_layers]
        if bad:
            raise FeatureDBError(f"--layers: {bad} out of range; the model has layers 0-{n_layers - 1}")
        self.d_model = d_model(self.lm.model)
        self.out = Path(cfg.out)
        width = f"{s.n_features // 1024}k" if s.n_features % 1024 == 0 else str(s.n_features)
        self.set_name = cfg.set_name or f"featuredb-skip-{width}"

    # -- checkpoints -------------------------------------------------------------------------------------

    def _load_checkpoint(self) -> dict[str, Any] | None:
        path = self.out / CHECKPOINT
        if not path.exists():
            return None
        saved = load_state_file(path)
        if saved.get("config") != self.cfg.fingerprint():
            raise FeatureDBError(f"{path}: checkpoint was written with different settings; start without --resume")
        return saved

    def _save_checkpoint(self, done: list[dict[str, Any]], group: list[int] | None, step: int,
                         models: dict[int, SkipTranscoder], opts: dict[int, torch.optim.Optimizer]) -> None:
        save_state_file({"featuredb_train": 1, "config": self.cfg.fingerprint(), "done": done, "group": group,
                         "step": step, "models": {k: m.state_dict() for k, m in models.items()},
                         "optimizers": {k: o.state_dict() for k, o in opts.items()}}, self.out / CHECKPOINT)

    # -- the run -----------------------------------------------------------------------------------------

    def run(self, *, resume: bool = False, checkpoint_every: int = 50) -> TrainSummary:
        """Train every requested layer, write circuit-tracer files and the report, and return the summary."""
        cfg, s = self.cfg, self.cfg.settings
        t_start = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        saved = self._load_checkpoint() if resume else None
        done: list[dict[str, Any]] = list(saved["done"]) if saved else []
        finished = {d["layer"] for d in done}
        per_layer = (cfg.train_tokens + cfg.test_tokens) * self.d_model * 2 * 2
        timings = {"harvest": 0.0, "train": 0.0, "evaluate": 0.0}
        trained_tokens = 0
        n_train = n_test = 0
        for group in _groups(self.layers, per_layer, cfg.memory_gb):
            todo = [layer for layer in group if layer not in finished]
            if not todo:
                continue
            t0 = time.perf_counter()
            pairs, ps = collect_pairs(self.lm, todo, corpus=cfg.corpus, train_tokens=cfg.train_tokens,
                                      test_tokens=cfg.test_tokens, ctx_len=cfg.ctx_len, batch_size=cfg.batch_size,
                                      text_field=cfg.text_field, progress=self.progress)
            n_train, n_test = ps.train_tokens, ps.test_tokens
            timings["harvest"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            models, opts = {}, {}
            for layer in todo:
                m = SkipTranscoder(self.d_model, s)
                m.initialise(pairs[layer].x_train[:20_000], pairs[layer].y_train[:20_000])
                models[layer] = m
                opts[layer] = torch.optim.Adam(m.parameters(), lr=s.lr)
            start = 0
            if saved and saved.get("group") == todo:
                for layer in todo:
                    models[layer].load_state_dict(saved["models"][layer])
                    opts[layer].load_state_dict(saved["optimizers"][layer])
                start = saved["step"]
            trained_tokens += self._optimise(todo, pairs, models, opts, start, done, checkpoint_every)
            timings["train"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            for layer in todo:
                m, p = models[layer], pairs[layer]
                threshold = m.calibrate_threshold(p.x_train[:16_384])
                ev = m.evaluate(p.x_test, p.y_test)
                write_layer(self.out, m.export(layer))
                done.append(asdict(LayerReport(layer, ev["fvu"], _skip_only_fvu(m, p), ev["l0"],
                                               ev["dead_fraction"], threshold)))
            timings["evaluate"] += time.perf_counter() - t0
            self._save_checkpoint(done, None, 0, {}, {})
            del pairs
        done.sort(key=lambda d: d["layer"])
        write_config(self.out, [d["layer"] for d in done], model_name=self.lm.path,
                     scan=f"{self.lm.model_id}/{self.set_name}", activation="jumprelu",
                     extra={"model_id": self.lm.model_id, "set_name": self.set_name,
                            "training": {**s.as_dict(), "train_tokens": cfg.train_tokens,
                                         "test_tokens": cfg.test_tokens, "corpus": cfg.corpus or "installed-docs"}})
        summary = TrainSummary(str(self.out), self.lm.model_id, self.set_name, [LayerReport(**d) for d in done],
                               n_train, n_test, trained_tokens / timings["train"] if timings["train"] else 0.0,
                               {**timings, "total": time.perf_counter() - t_start})
        report = {**summary.as_dict(), "fingerprint": cfg.fingerprint()}
        (self.out / REPORT).write_text(json.dumps(report, indent=2, default=str) + "\n")
        (self.out / CHECKPOINT).unlink(missing_ok=True)
        return summary

    def _optimise(self, todo: list[int], pairs: dict[int, LayerPairs], models: dict[int, SkipTranscoder],
                  opts: dict[int, torch.optim.Optimizer], start: int, done: list[dict[str, Any]],
                  checkpoint_every: int) -> int:
        s = self.cfg.settings
        n = min(len(pairs[layer].x_train) for layer in todo)
        per_epoch = max(1, n // s.batch_tokens)
        total = per_epoch * s.epochs
        bar = tqdm(total=total * s.batch_tokens * len(todo), initial=start * s.batch_tokens * len(todo), unit="tok",
                   unit_scale=True, desc=f"train layers {todo[0]}-{todo[-1]}" if len(todo) > 1 else
                   f"train layer {todo[0]}", disable=None if self.progress is None else not self.progress)
        running: dict[int, float] = {}
        perm = torch.empty(0, dtype=torch.long)
        try:
            for step in range(start, total):
                epoch, i = divmod(step, per_epoch)
                if i == 0 or step == start:
                    perm = torch.randperm(n, generator=torch.Generator().manual_seed(s.seed * 1000 + epoch))
                idx = perm[i * s.batch_tokens:(i + 1) * s.batch_tokens]
                lr = s.lr * min(1.0, (total - step) / (0.2 * total))  # constant, then linear decay over the last 20%
                for layer in todo:
                    m, opt = models[layer], opts[layer]
                    for g in opt.param_groups:
                        g["lr"] = lr
                    loss, parts = m.loss(pairs[layer].x_train[idx], pairs[layer].y_train[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    m.normalise_decoder()
                    running[layer] = parts["fvu"] if layer not in running else 0.95 * running[layer] + 0.05 * parts["fvu"]
                bar.update(s.batch_tokens * len(todo))
                bar.set_postfix(fvu=f"{sum(running.values()) / len(running):.3f}", epoch=epoch + 1)
                if (step + 1) % checkpoint_every == 0 and step + 1 < total:
                    self._save_checkpoint(done, todo, step + 1, models, opts)
        finally:
            bar.close()
        return (total - start) * s.batch_tokens * len(todo)
