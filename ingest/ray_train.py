"""`featuredb train --ray`: one Ray task per group of layers; the driver gathers the layer files and the report.

Each task loads the model, harvests and trains its layers exactly as `featuredb train` trains one memory group,
and sends back the layer files and their report rows. The driver writes them into OUT, then writes config.yaml,
measures the spliced-in next-token losses with every layer at hand, and writes the report: OUT looks as a
one-process run with the same layer groups leaves it. A task whose worker dies is run again.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from featuredb.atomic_write import write_bytes_atomically
from ingest.ray_ingest import LOCAL, RETRIES, as_completed, connect_cluster, import_ray
from ingest.train_run import TrainConfig, TrainRun, TrainSummary
from ingest.transcoder_training import TrainSettings

TASK_NAME = "featuredb-train-layers"


def train_group(cfg: dict[str, Any], layers: list[int]) -> dict[str, Any]:
    """Train `layers` in this (worker) process; returns their layer files' bytes and what the report needs."""
    settings = TrainSettings(**cfg.pop("settings"))
    with tempfile.TemporaryDirectory(prefix="featuredb-train-") as tmp:
        run = TrainRun(TrainConfig(**{**cfg, "out": tmp, "layers": layers}, settings=settings), progress=False)
        trained = run.train_layers([layers])
        files = {p.name: p.read_bytes() for p in Path(tmp).glob("layer_*.safetensors")}
    return {"layers": layers, "files": files, **trained}


def _merged(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One `train_layers` result from the groups' results (timings add up: they are worker seconds)."""
    parts = sorted(parts, key=lambda p: p["layers"][0])
    excluded: dict[str, int] = {}
    for p in parts:
        excluded.update({k: v for k, v in p["excluded"].items() if k not in ("sink_tokens", "outlier_tokens")})
    last = parts[-1]  # as in one process, the run-wide counts are those of the last group's harvest
    excluded.update({k: last["excluded"][k] for k in ("sink_tokens", "outlier_tokens") if k in last["excluded"]})
    timings = {k: sum(p["timings"][k] for p in parts) for k in parts[0]["timings"]}
    return {"done": [d for p in parts for d in p["done"]], "excluded": excluded, "timings": timings,
            "trained_tokens": sum(p["trained_tokens"] for p in parts), "train_tokens": last["train_tokens"],
            "test_tokens": last["test_tokens"], "test_windows": last["test_windows"]}


def run_ray_train(cfg: TrainConfig, *, address: str = LOCAL, workers: int | None = None,
                  progress: bool | None = None) -> TrainSummary:
    """Train each layer group (the memory groups of `featuredb train`) as a Ray task, then finish in OUT."""
    ray = import_ray()
    started = time.perf_counter()
    run = TrainRun(cfg, progress=progress)  # checks the inputs before any task starts
    groups = run.groups()
    owned = connect_cluster(ray, address, workers)
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        task = ray.remote(train_group).options(name=TASK_NAME, num_cpus=1, num_gpus=1 if gpus else 0,
                                                max_retries=RETRIES)
        base = {k: v for k, v in asdict(cfg).items() if k not in ("out", "layers")}
        pending = {task.remote(dict(base), group): group for group in groups}
        parts = []
        with tqdm(total=len(run.layers), unit="layer", desc=f"train on ray ({len(groups)} group(s))",
                  disable=None if progress is None else not progress) as bar:
            for group, part in as_completed(ray, pending, lambda group: f"layers {group}"):
                run.out.mkdir(parents=True, exist_ok=True)
                for name, data in part.pop("files").items():
                    write_bytes_atomically(run.out / name, data)
                parts.append(part)
                bar.update(len(group))
    finally:
        if owned:
            ray.shutdown()
    return run.finish(_merged(parts), started)
