"""Benchmark `featuredb train` with the demo profile: training tokens/s and held-out FVU per layer.

    .venv/bin/python bench/bench_train.py [--device cuda] [--corpus PATH] [--layers 10,15,20]

Uses the demo profile of the main job (ingest/demo_profiles.py) on the default model and the offline corpus,
and writes the transcoders to bench/out/train.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    """Train the demo profile once and print the table."""
    from ingest.demo_profiles import PROFILES
    from ingest.train_run import TrainRun

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="demo", choices=sorted(PROFILES))
    ap.add_argument("--device")
    ap.add_argument("--corpus")
    ap.add_argument("--layers", help="override the profile's layers, e.g. 10,15,20")
    ap.add_argument("--model", default="default")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "train"))
    args = ap.parse_args()
    profile = PROFILES[args.profile]
    layers = [int(x) for x in args.layers.split(",")] if args.layers else profile.layers
    cfg = profile.train_config(args.out, model=args.model, corpus=args.corpus, device=args.device, layers=layers)
    t0 = time.perf_counter()
    run = TrainRun(cfg, progress=False)
    load_s = time.perf_counter() - t0
    s = run.run()
    harvest_rate = (s.train_tokens + s.test_tokens) / s.timings["harvest"]
    print(f"\nfeaturedb train, profile {args.profile}: {run.lm.model_id} on {run.lm.device}, "
          f"{cfg.settings.n_features} features, k={cfg.settings.k}, {cfg.settings.epochs} epochs")
    print(f"{'layer':>5} | {'FVU':>6} | {'skip-only FVU':>13} | {'L0':>5} | {'dead':>6}")
    for r in s.layers:
        print(f"{r.layer:>5} | {r.fvu:>6.3f} | {r.skip_only_fvu:>13.3f} | {r.l0:>5.1f} | {r.dead_fraction:>6.1%}")
    print(f"model load {load_s:.1f} s | harvest {s.timings['harvest']:.1f} s ({harvest_rate:,.0f} tok/s, "
          f"{len(layers)} layers per forward) | train {s.timings['train']:.1f} s | evaluate {s.timings['evaluate']:.1f} s")
    print(f"training tokens/s (tokens x layers per second of optimisation): {s.tokens_per_second:,.0f}")
    Path(args.out, "bench.json").write_text(json.dumps({**s.as_dict(), "load_s": load_s,
                                                        "harvest_tok_s": harvest_rate}, indent=2))


if __name__ == "__main__":
    main()
