"""Benchmark the store: import rate, file size per feature, get_feature latency.

Generates a synthetic Neuronpedia export (default 100,000 features x 20 activations x 64 tokens,
one explanation each), imports it into a fresh DuckDB file, then times get_feature on 1,000 random
features in the same (warm) process.

    .venv/bin/python bench/bench_store.py [--features 100000] [--out bench/out]
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from featuredb import FeatureStore  # noqa: E402
from featuredb.formats.neuronpedia_import import import_neuronpedia  # noqa: E402
from featuredb.synthetic_export import generate_export  # noqa: E402

MODEL, SOURCE = "bench-model", "12-bench-transcoder"


def main() -> None:
    """Run the benchmark and print a table ending with the issue's figures."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", type=int, default=100_000)
    ap.add_argument("--activations", type=int, default=20)
    ap.add_argument("--ctx-len", type=int, default=64)
    ap.add_argument("--lookups", type=int, default=1000)
    ap.add_argument("--out", default="bench/out")
    args = ap.parse_args()

    out = Path(args.out)
    export = out / f"export-{args.features}x{args.activations}x{args.ctx_len}"
    if not (export / MODEL / SOURCE / "activations").exists():
        shutil.rmtree(export, ignore_errors=True)
        t = time.perf_counter()
        generate_export(export, model=MODEL, source=SOURCE, n_features=args.features,
                        n_activations=args.activations, ctx_len=args.ctx_len)
        print(f"generated export in {time.perf_counter() - t:.1f}s", file=sys.stderr)
    export_bytes = sum(p.stat().st_size for p in export.rglob("*") if p.is_file())
    db = out / "bench.duckdb"
    for p in (db, Path(str(db) + ".wal")):
        p.unlink(missing_ok=True)

    with FeatureStore(db) as store:
        report = import_neuronpedia(store, export)
    act_rows = report.rows["activations"]
    size = db.stat().st_size

    with FeatureStore(db, read_only=True) as store:
        sizes = store.con.execute(
            "SELECT table_name, sum(estimated_size) FROM duckdb_tables() GROUP BY 1").fetchall()
        rng = random.Random(0)
        picks = [rng.randrange(args.features) for _ in range(args.lookups)]
        for i in picks[:50]:  # warm-up
            store.get_feature(MODEL, SOURCE, i)
        lat = []
        for i in picks:
            t = time.perf_counter()
            f = store.get_feature(MODEL, SOURCE, i)
            lat.append((time.perf_counter() - t) * 1000)
            assert len(f.activations) == args.activations
        col_bytes = store.con.execute("""
            SELECT column_name, sum(compressed_size) FROM (
              SELECT s.column_name, s.block_id, max(s.segment_type) AS t, 262144 AS compressed_size
              FROM pragma_storage_info('activations') s WHERE s.block_id IS NOT NULL GROUP BY ALL)
            GROUP BY 1 ORDER BY 2 DESC LIMIT 4""").fetchall()

    lat.sort()
    p50 = statistics.median(lat)
    p95 = lat[int(0.95 * len(lat)) - 1]
    rows = [
        ("features", f"{args.features:,}"),
        ("activation rows", f"{act_rows:,}"),
        ("export size (gz)", f"{export_bytes / 1e6:,.1f} MB"),
        ("import wall time", f"{report.seconds:.1f} s"),
        ("DuckDB file size", f"{size / 1e6:,.1f} MB"),
        ("activations blocks by column", ", ".join(f"{c} {b / 1e6:.0f} MB" for c, b in col_bytes)),
        ("get_feature p95", f"{p95:.2f} ms"),
        ("file bytes per feature", f"{size / args.features:,.0f}"),
        ("import activation rows/s", f"{act_rows / report.seconds:,.0f}  (goal >= 50,000)"),
        ("get_feature p50", f"{p50:.2f} ms  (goal <= 2 ms)"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"{'metric':<{width}}  value")
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    del sizes


if __name__ == "__main__":
    main()
