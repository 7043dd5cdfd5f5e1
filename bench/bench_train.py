"""Benchmark `featuredb train` on every layer of the default model: speed, and quality a circuit tracer can trust.

    .venv/bin/python bench/bench_train.py [--device cuda] [--corpus PATH] [--skip-large]

1. Optimiser speed in token-layers/s, before (dense autograd through all B x F activations) and after (sparse
   BatchTopK decode and backward), on the same harvested pairs of one layer, in this run.
2. The demo profile (ingest/demo_profiles.py): all 30 layers, wall time of the whole `train` (harvest, training,
   evaluation, spliced-in loss) and the per-layer table.
3. The issue's large setting: 4,096 features x 24,000 tokens, 4 epochs, all 30 layers.

Goals: every layer FVU < skip-only FVU and < 0.5; all-layer CE loss recovered >= 0.8; demo profile <= 360 s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def optimiser_speed(lm, corpus: str | None, n_features: int, steps: int = 30) -> dict[str, float]:  # noqa: ANN001
    """token-layers/s of the dense and the sparse path on one layer's pairs."""
    from ingest.training_data import collect_pairs
    from ingest.transcoder_training import SkipTranscoder, TrainSettings

    pairs, _ = collect_pairs(lm, [15], corpus=corpus, train_tokens=8_000, test_tokens=256, progress=False)
    p = pairs[15]
    out = {}
    for name, sparse in (("before (dense)", False), ("after (sparse)", True)):
        s = TrainSettings(n_features=n_features, sparse=sparse)
        m = SkipTranscoder(p.x_train.shape[1], s)
        m.initialise(p.x_train, p.y_train)
        opt = torch.optim.Adam(m.parameters(), lr=s.lr)
        g = torch.Generator().manual_seed(0)
        for i in range(steps + 3):
            if i == 3:
                t0 = time.perf_counter()
            idx = torch.randint(len(p.x_train), (s.batch_tokens,), generator=g)
            loss, _ = m.loss(p.x_train[idx], p.y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), s.clip_grad)
            opt.step()
            m.normalise_decoder()
        out[name] = steps * s.batch_tokens / (time.perf_counter() - t0)
    return out


def train_table(title: str, cfg, progress: bool) -> dict:  # noqa: ANN001
    """Run one TrainRun and print its per-layer table; returns the summary dict with the wall time."""
    from ingest.training_table import print_training_table
    from ingest.train_run import TrainRun

    t0 = time.perf_counter()
    run = TrainRun(cfg, progress=progress)
    s = run.run()
    wall = time.perf_counter() - t0
    print(f"\n{title}: {len(s.layers)} layers, {cfg.settings.n_features} features, k={cfg.settings.k}, "
          f"{cfg.settings.epochs} epochs, {s.train_tokens:,} training tokens, on {run.lm.device}")
    print_training_table(s, echo=print)
    t = s.timings
    print(f"wall {wall:.1f} s = load {wall - t['total']:.1f} + harvest {t['harvest']:.1f} + train {t['train']:.1f} "
          f"+ evaluate {t['evaluate']:.1f} + spliced loss {t['spliced_loss']:.1f}; "
          f"{s.tokens_per_second:,.0f} token-layers/s")
    bad = [r.layer for r in s.layers if not (r.fvu < r.skip_only_fvu and r.fvu < 0.5)]
    return {**s.as_dict(), "wall_s": wall, "layers_missing_fvu_goal": bad}


def main() -> None:
    """Run the three parts and print the tables and the goal lines."""
    from ingest.demo_profiles import PROFILES
    from ingest.model_loading import load_model
    from ingest.train_run import TrainConfig
    from ingest.transcoder_training import TrainSettings
    from ingest.default_model import ensure_default_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device")
    ap.add_argument("--corpus")
    ap.add_argument("--skip-large", action="store_true", help="skip part 3 (4,096 features x 24,000 tokens)")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "train"))
    args = ap.parse_args()
    model = str(ensure_default_model())
    results: dict = {}

    lm = load_model(model, device=args.device, dtype="float32")
    speed = {f: optimiser_speed(lm, args.corpus, f) for f in (2048, 4096)}
    del lm
    print("optimiser speed, token-layers/s on one layer (same pairs, same run)")
    print(f"{'features':>8} | {'before (dense)':>14} | {'after (sparse)':>14} | {'speed-up':>8}")
    for f, r in speed.items():
        print(f"{f:>8} | {r['before (dense)']:>14,.0f} | {r['after (sparse)']:>14,.0f} | "
              f"{r['after (sparse)'] / r['before (dense)']:>7.2f}x")
    results["optimiser_speed"] = speed

    demo = PROFILES["demo"]
    cfg = demo.train_config(str(Path(args.out) / "demo"), model=model, corpus=args.corpus, device=args.device)
    results["demo"] = train_table("demo profile", cfg, args.progress)
    if not args.skip_large:
        large = TrainConfig(out=str(Path(args.out) / "large"), model=model, corpus=args.corpus, train_tokens=24_000,
                            test_tokens=4_000, settings=replace(TrainSettings(), n_features=4096, epochs=4),
                            device=args.device)
        results["large"] = train_table("4,096 features x 24,000 tokens", large, args.progress)

    print("\ngoals")
    for name, r in ((k, results[k]) for k in ("demo", "large") if k in results):
        print(f"{name:>5}: layers with FVU >= skip-only or >= 0.5: {r['layers_missing_fvu_goal'] or 'none'} | "
              f"max FVU {max(x['fvu'] for x in r['layers']):.3f} | max dead {max(x['dead_fraction'] for x in r['layers']):.1%} | "
              f"max duplicates {max(x['duplicate_fraction'] for x in r['layers']):.1%} | "
              f"all-layer CE loss recovered {r['all_layers']['recovered']:.1%} (goal >= 80%)")
    print(f"demo profile, 30 layers: {results['demo']['wall_s']:.0f} s wall (goal <= 360 s)")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "bench.json").write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
