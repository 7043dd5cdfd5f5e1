"""Benchmark `featuredb ingest --ray` on a local Ray cluster against plain `featuredb ingest`, in the same run.

Random TopK-32 transcoders on all 30 layers of the default model (SmolLM2-135M), WikiText-2. Each run is its
own process and writes its own store; the stores are checked equal row for row before the figures print.

    .venv/bin/python bench/bench_ray.py                          # 30 x 1,024 features, 8,192 tokens
    .venv/bin/python bench/bench_ray.py --width 4096 --tokens 20000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_scale import CORPUS, measured, transcoders  # noqa: E402


def _differing_rows(a: Path, b: Path) -> int:
    """Rows of `features` and `activations` in one store and not the other (DuckDB does the comparison)."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    con.execute(f"ATTACH '{a}' AS a (READ_ONLY)")
    con.execute(f"ATTACH '{b}' AS b (READ_ONLY)")
    diff = 0
    for t in ("features", "activations"):
        for x, y in (("a", "b"), ("b", "a")):
            diff += con.execute(f"SELECT count(*) FROM (SELECT * FROM {x}.{t} EXCEPT ALL SELECT * FROM {y}.{t})"
                                ).fetchone()[0]
    con.close()
    return diff


def main() -> None:
    """Plain ingest, then --ray with 1 and 2 local workers; print tokens/s, merge time and the ratio to plain."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=1024, help="features per layer (30 layers)")
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "ray")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    tc = transcoders(ROOT / "bench" / "out" / "scale", a.width)
    corpus = f"wikitext:{CORPUS}" if CORPUS.exists() else "installed-docs"
    base = ["ingest", "--model", "default", "--transcoders", str(tc), "--corpus", corpus, "--max-tokens",
            str(a.tokens), "--source-set", "ray", "--json"]
    runs = {"plain ingest": [], "ray, 1 worker": ["--ray", "--workers", "1", "--shards", "2"],
            "ray, 2 workers": ["--ray", "--workers", "2", "--shards", "4"]}
    results, stores = {}, {}
    for name, extra in runs.items():
        db = a.out / f"{name.replace(' ', '').replace(',', '-')}.duckdb"
        db.unlink(missing_ok=True)
        res = measured([*base, "--db", str(db), *extra, "--state-dir", str(a.out / "states")] if extra
                       else [*base, "--db", str(db)])
        results[name], stores[name] = res, db
    for name, db in stores.items():
        if (n := _differing_rows(stores["plain ingest"], db)):
            raise SystemExit(f"{name}: {n:,} rows differ from plain ingest")
    plain = results["plain ingest"]
    plain_rate = plain["json"]["tokens"] / plain["seconds"]
    print(f"{30 * a.width:,} features (30 x {a.width:,}), {plain['json']['tokens']:,} tokens, 2 cores; "
          f"stores equal row for row")
    print(f"{'run':<16} {'wall s':>8} {'pass s':>8} {'merge+write s':>14} {'tok/s end to end':>17} {'tok/s in pass':>14}"
          f" {'vs plain':>9}")
    for name, res in results.items():
        s = res["json"]
        rate = s["tokens"] / res["seconds"]
        t = s["timings"]
        passed = t["shards"] if "shards" in t else t["pass"]  # with --ray: the shard tasks, model loads included
        merge = t["merge"] if "merge" in t else t["write"]  # the merge reloads the model and writes the store
        print(f"{name:<16} {res['seconds']:>8.1f} {passed:>8.1f} {merge:>14.1f} {rate:>17,.0f} "
              f"{s['tokens'] / passed:>14,.0f} {rate / plain_rate:>8.2f}x")
    two = results["ray, 2 workers"]
    print(f"ray with 2 workers vs plain ingest, end to end: "
          f"{(two['json']['tokens'] / two['seconds']) / plain_rate:.2f}x the tokens/s")


if __name__ == "__main__":
    main()
