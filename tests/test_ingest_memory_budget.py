"""`featuredb ingest --memory-gb`: layers split into passes under a budget, the same rows, and a measured peak."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import table_snapshot
from featuredb import FeatureStore
from featuredb.errors import FeatureDBError
from ingest import run as ingest_run
from ingest.feature_state import LayerState
from ingest.memory_budget import GB, HEADROOM, plan_memory
from ingest.run import IngestConfig, run_ingest
from ingest.transcoder_formats import load_transcoders
from tiny_model import make_tiny_llama, random_weights, write_circuit_tracer, write_corpus

ROOT = Path(__file__).resolve().parents[1]


def test_layers_are_packed_into_passes_that_fit_and_a_layer_too_wide_is_a_clear_error() -> None:
    per_feature = LayerState.bytes_per_feature(20, 25, 128)
    widths = {layer: 4096 for layer in range(6)}
    layer_bytes = 4096 * per_feature
    budget = (GB + 1024**2 + 2.5 * layer_bytes) / (1 - HEADROOM) / GB  # room for two layers after 1 GB fixed
    plan = plan_memory(budget, widths, fixed=GB, transient=1024**2, k=20, reservoir=25, ctx_len=128)
    assert plan.groups == [[0, 1], [2, 3], [4, 5]]
    assert "3 pass(es)" in plan.describe()
    everything = plan_memory(64, widths, fixed=GB, transient=1024**2, k=20, reservoir=25, ctx_len=128)
    assert everything.groups == [list(range(6))]
    with pytest.raises(FeatureDBError, match=r"--memory-gb 1\.05: too small.*at least 1\.2 GB"):
        plan_memory(1.05, widths, fixed=GB, transient=1024**2, k=20, reservoir=25, ctx_len=128)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("budget")
    return {"model": make_tiny_llama(root / "model"), "corpus": write_corpus(root / "corpus.txt", 3000),
            "tc": write_circuit_tracer(root / "tc", {i: random_weights(64, seed=i) for i in range(3)},
                                       activation="jumprelu"), "root": root}


def test_a_run_split_into_passes_writes_the_rows_of_one_pass(tiny: dict[str, Path], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = IngestConfig(transcoders=[str(tiny["tc"])], model=str(tiny["model"]), corpus=str(tiny["corpus"]),
                       ctx_len=16, batch_size=4, k=5, model_id="tiny", source_set="tc64")
    one = run_ingest(cfg, str(tmp_path / "one.duckdb"), progress=False)
    assert one.memory["passes"] == 1
    # With no fixed memory, a budget of the transient plus 1.5 layers' state and weights allows one layer per pass.
    monkeypatch.setattr(ingest_run, "current_rss_bytes", lambda: 0)
    weights = load_transcoders([tiny["tc"]], lazy=True).transcoders[0].weight_bytes()
    layer = 64 * LayerState.bytes_per_feature(5, 25, 16) + weights
    ing = ingest_run.IngestPass(cfg, None, False, group=[])
    assert not any(t.loaded for t in ing.tset.transcoders)  # read and checked, then let go
    transient = ingest_run._plan(ing, 64).transient
    loaded_in_pass: list[list[int]] = []
    run = ingest_run.IngestPass.run

    def recording_run(self: ingest_run.IngestPass, *args: object) -> None:
        loaded_in_pass.append([t.layer for t in self.tset.transcoders if t.loaded])
        run(self, *args)

    monkeypatch.setattr(ingest_run.IngestPass, "run", recording_run)
    split = run_ingest(cfg, str(tmp_path / "split.duckdb"), progress=False,
                       memory_gb=(transient + 1.5 * layer) / (1 - HEADROOM) / GB)
    assert split.memory["groups"] == [[0], [1], [2]]
    assert loaded_in_pass == [[0], [1], [2]]  # each pass holds only its own layer's transcoder weights
    assert (split.live_features, split.dead_features, split.tokens) == (one.live_features, one.dead_features,
                                                                          one.tokens)
    with FeatureStore(tmp_path / "one.duckdb", read_only=True) as a, \
            FeatureStore(tmp_path / "split.duckdb", read_only=True) as b:
        for table in ("features", "activations"):
            rows = table_snapshot(a.con, table)
            assert rows and rows == table_snapshot(b.con, table), table
        assert a.con.execute('SELECT "id", "num_prompts" FROM sources ORDER BY 1').fetchall() == \
            b.con.execute('SELECT "id", "num_prompts" FROM sources ORDER BY 1').fetchall()
    assert not list(tmp_path.glob(".ingest-rows-*"))  # the spilled rows are gone


PEAK_SCRIPT = """
import json, resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({"rc": proc.returncode, "out": proc.stdout, "err": proc.stderr[-2000:],
                  "peak_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))
"""


@pytest.mark.slow
def test_204000_features_stay_under_a_3_gb_budget_measured_by_the_kernel(tiny: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    width = 68_000  # x 3 layers = 204,000 features: 4.9 GB of state at k=20, ctx 128, if held at once
    tc = write_circuit_tracer(tmp_path / "wide", {i: random_weights(width, seed=i) for i in range(3)},
                              activation="topk", k=8)
    db = tmp_path / "wide.duckdb"
    cmd = [sys.executable, "-m", "featuredb.cli", "ingest", "--model", str(tiny["model"]), "--transcoders", str(tc),
           "--corpus", str(tiny["corpus"]), "--max-tokens", "512", "--batch-size", "2", "--memory-gb", "3",
           "--model-id", "tiny", "--source-set", "wide", "--db", str(db), "--json"]
    res = json.loads(subprocess.run([sys.executable, "-c", PEAK_SCRIPT, *cmd], capture_output=True, text=True,
                                    cwd=ROOT, check=True).stdout)
    assert res["rc"] == 0, res["err"]
    summary = json.loads(res["out"])
    assert summary["memory"]["passes"] == 3 and summary["live_features"] + summary["dead_features"] == 204_000
    print(f"peak {res['peak_bytes'] / GB:.2f} GB, {summary['timings']}")
    assert res["peak_bytes"] < 3 * GB, f"peak {res['peak_bytes'] / GB:.2f} GB over the 3 GB budget"
    with FeatureStore(db, read_only=True) as store:
        assert store.con.execute("SELECT count(*) FROM features").fetchone()[0] == 204_000
        f = store.get_feature("tiny", "2-wide", width - 1)
        assert f.index == str(width - 1) and len(f.freq_hist_data_bar_heights) > 0


def test_rows_built_in_feature_blocks_equal_rows_built_at_once() -> None:
    import numpy as np
    import pyarrow as pa
    import torch

    from ingest.logit_lens import logit_stats
    from ingest.records import RecordOptions, layer_records

    torch.manual_seed(0)
    F, T = 11, 8
    state = LayerState.empty(F, 6, 10, T, torch.device("cpu"))
    for b in range(20):  # sparse activations over 20 batches of 4 windows
        acts = torch.relu(torch.randn(4, T, F) - 1.0)
        state.update(acts, torch.arange(4 * b, 4 * b + 4))
    bank = {w: np.arange(T) + w % 50 for w in range(80)}
    vocab = pa.array([f"t{i}" for i in range(64)])
    W_dec, W_U = torch.randn(F, 16), torch.randn(64, 16)
    opts = RecordOptions(intervals=2, per_interval=1)  # one pick per interval: the priorities decide it
    whole = layer_records("m", "0-x", "x", state, 80 * T, bank, vocab, logit_stats(W_dec, W_U), opts)
    blocks = [layer_records("m", "0-x", "x", state.rows(lo, min(lo + 4, F)), 80 * T, bank, vocab,
                            logit_stats(W_dec[lo:lo + 4], W_U), opts, first=lo) for lo in range(0, F, 4)]
    order = {"features": "index", "examples": [("index", "ascending"), ("kind", "ascending"), ("dataIndex", "ascending")]}
    for name, by in order.items():
        joined = pa.concat_tables([getattr(b, name) for b in blocks]).sort_by(by)
        expected = getattr(whole, name).sort_by(by)
        assert expected.num_rows > F // 2 and joined.equals(expected), name


def test_rows_spilled_by_a_killed_ingest_are_removed_by_the_next_one(tmp_path: Path) -> None:
    from ingest.record_spill import PREFIX, RecordSpill

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    orphan = tmp_path / f"{PREFIX}{dead}-abc"
    orphan.mkdir()
    (orphan / "0-activations-0.parquet").write_bytes(b"x" * 100)
    live = tmp_path / f"{PREFIX}{os.getpid()}-def"  # this process's: still running, so kept
    live.mkdir()
    with RecordSpill(str(tmp_path / "store.duckdb")) as spill:
        assert spill.folder.exists() and spill.folder.name.startswith(f"{PREFIX}{os.getpid()}-")
        assert not orphan.exists() and live.exists()
    assert not spill.folder.exists()
