"""SIGKILL at named points of import, pull, ingest, train and `trace label`; then the same command again.

After every kill the store opens read-only (info, query), and the re-run ends in exactly the rows or files of
an uninterrupted run. The kill points are functions reached by the real CLI (tests/kill_at.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import MODEL, SOURCE
from featuredb import FeatureStore
from featuredb.formats.neuronpedia_import import import_neuronpedia
from featuredb.synthetic_export import generate_export
from kill_at import NOT_REACHED, store_rows
from loopback import serve_in_thread
from featuredb.server.app import create_app
from tiny_model import make_tiny_llama, random_weights, write_circuit_tracer, write_corpus

KILL_AT = Path(__file__).with_name("kill_at.py")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "featuredb.cli", *args], capture_output=True, text=True)


def _killed(point: str, nth: int, event: str, *args: str) -> None:
    """Run the CLI and assert it died of SIGKILL at the point (not finished, not failed)."""
    proc = subprocess.run([sys.executable, str(KILL_AT), point, str(nth), event, "--", *args],
                          capture_output=True, text=True)
    assert proc.returncode != NOT_REACHED, f"{point} #{nth} was never reached"
    assert proc.returncode == -9, (point, proc.returncode, proc.stderr[-1500:])


def _opens_read_only(db: Path) -> None:
    """What a user runs next: info and query must open the store, whatever the kill left behind."""
    for args in (["info", "--json", "--db", str(db)], ["query", "SELECT count(*) AS n FROM features", "--db", str(db)]):
        res = _cli(*args)
        assert res.returncode == 0, (args, res.stderr)


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    return generate_export(root / "export", model=MODEL, source=SOURCE, n_features=300, n_activations=6,
                           ctx_len=16, progress=False)


@pytest.fixture(scope="module")
def clean_import(export: Path) -> dict[str, list[tuple]]:
    """The rows of one uninterrupted import of the export."""
    clean = export.parent / "clean.duckdb"
    assert _cli("import", "neuronpedia", str(export), "--db", str(clean)).returncode == 0
    return store_rows(clean)


IMPORT_POINTS = [
    ("featuredb.store.feature_store:FeatureStore.write_select", 2, "call"),       # mid-transaction
    ("featuredb.store.feature_store:FeatureStore.write_select", 5, "return"),     # last batch written, not committed
    ("featuredb.store.feature_store:FeatureStore.close", 1, "call"),              # committed, search indexes not built
    ("featuredb.store.search_indexes:_postings", 1, "call"),          # WAL holds search tables a reader cannot replay
    ("featuredb.store.search_indexes:refresh_search_indexes", 1, "return"),  # indexes built, not checkpointed
]


@pytest.mark.parametrize("point,nth,event", IMPORT_POINTS, ids=[f"{p.split(':')[1]}#{n}-{e}" for p, n, e in IMPORT_POINTS])
def test_import_killed_then_run_again_equals_one_clean_import(export: Path, clean_import: dict[str, list[tuple]],
                                                              tmp_path: Path, point: str, nth: int, event: str) -> None:
    db = tmp_path / "killed.duckdb"
    _killed(point, nth, event, "import", "neuronpedia", str(export), "--db", str(db))
    _opens_read_only(db)
    before = store_rows(db)
    assert all(len(v) == 0 for v in before.values()) or before == clean_import  # all or nothing
    res = _cli("import", "neuronpedia", str(export), "--db", str(db))
    assert res.returncode == 0, res.stderr
    assert store_rows(db) == clean_import
    search = _cli("search", "feature 7", "--db", str(db), "--json")
    assert search.returncode == 0 and json.loads(search.stdout)["hits"], search.stderr


def test_pull_killed_then_run_again_equals_one_clean_pull(export: Path, tmp_path: Path) -> None:
    remote = tmp_path / "remote.duckdb"
    with FeatureStore(remote) as store:
        import_neuronpedia(store, export, progress=False)
    with serve_in_thread(create_app(str(remote))) as base_url:
        def pull(db: Path) -> list[str]:
            return ["np", "pull", MODEL, SOURCE, "--indices", "0-199", "--base-url", base_url, "--db", str(db)]

        clean = tmp_path / "clean.duckdb"
        res = _cli(*pull(clean))
        assert res.returncode == 0, res.stderr
        for nth, event in ((2, "call"), (1, "return")):
            db = tmp_path / f"killed-{nth}.duckdb"
            point = "featuredb.store.feature_store:FeatureStore.upsert" if event == "call" else "featuredb.store.feature_store:FeatureStore.close"
            _killed(point, nth, "call", *pull(db))
            _opens_read_only(db)
            res = _cli(*pull(db))
            assert res.returncode == 0, res.stderr
            assert store_rows(db)["features"] == store_rows(clean)["features"]
            assert store_rows(db)["activations"] == store_rows(clean)["activations"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny Llama, a corpus, 16-feature transcoders, and one uninterrupted ingest and training run of each."""
    root = tmp_path_factory.mktemp("tiny")
    tiny = {"model": make_tiny_llama(root / "model"), "corpus": write_corpus(root / "corpus.txt", 3000),
            "tc": write_circuit_tracer(root / "tc", {i: random_weights(16, seed=i) for i in range(3)},
                                       activation="jumprelu"),
            "clean_db": root / "clean.duckdb", "clean_tc": root / "clean-tc"}
    res = _cli(*_ingest(tiny, tiny["clean_db"], root / "clean.pt"))
    assert res.returncode == 0, res.stderr
    res = _cli(*_train(tiny, tiny["clean_tc"]))
    assert res.returncode == 0, res.stderr
    return tiny


def _ingest(tiny: dict[str, Path], db: Path, ckpt: Path) -> list[str]:
    return ["ingest", "--model", str(tiny["model"]), "--transcoders", str(tiny["tc"]), "--corpus", str(tiny["corpus"]),
            "--layers", "1,2", "--ctx-len", "16", "--batch-size", "4", "--top-examples", "5", "--model-id", "tiny",
            "--source-set", "tc16", "--db", str(db), "--checkpoint", str(ckpt)]


INGEST_POINTS = [
    ("featuredb.store.feature_store:FeatureStore.write_select", 3, "call"),   # the write phase, mid-transaction
    ("featuredb.store.feature_store:FeatureStore.close", 1, "call"),          # rows committed, search indexes not built
]


@pytest.mark.parametrize("point,nth,event", INGEST_POINTS, ids=["write", "close"])
def test_ingest_killed_in_its_write_phase_then_run_again(tiny: dict[str, Path], tmp_path: Path, point: str,
                                                         nth: int, event: str) -> None:
    db = tmp_path / "killed.duckdb"
    _killed(point, nth, event, *_ingest(tiny, db, tmp_path / "k.pt"))
    if db.exists():
        _opens_read_only(db)
    res = _cli(*_ingest(tiny, db, tmp_path / "k.pt"))
    assert res.returncode == 0, res.stderr
    assert store_rows(db) == store_rows(tiny["clean_db"])


def _train(tiny: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["train", "--model", str(tiny["model"]), "--corpus", str(tiny["corpus"]), "--out", str(out),
            "--train-tokens", "1500", "--test-tokens", "300", "--ctx-len", "16", "--features", "32", "--k", "4",
            "--epochs", "2", "--batch-tokens", "128", "--ce-tokens", "128", "--checkpoint-every", "5", *extra]


TRAIN_POINTS = [
    ("ingest.train_run:TrainRun._save_checkpoint", 2, "return"),  # mid-optimisation
    ("ingest.transcoder_writer:write_layer", 2, "call"),          # saving layer files
    ("ingest.train_run:TrainRun._spliced_loss", 1, "call"),       # trained and saved, report not written
]


@pytest.mark.parametrize("point,nth,event", TRAIN_POINTS, ids=["optimise", "save", "report"])
def test_train_killed_then_resumed_gives_the_same_weights(tiny: dict[str, Path], tmp_path: Path, point: str,
                                                          nth: int, event: str) -> None:
    clean = tiny["clean_tc"]
    out = tmp_path / "killed"
    _killed(point, nth, event, *_train(tiny, out))
    assert not (out / "training_report.json").exists()
    res = _cli(*_train(tiny, out, "--resume"))
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in clean.iterdir())
    for f in sorted(clean.glob("layer_*.safetensors")):
        a, b = load_file(str(f)), load_file(str(out / f.name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f.name


LABEL_POINTS = [
    ("tracer.trace_label:trace_label", 1, "return"),                        # labelled, nothing written yet
    ("featuredb.atomic_write:write_bytes_atomically", 1, "c_call:write"),   # temp file created, still empty
    ("featuredb.atomic_write:_fsync_folder", 1, "call"),                    # renamed, folder not yet synced
]


@pytest.mark.parametrize("point,nth,event", LABEL_POINTS, ids=["labelled", "writing", "renamed"])
def test_trace_label_killed_then_run_again_writes_the_same_file_and_no_temp(store_db: Path, tmp_path: Path,
                                                                           point: str, nth: int, event: str) -> None:
    from test_tracer import feat, graph_of, node

    nodes = [node("E_1_0", 0, "E", 0, "embedding"), *(feat(i) for i in range(1, 7)), node("27_0_2", None, "27", 2, "logit")]
    links = [{"source": n["node_id"], "target": "27_0_2", "weight": 0.5} for n in nodes[1:-1]]
    src = tmp_path / "graph.json"
    src.write_text(json.dumps(graph_of(nodes, links)))
    clean, out = tmp_path / "clean.json", tmp_path / "out.json"
    assert _cli("trace", "label", str(src), "-o", str(clean), "--db", str(store_db)).returncode == 0
    out.write_text('{"old": "output"}')
    _killed(point, nth, event, "trace", "label", str(src), "-o", str(out), "--db", str(store_db))
    text = out.read_text()
    assert text == '{"old": "output"}' or json.loads(text) == json.loads(clean.read_text())  # old or new, never half
    res = _cli("trace", "label", str(src), "-o", str(out), "--db", str(store_db))
    assert res.returncode == 0, res.stderr
    assert json.loads(out.read_text()) == json.loads(clean.read_text())
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
