"""Benchmark the circuit-tracing loop on the demo's transcoders: circuit-tracer's attribution, its scores, and
featuredb's labelling and grouping overhead.

    .venv/bin/python bench/bench_graph.py [--transcoders data/transcoders/smollm2-demo] [--db data/featuredb.duckdb]

Needs what `make demo` builds (all 30 layers trained and indexed). Per prompt: attribution time, nodes and links
of the pruned graph, replacement and completeness scores (circuit-tracer's compute_graph_scores), the distinct
layers among the pruned graph's feature nodes, and label + supernode time.
Goals on "Fact: Dallas is in the state of": completeness >= 0.80, replacement >= 0.40, feature nodes from at least
15 of the 30 layers including layers 20-29, featuredb's overhead <= 10% of the attribution time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS = {"dallas-texas": "Fact: Dallas is in the state of", "france-paris": "The capital of France is"}


def main() -> None:
    """Attribute, score, label and group each prompt; print the table and the goal line."""
    from featuredb.store.feature_store import FeatureStore
    from tracer.attribution_bridge import AttributeOptions, CircuitTracerSession, model_for_transcoders, \
        transcoder_config
    from tracer.trace_label import trace_label

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--transcoders", default=str(ROOT / "data" / "transcoders" / "smollm2-demo"))
    ap.add_argument("--db", default=str(ROOT / "data" / "featuredb.duckdb"))
    ap.add_argument("--max-feature-nodes", type=int, default=2000, help="0: every active feature")
    ap.add_argument("--device")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "graph"))
    args = ap.parse_args()
    if not (Path(args.transcoders) / "config.yaml").exists() or not Path(args.db).exists():
        sys.exit(f"{args.transcoders} or {args.db} is missing: run `make demo` first")
    cfg = transcoder_config(args.transcoders)
    model_path, model_id = model_for_transcoders(cfg)
    t0 = time.perf_counter()
    session = CircuitTracerSession(args.transcoders, model_path=model_path, model_id=model_id,
                                   set_name=str(cfg["set_name"]),
                                   options=AttributeOptions(max_feature_nodes=args.max_feature_nodes or None), device=args.device)
    load = time.perf_counter() - t0
    rows = []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with FeatureStore(args.db, read_only=True) as store:
        for slug, prompt in PROMPTS.items():
            made = session.attribute(prompt, slug)
            t0 = time.perf_counter()
            labelled = trace_label(store, made.graph, where=slug)
            label_s = time.perf_counter() - t0
            (out / f"{slug}.json").write_text(json.dumps(made.graph.to_json()))
            s = made.summary()
            # featuredb's own work in the loop: mapping, labels and supernodes, plus the metadata it adds
            overhead = label_s
            rows.append({**s, "label_and_group_s": label_s, "overhead_ratio": overhead / made.timings["attribute"],
                         "unmapped": len(labelled.report.unmapped), "supernodes": len(labelled.supernodes)})
    print(f"circuit-tracer on {args.transcoders} ({model_id}), max {args.max_feature_nodes} feature nodes; "
          f"model + transcoders load {load:.1f} s")
    print(f"{'prompt':<34} | {'top prediction':>16} | {'attr s':>6} | {'nodes':>5} | {'links':>5} | {'repl.':>5} | "
          f"{'compl.':>6} | {'layers':>6} | {'20-29':>5} | {'label+group s':>13} | {'overhead':>8}")
    for r in rows:
        layers = r["feature_layers"]
        top = f"{r['top_predictions'][0][0]!r} {r['top_predictions'][0][1]:.2f}"
        print(f"{r['prompt']:<34} | {top:>16} | {r['timings']['attribute']:>6.1f} | {r['nodes']:>5} | {r['links']:>5} | "
              f"{r['replacement_score']:>5.3f} | {r['completeness_score']:>6.3f} | {len(layers):>6} | "
              f"{sum(1 for x in layers if x >= 20):>5} | {r['label_and_group_s']:>13.2f} | {r['overhead_ratio']:>7.1%}")
    d = rows[0]
    layers = d["feature_layers"]
    print(f"goals on {d['prompt']!r}: completeness {d['completeness_score']:.3f} (>= 0.80), replacement "
          f"{d['replacement_score']:.3f} (>= 0.40), {len(layers)} layers with features (>= 15, incl. 20-29: "
          f"{sum(1 for x in layers if x >= 20)} of them), featuredb overhead {d['overhead_ratio']:.1%} (<= 10%)")
    (out / "bench.json").write_text(json.dumps({"load_s": load, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
