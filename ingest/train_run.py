"""`featuredb train`: harvest MLP pairs, train skip-transcoders for many layers at once, checkpoint, save, report."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from featuredb.errors import FeatureDBError
from ingest.architectures import arch_spec, blocks, d_model
from ingest.ingest_pass import load_state_file, save_state_file
from ingest.model_loading import LoadedModel, load_model
from ingest.splice_eval import spliced_losses
from ingest.training_data import LayerPairs, collect_pairs, held_out_windows
from ingest.transcoder_formats import load_transcoders
from ingest.transcoder_training import RESAMPLE_AT, SkipTranscoder, TrainSettings, duplicate_mask
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
    text_column: str = "text"
    split: str = "train"
    train_tokens: int = 40_000
    test_tokens: int = 8_000
    ctx_len: int = 128
    batch_size: int = 16  # windows per forward pass while harvesting
    set_name: str | None = None
    settings: TrainSettings = field(default_factory=TrainSettings)
    memory_gb: float = 6.0  # activation memory per group of layers trained together
    device: str | None = None
    ce_tokens: int = 1024  # held-out tokens for the spliced-in next-token loss (0: skip it)

    def fingerprint(self) -> dict[str, Any]:
        """Fields a checkpoint must agree on."""
        d = asdict(self)
        for k in ("device", "memory_gb", "out"):
            d.pop(k)
        for k, default in (("text_column", "text"), ("split", "train")):  # as before these options existed
            if d[k] == default:
                d.pop(k)
        return d


@dataclass
class LayerReport:
    """Held-out quality of one trained layer (FVU, sparsity, health, and the spliced-in next-token loss)."""

    layer: int
    fvu: float
    skip_only_fvu: float
    l0: float
    dead_fraction: float  # features that fire on none of the held-out tokens and a 16,384-token training sample
    threshold: float
    duplicate_fraction: float = 0.0  # decoder cosine > 0.99 with a lower-numbered feature, from the saved weights
    outlier_tokens: int = 0  # positions flagged as residual-norm outliers at this layer (left out of every layer)
    attempts: int = 1  # trainings needed (a layer that does not beat its skip path is retrained)
    ce_spliced: float | None = None  # held-out next-token loss with this layer's MLP replaced by the transcoder
    ce_zero_ablated: float | None = None  # ... with this layer's MLP output zeroed
    ce_recovered: float | None = None  # (zero-ablated - spliced) / (zero-ablated - clean)


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
    sink_tokens: int = 0  # position-0 tokens left out of training and evaluation
    outlier_tokens: int = 0  # other positions left out (residual norm > 10x the batch median)
    ce_clean: float | None = None
    ce_tokens: int = 0
    all_layers: dict[str, float] = field(default_factory=dict)  # every trained layer spliced in at once

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


DEAD_SAMPLE = 16_384  # training tokens that, with the held-out ones, decide whether a feature is dead
MAX_ATTEMPTS = 3  # trainings per layer before a layer that does not beat its skip path is an error


def _healthy(ev: dict[str, Any], skip_fvu: float) -> bool:
    return math.isfinite(ev["fvu"]) and ev["fvu"] < min(1.0, skip_fvu)


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
        self.diverged: set[int] = set()  # layers whose training loss became non-finite (retrained)

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
                         models: dict[int, SkipTranscoder], opts: dict[int, torch.optim.Optimizer],
                         excluded: dict[str, int]) -> None:
        save_state_file({"featuredb_train": 2, "config": self.cfg.fingerprint(), "done": done, "group": group,
                         "excluded": excluded,
                         "step": step, "models": {k: m.state_dict() for k, m in models.items()},
                         "optimizers": {k: o.state_dict() for k, o in opts.items()}}, self.out / CHECKPOINT)

    # -- the run -----------------------------------------------------------------------------------------

    def run(self, *, resume: bool = False, checkpoint_every: int = 50) -> TrainSummary:
        """Train every requested layer, write circuit-tracer files and the report, and return the summary."""
        t_start = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        saved = self._load_checkpoint() if resume else None
        trained = self.train_layers(self.groups(), saved, checkpoint_every)
        return self.finish(trained, t_start)

    def groups(self) -> list[list[int]]:
        """The layers in groups that share one harvest under the activation-memory budget."""
        per_layer = (self.cfg.train_tokens + self.cfg.test_tokens) * self.d_model * 2 * 2
        return _groups(self.layers, per_layer, self.cfg.memory_gb)

    def train_layers(self, groups: list[list[int]], saved: dict[str, Any] | None = None,
                     checkpoint_every: int = 50) -> dict[str, Any]:
        """Harvest and train each group of layers, writing each layer's file to the output folder."""
        cfg, s = self.cfg, self.cfg.settings
        self.out.mkdir(parents=True, exist_ok=True)
        done: list[dict[str, Any]] = list(saved["done"]) if saved else []
        excluded: dict[str, int] = dict(saved.get("excluded", {})) if saved else {}
        finished = {d["layer"] for d in done}
        timings = {"harvest": 0.0, "train": 0.0, "evaluate": 0.0, "spliced_loss": 0.0}
        trained_tokens = 0
        n_train = n_test = 0
        test_windows: list[list[int]] = []
        for group in groups:
            todo = [layer for layer in group if layer not in finished]
            if not todo:
                continue
            t0 = time.perf_counter()
            pairs, ps = collect_pairs(self.lm, todo, corpus=cfg.corpus, train_tokens=cfg.train_tokens,
                                      test_tokens=cfg.test_tokens, ctx_len=cfg.ctx_len, batch_size=cfg.batch_size,
                                      text_field=cfg.text_field, text_column=cfg.text_column, split=cfg.split,
                                      progress=self.progress)
            n_train, n_test, test_windows = ps.train_tokens, ps.test_tokens, ps.test_windows
            excluded = {"sink_tokens": ps.sink_tokens, "outlier_tokens": ps.outlier_tokens,
                        **{str(k): v for k, v in ps.outliers_by_layer.items()},
                        **{k: v for k, v in excluded.items() if k not in ("sink_tokens", "outlier_tokens")}}
            timings["harvest"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            models, opts = {}, {}
            for layer in todo:
                models[layer], opts[layer] = self._new_model(pairs[layer], s)
            start = 0
            if saved and saved.get("group") == todo:
                for layer in todo:
                    models[layer].load_state_dict(saved["models"][layer])
                    opts[layer].load_state_dict(saved["optimizers"][layer])
                start = saved["step"]
            trained_tokens += self._optimise(todo, pairs, models, opts, start, done, checkpoint_every, excluded)
            timings["train"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            for layer in todo:
                report, extra_tokens = self._finish_layer(layer, models[layer], pairs[layer], excluded)
                trained_tokens += extra_tokens
                done.append(report)
            timings["evaluate"] += time.perf_counter() - t0
            self._save_checkpoint(done, None, 0, {}, {}, excluded)
            del pairs
        return {"done": done, "excluded": excluded, "timings": timings, "trained_tokens": trained_tokens,
                "train_tokens": n_train, "test_tokens": n_test, "test_windows": test_windows}

    def finish(self, trained: dict[str, Any], t_start: float) -> TrainSummary:
        """Write config.yaml, measure the spliced-in losses, write the report and drop the checkpoint."""
        cfg, s = self.cfg, self.cfg.settings
        done, excluded, timings = sorted(trained["done"], key=lambda d: d["layer"]), trained["excluded"], \
            trained["timings"]
        model_name = str(Path(self.lm.path).resolve()) if Path(self.lm.path).is_dir() else self.lm.path
        write_config(self.out, [d["layer"] for d in done], model_name=model_name,
                     scan=f"{self.lm.model_id}/{self.set_name}", activation="jumprelu",
                     extra={"model_id": self.lm.model_id, "set_name": self.set_name,
                            "training": {**s.as_dict(), "train_tokens": cfg.train_tokens,
                                         "test_tokens": cfg.test_tokens, "corpus": cfg.corpus or "installed-docs"}})
        rate = trained["trained_tokens"] / timings["train"] if timings["train"] else 0.0
        summary = TrainSummary(str(self.out), self.lm.model_id, self.set_name, [LayerReport(**d) for d in done],
                               trained["train_tokens"], trained["test_tokens"], rate, timings,
                               sink_tokens=excluded.get("sink_tokens", 0),
                               outlier_tokens=excluded.get("outlier_tokens", 0))
        t0 = time.perf_counter()
        if cfg.ce_tokens:
            self._spliced_loss(summary, trained["test_windows"])
        timings["spliced_loss"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_start
        report = {**summary.as_dict(), "fingerprint": cfg.fingerprint()}
        tmp = self.out / (REPORT + ".tmp")
        tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
        tmp.replace(self.out / REPORT)
        (self.out / CHECKPOINT).unlink(missing_ok=True)
        return summary

    def _new_model(self, p: LayerPairs, s: TrainSettings) -> tuple[SkipTranscoder, torch.optim.Optimizer]:
        m = SkipTranscoder(self.d_model, s)
        m.initialise(p.x_train[:20_000], p.y_train[:20_000])
        return m, torch.optim.Adam(m.parameters(), lr=s.lr)

    def _finish_layer(self, layer: int, m: SkipTranscoder, p: LayerPairs, excluded: dict[str, int]
                      ) -> tuple[dict[str, Any], int]:
        """Calibrate and evaluate a trained layer; retrain it (lower learning rate, new seed) until it beats its
        skip path, or fail naming the layer. Writes the layer file; returns its report and extra tokens trained."""
        s = self.cfg.settings
        extra_tokens = 0
        for attempt in range(1, MAX_ATTEMPTS + 1):
            if attempt > 1:
                self.diverged.discard(layer)
                retry = replace(s, lr=s.lr * 0.25 ** (attempt - 1), seed=s.seed + 1000 * attempt)
                m, opt = self._new_model(p, retry)
                extra_tokens += self._optimise([layer], {layer: p}, {layer: m}, {layer: opt}, 0, [], None, excluded)
            threshold = m.calibrate_threshold(p.x_train[:DEAD_SAMPLE])
            ev = m.evaluate(p.x_test, p.y_test)
            # Dead: fires on none of the held-out tokens and none of the first DEAD_SAMPLE training tokens.
            fired = ev["fired"] | m.fired_in_calibration()
            ev["dead_fraction"] = float((~fired).float().mean())
            skip_fvu = m.evaluate(p.x_test, p.y_test, features=False)["fvu"]
            if layer not in self.diverged and _healthy(ev, skip_fvu):
                break
            if self.progress is not False:
                why = "diverged" if layer in self.diverged else \
                    f"held-out FVU {ev['fvu']:.3g} does not beat its skip path ({skip_fvu:.3g})"
                tqdm.write(f"layer {layer}: {why}; retraining with a lower learning rate")
        else:
            why = "training diverged" if layer in self.diverged else \
                f"held-out FVU {ev['fvu']:.3g} is not below its skip path's {skip_fvu:.3g} (or 1)"
            raise FeatureDBError(f"layer {layer}: {why} after {MAX_ATTEMPTS} attempts; layer {layer} was not saved")
        t = m.export(layer)
        write_layer(self.out, t)
        dup = float(duplicate_mask(t.W_dec, s.duplicate_cosine).float().mean())
        report = LayerReport(layer, ev["fvu"], skip_fvu, ev["l0"], ev["dead_fraction"], threshold, dup,
                             excluded.get(str(layer), 0), attempt)
        return asdict(report), extra_tokens

    def _spliced_loss(self, summary: TrainSummary, windows: list[list[int]]) -> None:
        cfg = self.cfg
        if not windows:
            windows = held_out_windows(self.lm.tokenizer, cfg.corpus, text_field=cfg.text_field,
                                       text_column=cfg.text_column, split=cfg.split, ctx_len=cfg.ctx_len,
                                       train_tokens=cfg.train_tokens, test_tokens=cfg.test_tokens)
        n = max(1, cfg.ce_tokens // cfg.ctx_len)
        ids = torch.tensor(windows[:n], dtype=torch.long, device=self.lm.device)
        tset = load_transcoders([self.out])
        transcoders = {t.layer: t.to(self.lm.device, torch.float32) for t in tset.transcoders}
        res = spliced_losses(self.lm.model, ids, transcoders)
        summary.ce_clean, summary.ce_tokens, summary.all_layers = res.clean, res.tokens, res.all_layers
        for r in summary.layers:
            row = res.layers[r.layer]
            r.ce_spliced, r.ce_zero_ablated, r.ce_recovered = row["spliced"], row["zero_ablated"], row["recovered"]

    def _optimise(self, todo: list[int], pairs: dict[int, LayerPairs], models: dict[int, SkipTranscoder],
                  opts: dict[int, torch.optim.Optimizer], start: int, done: list[dict[str, Any]],
                  checkpoint_every: int | None, excluded: dict[str, int]) -> int:
        """Epochs over the cached pairs for every layer of `todo` in lock step; returns tokens x layers trained."""
        s = models[todo[0]].s
        n = min(len(pairs[layer].x_train) for layer in todo)
        per_epoch = max(1, n // s.batch_tokens)
        total = per_epoch * s.epochs
        resample_at = {max(1, int(total * f)) for f in RESAMPLE_AT} if s.resample else set()
        bar = tqdm(total=total * s.batch_tokens * len(todo), initial=start * s.batch_tokens * len(todo), unit="tok",
                   unit_scale=True, desc=f"train layers {todo[0]}-{todo[-1]}" if len(todo) > 1 else
                   f"train layer {todo[0]}", disable=None if self.progress is None else not self.progress)
        running: dict[int, float] = {}
        diverged = self.diverged
        perm = torch.empty(0, dtype=torch.long)
        try:
            for step in range(start, total):
                epoch, i = divmod(step, per_epoch)
                if i == 0 or step == start:
                    perm = torch.randperm(n, generator=torch.Generator().manual_seed(s.seed * 1000 + epoch))
                idx = perm[i * s.batch_tokens:(i + 1) * s.batch_tokens]
                lr = s.lr * min(1.0, (total - step) / (0.2 * total))  # constant, then linear decay over the last 20%
                for layer in todo:
                    if layer in diverged:
                        continue
                    m, opt = models[layer], opts[layer]
                    p = pairs[layer]
                    if step in resample_at:
                        g = torch.Generator().manual_seed(s.seed * 7919 + step)
                        sample = torch.randint(n, (min(n, 4 * s.batch_tokens),), generator=g)
                        m.resample(p.x_train[sample], p.y_train[sample], opt, seed=s.seed * 7919 + step)
                    for group in opt.param_groups:
                        group["lr"] = lr
                    loss, parts = m.loss(p.x_train[idx], p.y_train[idx])
                    if not math.isfinite(parts["fvu"]):
                        diverged.add(layer)  # _finish_layer sees it and retrains this layer
                        continue
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if s.clip_grad:
                        torch.nn.utils.clip_grad_norm_(m.parameters(), s.clip_grad)
                    opt.step()
                    m.normalise_decoder()
                    running[layer] = parts["fvu"] if layer not in running else 0.95 * running[layer] + 0.05 * parts["fvu"]
                bar.update(s.batch_tokens * len(todo))
                if running:
                    bar.set_postfix(fvu=f"{sum(running.values()) / len(running):.3f}", epoch=epoch + 1)
                if checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < total:
                    self._save_checkpoint(done, todo, step + 1, models, opts, excluded)
        finally:
            bar.close()
        return (total - start) * s.batch_tokens * len(todo)
