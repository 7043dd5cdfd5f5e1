"""Benchmark Gemma-scale work on one machine: ingest memory and time, labelling, store size, GET and pull.

Random TopK-32 transcoders on every one of SmolLM2-135M's 30 layers (the default model), WikiText-2, as a new
user would run them. Every step runs as its own process; peak RSS is the kernel's (ru_maxrss of the child).

    .venv/bin/python bench/bench_scale.py                          # 30 x 4,096 = 122,880 features
    .venv/bin/python bench/bench_scale.py --width 13654            # 30 x 13,654 = 409,620 features
    .venv/bin/python bench/bench_scale.py --tokens 20000 --memory-gb 8 --skip label
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

CORPUS = ROOT.parent / "shared" / "corpus" / "wikitext-2"
GOALS = {"peak": 8.0, "write_ratio": 0.5, "label_s": 120.0, "kb_per_feature": 6.0, "get_p50_ms": 1.0,
         "pull_per_s": 1000.0}
PEAK = """
import json, resource, subprocess, sys, time
t = time.perf_counter()
p = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, text=True)
print(json.dumps({"rc": p.returncode, "out": p.stdout, "seconds": time.perf_counter() - t,
                  "peak": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))
"""


def measured(args: list[str]) -> dict:
    """Run `featuredb ARGS` in a child process; its JSON output, wall seconds and peak RSS (bytes)."""
    cmd = [sys.executable, "-c", PEAK, sys.executable, "-m", "featuredb.cli", *args]
    res = json.loads(subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=True).stdout)
    if res["rc"] != 0:
        raise SystemExit(f"featuredb {' '.join(args)} failed (exit {res['rc']})")
    try:
        res["json"] = json.loads(res["out"])
    except ValueError:
        res["json"] = None
    return res


def transcoders(out: Path, width: int) -> Path:
    """Random TopK-32 transcoders for all 30 layers (written once per width)."""
    from tiny_model import random_weights, write_circuit_tracer

    folder = out / f"tc-{width}"
    if not (folder / "config.yaml").exists():
        write_circuit_tracer(folder, {layer: random_weights(width, layer, d_model=576) for layer in range(30)},
                             activation="topk", k=32)
    return folder


def get_latency(db: Path, n: int = 1000) -> tuple[float, float]:
    """get_feature p50/p95 in ms over random features, in this (warm) process."""
    from featuredb import FeatureStore

    with FeatureStore(db, read_only=True) as store:
        keys = store.con.execute('SELECT "modelId", "layer", "index" FROM features USING SAMPLE 2000 ROWS '
                                 '(reservoir, 7)').fetchall()
        rng = random.Random(0)
        picks = [rng.choice(keys) for _ in range(n)]
        for m, s, i in picks[:50]:
            store.get_feature(m, s, i)
        lat = []
        for m, s, i in picks:
            t = time.perf_counter()
            store.get_feature(m, s, i)
            lat.append((time.perf_counter() - t) * 1000)
    lat.sort()
    return statistics.median(lat), lat[int(0.95 * len(lat))]


def pull_rate(db: Path, out: Path, n: int) -> float:
    """Features/s `featuredb np pull` fetches from `featuredb serve` of this store, into a fresh store."""
    from bench_server import _server

    from featuredb import FeatureStore

    with FeatureStore(db, read_only=True) as store:
        model, source = store.con.execute('SELECT "modelId", "layer" FROM features LIMIT 1').fetchone()
    target = out / "pulled.duckdb"
    target.unlink(missing_ok=True)
    with _server(db, workers=2) as base:
        res = measured(["np", "pull", model, source, "--indices", f"0-{n - 1}", "--base-url", base, "--api-key",
                        "local", "--db", str(target), "--json"])
    return n / res["seconds"]


def main() -> None:
    """Run the steps and print the table, ending with the issue's figures."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=4096, help="features per layer (30 layers)")
    ap.add_argument("--tokens", type=int, default=20_000)
    ap.add_argument("--memory-gb", type=float, default=8.0)
    ap.add_argument("--pull", type=int, default=2000, help="features to pull")
    ap.add_argument("--skip", default="", help="comma list of steps to leave out: label, get, pull")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "scale")
    a = ap.parse_args()
    skip = set(filter(None, a.skip.split(",")))
    a.out.mkdir(parents=True, exist_ok=True)
    tc = transcoders(a.out, a.width)
    db = a.out / f"scale-{a.width}.duckdb"
    for p in (db, Path(str(db) + ".wal")):
        p.unlink(missing_ok=True)
    shutil.rmtree(str(db) + ".tmp", ignore_errors=True)
    n_features = 30 * a.width
    corpus = f"wikitext:{CORPUS}" if CORPUS.exists() else "installed-docs"
    ing = measured(["ingest", "--model", "default", "--transcoders", str(tc), "--corpus", corpus, "--max-tokens",
                    str(a.tokens), "--memory-gb", str(a.memory_gb), "--source-set", "scale", "--db", str(db),
                    "--json"])
    s = ing["json"]
    t = s["timings"]
    rows = [("features", f"{n_features:,} (30 x {a.width:,}), {s['tokens']:,} tokens, budget {a.memory_gb:g} GB"),
            ("ingest passes", f"{s['memory']['passes']}"),
            ("ingest load / pass / write", f"{t['load']:.1f} / {t['pass']:.1f} / {t['write']:.1f} s"),
            ("write: records / commit / reindex", f"{t['records']:.1f} / {t['commit']:.1f} / {t['reindex']:.1f} s"),
            ("ingest peak RSS", f"{ing['peak'] / 1024**3:.2f} GB (goal <= {GOALS['peak']:g} GB at 400,000)"),
            ("write / pass", f"{t['write'] / t['pass']:.2f}x (goal <= {GOALS['write_ratio']}x)")]
    size = db.stat().st_size
    rows.append(("store bytes per feature", f"{size / n_features / 1000:.2f} KB "
                                           f"(goal <= {GOALS['kb_per_feature']:g} KB)"))
    if "label" not in skip:
        lab = measured(["label", "features", "--db", str(db), "--json"])
        idx = measured(["reindex", "--db", str(db), "--json"])
        total = lab["seconds"] + idx["seconds"]
        rows.append(("label + score / reindex", f"{lab['seconds']:.1f} / {idx['seconds']:.1f} s, peak "
                                                f"{max(lab['peak'], idx['peak']) / 1024**3:.2f} GB"))
        rows.append(("label + index", f"{total:.1f} s (goal <= {GOALS['label_s']:g} s at 122,880)"))
    if "get" not in skip:
        p50, p95 = get_latency(db)
        rows.append(("GET feature p50 / p95 (in process)", f"{p50:.2f} / {p95:.2f} ms "
                                                           f"(goal p50 <= {GOALS['get_p50_ms']:g} ms)"))
    if "pull" not in skip:
        rate = pull_rate(db, a.out, a.pull)
        rows.append(("np pull from featuredb serve", f"{rate:,.0f} features/s (goal >= {GOALS['pull_per_s']:,.0f})"))
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
