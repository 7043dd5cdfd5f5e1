"""`featuredb ingest --ray`: the corpus split into shards run as Ray tasks, their states merged exactly, one write.

Shard i of n takes batch b when b % n == i (the same split as `featuredb ingest --shard i/n`), so the merged
store equals a one-process ingest row for row. Each finished shard's state comes back through Ray's object
store and is written atomically to the state folder at once; `--resume` reuses the states already there, so a
restarted driver runs only the shards that had not finished. A task whose worker dies is retried by Ray.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator

import click
from tqdm import tqdm

from featuredb.atomic_write import write_bytes_atomically
from featuredb.errors import FeatureDBError
from ingest.ingest_pass import IngestConfig, load_state_file
from ingest.run import IngestSummary, merge_shards, run_ingest

LOCAL = "local"  # `--ray` without an address: start a Ray cluster on this machine
TASK_NAME = "featuredb-ingest-shard"  # the process title of a worker running a shard (`ray::featuredb-...`)
RETRIES = 3  # a shard whose worker process dies is run again this many times


def import_ray() -> Any:
    """The ray module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise FeatureDBError("--ray needs Ray: pip install 'featuredb[ray]'") from None
    return ray


def state_folder(cfg: IngestConfig, shards: int, base: str | Path = "data/ray-ingest") -> Path:
    """Where the shard states of this ingest (its settings and shard count) are kept until the merge."""
    digest = hashlib.sha256(json.dumps(cfg.fingerprint(), sort_keys=True, default=str).encode()).hexdigest()[:12]
    return Path(base) / f"{digest}-{shards}"


def shard_path(folder: Path, i: int, n: int) -> Path:
    """The state file of shard i of n."""
    return folder / f"shard-{i}-of-{n}.pt"


def finished_shards(cfg: IngestConfig, folder: Path, n: int) -> list[int]:
    """The shards whose complete state, written with these settings, is already in `folder`."""
    done = []
    for i in range(n):
        p = shard_path(folder, i, n)
        if not p.is_file():
            continue
        try:
            saved = load_state_file(p)
        except FeatureDBError:
            continue  # unreadable (e.g. cut short): run that shard again
        if saved.get("complete") and saved.get("config") == cfg.fingerprint() and saved.get("shard") == (i, n):
            done.append(i)
    return done


def task_error(e: BaseException) -> str:
    """The last line of a Ray task's error (the task's own exception, or why its worker died)."""
    lines = str(e).strip().splitlines()
    return lines[-1] if lines else e.__class__.__name__


def as_completed(ray: Any, pending: dict[Any, Any], name: Callable[[Any], str]) -> Iterator[tuple[Any, Any]]:
    """(key, result) of each task in `pending` (ref -> key) as it finishes; a failed task is one error line."""
    pending = dict(pending)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            key = pending.pop(ref)
            try:
                yield key, ray.get(ref)
            except ray.exceptions.RayError as e:
                raise FeatureDBError(f"{name(key)} failed: {task_error(e)}") from None


def run_shard(cfg: dict[str, Any], i: int, n: int, memory_gb: float | None) -> dict[str, Any]:
    """Ingest shard i of n in this (worker) process; returns its state file's bytes and its token count."""
    with tempfile.TemporaryDirectory(prefix="featuredb-shard-") as tmp:
        out = Path(tmp) / "state.pt"
        summary = run_ingest(IngestConfig(**cfg), None, shard=(i, n), state_out=str(out), progress=False,
                             memory_gb=memory_gb)
        return {"shard": i, "state": out.read_bytes(), "tokens": summary.tokens, "seconds": summary.seconds,
                "host": os.uname().nodename}


def connect_cluster(ray: Any, address: str, workers: int | None) -> bool:
    """Join the cluster at `address`, or start a local one with `workers` CPUs; True when we started it."""
    if ray.is_initialized():
        return False
    opts: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address == LOCAL:
        ray.init(num_cpus=workers or os.cpu_count() or 1, **opts)
        return True
    if workers is not None:
        raise FeatureDBError("--workers sets the size of a local cluster; a cluster at an address has its own")
    try:
        ray.init(address=address, **opts)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise FeatureDBError(f"--ray {address}: cannot connect ({str(e).splitlines()[0]})") from None
    return False


def run_ray_ingest(cfg: IngestConfig, db: str | None, *, address: str = LOCAL, shards: int | None = None,
                   workers: int | None = None, resume: bool = False, state_dir: str | Path = "data/ray-ingest",
                   memory_gb: float | None = None, progress: bool | None = None) -> IngestSummary:
    """Ingest with the corpus split into Ray tasks, then merge the shard states into the store once."""
    ray = import_ray()
    started = time.perf_counter()
    owned = connect_cluster(ray, address, workers)
    try:
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
        n = shards or 2 * (gpus or cpus)  # two shards per slot: a slow or retried shard holds up less
        folder = state_folder(cfg, n, state_dir)
        done = finished_shards(cfg, folder, n) if resume else []
        if not resume and any(folder.glob("shard-*.pt")):
            for old in folder.glob("shard-*.pt"):  # a fresh run never mixes in an earlier run's states
                old.unlink()
        todo = [i for i in range(n) if i not in done]
        task = ray.remote(run_shard).options(name=TASK_NAME, num_cpus=1, num_gpus=1 if gpus else 0,
                                              max_retries=RETRIES)
        cfg_dict = asdict(cfg)
        pending = {task.remote(cfg_dict, i, n, memory_gb): i for i in todo}
        tokens = 0
        t0 = time.perf_counter()
        bar = tqdm(total=n, initial=len(done), unit="shard", desc=f"ingest on ray ({len(todo)} to run)",
                   disable=None if progress is None else not progress)
        with bar:
            for i, got in as_completed(ray, pending, lambda i: f"shard {i}/{n}"):
                write_bytes_atomically(shard_path(folder, i, n), got["state"])
                tokens += got["tokens"]
                bar.set_postfix_str(f"{tokens / (time.perf_counter() - t0):,.0f} tok/s across workers")
                bar.update(1)
        pass_s = time.perf_counter() - t0
    finally:
        if owned:
            ray.shutdown()
    t1 = time.perf_counter()
    summary = merge_shards([str(shard_path(folder, i, n)) for i in range(n)], db, device=cfg.device,
                           progress=progress)
    merge_s = time.perf_counter() - t1
    for i in range(n):
        shard_path(folder, i, n).unlink(missing_ok=True)
    summary.seconds = time.perf_counter() - started
    summary.timings = {"shards": round(pass_s, 3), "merge": round(merge_s, 3)}
    summary.ray = {"address": address, "shards": n, "ran": todo, "reused": done, "gpus": gpus, "cpus": cpus,
                   "tokens_per_s": round(tokens / pass_s, 1) if pass_s and tokens else None,
                   "state_dir": str(folder)}
    if progress is not False and done:
        click.echo(f"reused {len(done)} finished shard(s) of {n} from {folder}", err=True)
    return summary
