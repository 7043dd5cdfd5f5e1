"""SIGKILL at named points of import, pull, ingest, train and `trace label`, then the same command again.

A case passes when the store opens read-only after the kill and the re-run ends in the rows (or files) of an
uninterrupted run. Kill points are reached through the real CLI (tests/kill_at.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

from fault_cases.outcome import ACCEPTED, DATA_LOSS, TRACEBACK, Outcome
from featuredb.synthetic_export import generate_export

ROOT = Path(__file__).resolve().parents[2]
KILL_AT = ROOT / "tests" / "kill_at.py"
sys.path.insert(0, str(ROOT / "tests"))  # kill_at's rows, tiny_model

from kill_at import store_rows  # noqa: E402
MODEL, SOURCE = "demo-model", "6-demo-transcoder"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "featuredb.cli", *args], capture_output=True, text=True)


def _kill_case(area: str, point: str, nth: int, event: str, args: list[str], again: list[str],
               same: Callable[[], bool], db: Path | None) -> Outcome:
    case = f"{point.split(':')[1]}#{nth} {event}"
    proc = subprocess.run([sys.executable, str(KILL_AT), point, str(nth), event, "--", *args],
                          capture_output=True, text=True)
    if proc.returncode != -9:
        return Outcome(area, case, TRACEBACK if "Traceback" in proc.stderr else DATA_LOSS,
                       f"not killed at the point (exit {proc.returncode})")
    if db is not None and db.exists():
        info = _cli("info", "--json", "--db", str(db))
        if info.returncode != 0:
            return Outcome(area, case, DATA_LOSS, "store unreadable after the kill: " + info.stderr.strip()[:150])
    res = _cli(*again)
    if res.returncode != 0:
        return Outcome(area, case, TRACEBACK if "Traceback" in res.stderr else DATA_LOSS,
                       "re-run failed: " + res.stderr.strip()[-150:])
    return Outcome(area, case, ACCEPTED) if same() else Outcome(area, case, DATA_LOSS, "differs from a clean run")


def import_cases(work: Path) -> Iterator[Outcome]:
    """Kills inside the import transaction, at commit, and while the search indexes are built."""
    export = generate_export(work / "export", model=MODEL, source=SOURCE, n_features=300, n_activations=6,
                             ctx_len=16, progress=False)
    clean = work / "clean.duckdb"
    _cli("import", "neuronpedia", str(export), "--db", str(clean))
    want = store_rows(clean)
    points = [("featuredb.store.feature_store:FeatureStore.write_select", 2, "call"),
              ("featuredb.store.feature_store:FeatureStore.write_select", 5, "return"),
              ("featuredb.store.feature_store:FeatureStore.transaction", 2, "c_call:execute"),
              ("featuredb.store.feature_store:FeatureStore.close", 1, "call"),
              ("featuredb.store.search_indexes:_embeddings", 1, "call"),
              ("featuredb.store.search_indexes:_postings", 1, "call"),
              ("featuredb.store.search_indexes:refresh_search_indexes", 1, "return")]
    for i, (point, nth, event) in enumerate(points):
        db = work / f"import-{i}.duckdb"
        args = ["import", "neuronpedia", str(export), "--db", str(db)]
        yield _kill_case("kill import", point, nth, event, args, args, lambda db=db: store_rows(db) == want, db)


def pull_cases(work: Path, base_url: str) -> Iterator[Outcome]:
    """Kills between pulled batches and at close; the re-run fetches only what is missing."""
    def pull(db: Path) -> list[str]:
        return ["np", "pull", MODEL, SOURCE, "--indices", "0-199", "--base-url", base_url, "--db", str(db)]

    clean = work / "pull-clean.duckdb"
    _cli(*pull(clean))
    want = store_rows(clean)
    for i, (point, nth, event) in enumerate([("featuredb.store.feature_store:FeatureStore.upsert", 2, "call"),
                                             ("featuredb.store.feature_store:FeatureStore.upsert", 3, "return"),
                                             ("featuredb.store.feature_store:FeatureStore.close", 1, "call")]):
        db = work / f"pull-{i}.duckdb"
        same = lambda db=db: {t: store_rows(db)[t] for t in ("features", "activations")} == \
            {t: want[t] for t in ("features", "activations")}  # noqa: E731
        yield _kill_case("kill pull", point, nth, event, pull(db), pull(db), same, db)


LABEL_POINTS = [("tracer.trace_label:trace_label", 1, "return"),                    # labelled, nothing written
                ("featuredb.atomic_write:write_bytes_atomically", 1, "c_call:write"),  # temp file created, empty
                ("featuredb.atomic_write:_fsync_folder", 1, "call")]                  # renamed, folder not synced


def graph_label_cases(work: Path, graph: Path, db: Path) -> Iterator[Outcome]:
    """Kills before and while `trace label` writes its output; the re-run writes the same file, no temp left."""
    clean = work / "labelled-clean.json"
    _cli("trace", "label", str(graph), "-o", str(clean), "--db", str(db))
    want = json.loads(clean.read_text())
    for i, (point, nth, event) in enumerate(LABEL_POINTS):
        out = work / f"labelled-{i}.json"
        args = ["trace", "label", str(graph), "-o", str(out), "--db", str(db)]

        def same(out: Path = out) -> bool:
            return json.loads(out.read_text()) == want and sorted(p.name for p in out.parent.iterdir()
                                                                  if p.name.startswith(f".{out.name}")) == []
        yield _kill_case("kill trace label", point, nth, event, args, args, same, None)


def train_and_ingest_cases(work: Path) -> Iterator[Outcome]:
    """Tiny Llama: kills mid-optimisation and while saving (train --resume), and in ingest's write phase."""
    from safetensors.torch import load_file
    import torch
    from tiny_model import make_tiny_llama, random_weights, write_circuit_tracer, write_corpus

    model, corpus = make_tiny_llama(work / "model"), write_corpus(work / "corpus.txt", 3000)
    train = ["train", "--model", str(model), "--corpus", str(corpus), "--train-tokens", "1500", "--test-tokens", "300",
             "--ctx-len", "16", "--features", "32", "--k", "4", "--epochs", "2", "--batch-tokens", "128",
             "--ce-tokens", "128", "--checkpoint-every", "5"]
    _cli(*train, "--out", str(work / "tc-clean"))

    def same_weights(out: Path) -> bool:
        files = sorted((work / "tc-clean").glob("layer_*.safetensors"))
        return bool(files) and all(
            all(torch.equal(a, load_file(str(out / f.name))[k]) for k, a in load_file(str(f)).items()) for f in files)

    for i, (point, nth, event) in enumerate([("ingest.train_run:TrainRun._save_checkpoint", 2, "return"),
                                             ("ingest.transcoder_writer:write_layer", 2, "call")]):
        out = work / f"tc-{i}"
        yield _kill_case("kill train", point, nth, event, [*train, "--out", str(out)],
                         [*train, "--out", str(out), "--resume"], lambda out=out: same_weights(out), None)
    tc = write_circuit_tracer(work / "tc16", {i: random_weights(16, seed=i) for i in range(3)}, activation="jumprelu")

    def ingest(db: Path) -> list[str]:
        return ["ingest", "--model", str(model), "--transcoders", str(tc), "--corpus", str(corpus), "--layers", "1,2",
                "--ctx-len", "16", "--batch-size", "4", "--top-examples", "5", "--model-id", "tiny", "--source-set", "tc16",
                "--db", str(db), "--checkpoint", str(db.with_suffix(".pt"))]

    _cli(*ingest(work / "ingest-clean.duckdb"))
    want = store_rows(work / "ingest-clean.duckdb")
    for i, (point, nth, event) in enumerate([("featuredb.store.feature_store:FeatureStore.write_select", 3, "call"),
                                             ("featuredb.store.feature_store:FeatureStore.close", 1, "call")]):
        db = work / f"ingest-{i}.duckdb"
        yield _kill_case("kill ingest", point, nth, event, ingest(db), ingest(db), lambda db=db: store_rows(db) == want, db)
