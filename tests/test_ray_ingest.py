"""`featuredb ingest --ray` on a local 2-CPU Ray cluster: exact merge, a killed task retried, a killed driver resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import table_snapshot
from featuredb import FeatureStore
from featuredb.errors import FeatureDBError
from ingest.ray_ingest import TASK_NAME, run_ray_ingest
from ingest.run import IngestConfig, run_ingest
from tiny_model import make_tiny_llama, random_weights, write_circuit_tracer, write_corpus


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ray")
    weights = {i: random_weights(16, seed=i) for i in range(3)}
    return {"model": make_tiny_llama(root / "model"), "corpus": write_corpus(root / "corpus.txt", 4000),
            "big_corpus": write_corpus(root / "big.txt", 10_000, seed=3),
            "tc": write_circuit_tracer(root / "tc", weights, activation="jumprelu"), "root": root}


def _cfg(setup: dict[str, Path], corpus: str = "corpus", **kw) -> IngestConfig:  # type: ignore[no-untyped-def]
    base = dict(transcoders=[str(setup["tc"])], model=str(setup["model"]), corpus=str(setup[corpus]), layers=[1, 2],
                ctx_len=16, batch_size=4, k=5, model_id="tiny", source_set="tc16")
    return IngestConfig(**{**base, **kw})


def _rows(db: Path) -> dict[str, list[tuple]]:
    with FeatureStore(db, read_only=True) as store:
        return {t: table_snapshot(store.con, t) for t in ("features", "activations")}


def _shard_workers() -> list[int]:
    """PIDs of Ray worker processes running a featuredb shard right now."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if cmd.startswith(f"ray::{TASK_NAME}".encode()):
            pids.append(int(pid))
    return pids


@pytest.fixture(scope="module")
def one_process_big(setup: dict[str, Path]) -> dict[str, list[tuple]]:
    """The rows of a one-process ingest of the bigger corpus, one window per batch (so shards run for seconds)."""
    db = setup["root"] / "one-big.duckdb"
    run_ingest(_cfg(setup, "big_corpus", batch_size=1), str(db), progress=False)
    return _rows(db)


def test_four_shards_on_a_local_cluster_equal_one_process(setup: dict[str, Path], tmp_path: Path) -> None:
    run_ingest(_cfg(setup), str(tmp_path / "one.duckdb"), progress=False)
    summary = run_ray_ingest(_cfg(setup), str(tmp_path / "ray.duckdb"), shards=4, workers=2,
                             state_dir=tmp_path / "states", progress=False)
    assert summary.ray["shards"] == 4 and summary.ray["ran"] == [0, 1, 2, 3] and summary.ray["reused"] == []
    assert summary.ray["cpus"] == 2
    one, ray = _rows(tmp_path / "one.duckdb"), _rows(tmp_path / "ray.duckdb")
    assert len(one["activations"]) > 0
    assert one == ray
    assert not list((tmp_path / "states").rglob("*.pt")), "shard states are removed once merged"


def test_a_killed_shard_task_is_retried(setup: dict[str, Path], one_process_big: dict, tmp_path: Path) -> None:
    killed: list[int] = []

    def kill_first_shard_worker() -> None:
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            pids = _shard_workers()
            if pids:
                time.sleep(0.5)  # inside the shard's pass
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.05)

    killer = threading.Thread(target=kill_first_shard_worker, daemon=True)
    killer.start()
    summary = run_ray_ingest(_cfg(setup, "big_corpus", batch_size=1), str(tmp_path / "ray.duckdb"), shards=2,
                             workers=2, state_dir=tmp_path / "states", progress=False)
    killer.join()
    assert killed, "no shard worker was seen running"
    assert summary.ray["ran"] == [0, 1]
    assert _rows(tmp_path / "ray.duckdb") == one_process_big


def _ray_cmd(setup: dict[str, Path], db: Path, states: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "featuredb.cli", "ingest", "--model", str(setup["model"]), "--transcoders",
            str(setup["tc"]), "--corpus", str(setup["big_corpus"]), "--layers", "1,2", "--ctx-len", "16",
            "--batch-size", "1", "--top-examples", "5", "--model-id", "tiny", "--source-set", "tc16", "--db", str(db),
            "--ray", "--shards", "4", "--workers", "1", "--state-dir", str(states), *extra]


def test_a_killed_driver_resumes_running_only_unfinished_shards(setup: dict[str, Path], one_process_big: dict,
                                                               tmp_path: Path) -> None:
    states = tmp_path / "states"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(_ray_cmd(setup, tmp_path / "ray.duckdb", states), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline = time.time() + 180
    while not list(states.rglob("shard-*.pt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the driver finished before it could be killed; make the corpus bigger"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything in its session
    proc.wait()
    finished = sorted(int(p.name.split("-")[1]) for p in states.rglob("shard-*.pt"))
    assert 1 <= len(finished) < 4
    assert not (tmp_path / "ray.duckdb").exists(), "nothing is written to the store before the merge"
    resumed = subprocess.run(_ray_cmd(setup, tmp_path / "ray.duckdb", states, "--resume", "--json"),
                             capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    ray = json.loads(resumed.stdout)["ray"]
    assert ray["reused"] == finished
    assert ray["ran"] == [i for i in range(4) if i not in finished]
    assert _rows(tmp_path / "ray.duckdb") == one_process_big


def test_ray_options_are_checked_before_any_work(setup: dict[str, Path], tmp_path: Path) -> None:
    base = _ray_cmd(setup, tmp_path / "x.duckdb", tmp_path / "s")
    bad = subprocess.run(base + ["--shard", "0/2"], capture_output=True, text=True)
    assert bad.returncode != 0 and "--ray splits the corpus itself" in bad.stderr
    no_ray = [a for a in base if a not in ("--ray",)]
    bad = subprocess.run(no_ray, capture_output=True, text=True)
    assert bad.returncode != 0 and "--shards and --workers go with --ray" in bad.stderr
    assert not (tmp_path / "x.duckdb").exists()


def test_a_task_that_raises_is_one_error_line_naming_its_shard(setup: dict[str, Path], tmp_path: Path) -> None:
    cfg = IngestConfig(**{**_cfg(setup).__dict__, "transcoders": [str(tmp_path / "no-such-transcoders")]})
    with pytest.raises(FeatureDBError, match=r"^shard \d/2 failed: .*no-such-transcoders") as e:
        run_ray_ingest(cfg, str(tmp_path / "ray.duckdb"), shards=2, workers=2, state_dir=tmp_path / "s",
                       progress=False)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "ray.duckdb").exists()
