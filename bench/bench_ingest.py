"""Benchmark ingestion: SmolLM2-135M, a 4,096-feature TopK transcoder on each of 4 layers.

Reports tokens/s, the ratio of ingest time to a bare forward pass to the last hooked layer plus
transcoder encode (same windows and batch size, measured in the same run), and peak RSS of separate
ingest processes at 50,000 and 200,000 tokens.

    .venv/bin/python bench/bench_ingest.py [--tokens 50000] [--big-tokens 200000] [--device cuda]

On a machine without the store's packages or the model (the GPU machine), `--random-model DIR` builds
SmolLM2's architecture from DIR's config.json and tokenizer with random weights (same compute), and
`--pass-only` times the pass without writing to the store (the write is CPU work, as on any machine).
`--layers all` hooks all 30 layers (122,880 features) instead of four.

`--compare REPS` times, in one process on the same windows, the bare baseline and the pass with each state
update path (sparse, dense op by op, dense as CUDA graphs, and the default that times both dense paths),
median of REPS rounds after a warm-up round; the short separate processes above vary too much on a GPU:

    python3 bench/bench_ingest.py --compare 3 --device cuda --batch 64 --random-model DIR --layers all
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

LAYERS = [3, 7, 11, 15]
SHARED = ROOT.parent / "shared" / "corpus" / "wikitext-2"


def _transcoders(out: Path, layers: list[int]) -> Path:
    from tiny_model import random_weights, write_circuit_tracer

    out = out.with_name(f"{out.name}-{len(layers)}")
    if not (out / "config.yaml").exists():
        write_circuit_tracer(out, {layer: random_weights(4096, layer, d_model=576) for layer in layers},
                             activation="topk", k=32)
    return out


def _corpus() -> str | None:
    return str(SHARED) if SHARED.exists() else None


def _random_model(src: Path, out: Path) -> str:
    """SmolLM2's architecture and tokenizer from `src`, random weights (the same compute as the real model)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    target = out / "random-smollm2"
    if not (target / "config.json").exists():
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(src)).save_pretrained(target)
        AutoTokenizer.from_pretrained(src).save_pretrained(target)
    return str(target)


def _compare(tokens: int, device: str | None, batch: int, out: Path, model: str, corpus: str | None,
             layers: list[int], reps: int) -> dict[str, float]:
    """In one process, on the same windows, alternate: bare forward + encode, and the pass with the sparse state
    update, the dense update run op by op, the dense update replayed as CUDA graphs (captured anew in each pass,
    as a real run does), and the default (which times the two dense paths and keeps the faster). Medians."""
    import functools
    import statistics

    import torch

    import ingest.ingest_pass as ingest_pass
    from ingest.feature_state import LayerState
    from ingest.harvest import Harvester
    from ingest.ingest_pass import IngestConfig, IngestPass

    cfg = IngestConfig(transcoders=[str(_transcoders(out / "tc", layers))], model=model, corpus=corpus,
                       max_tokens=tokens, ctx_len=128, batch_size=batch, device=device, source_set="bench4k")
    ing = IngestPass(cfg, None, progress=False)
    runner, update, chosen = ingest_pass.StepRunner, LayerState.update, []

    def baseline() -> None:
        harvester = Harvester.for_transcoders(ing.lm.model, ing.tset.transcoders)
        for _, windows, _ in ing.batches():  # tokenised again, as the pass does
            captured = harvester.run(torch.tensor(windows, dtype=torch.long).to(ing.lm.device))
            for t in ing.tset.transcoders:
                t.encode(captured[(t.layer, t.hook_in)].float())
        harvester.close()

    def run_pass(choice: str | None, dense: bool | None = None) -> None:
        ing.begin(layers)
        ingest_pass.StepRunner = functools.partial(runner, choice=choice)
        LayerState.update = functools.partialmethod(update, dense=dense)  # type: ignore[method-assign]
        try:
            ing.run(None, 1 << 30)
        finally:
            ingest_pass.StepRunner, LayerState.update = runner, update
        chosen.append(ing.steps.choice or "?")

    variants = {"baseline": baseline, "sparse": lambda: run_pass("plain", False),
                "dense": lambda: run_pass("plain", True), "graphed": lambda: run_pass("graphed"),
                "default": lambda: run_pass(None)}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for rep in range(reps + 1):  # the first round warms up (kernels compiled and cached) and is dropped
        for name, fn in variants.items():
            if ing.lm.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if ing.lm.device.type == "cuda":
                torch.cuda.synchronize()
            if rep:
                times[name].append(time.perf_counter() - t0)
    res = {f"t_{k}": statistics.median(v) for k, v in times.items()}
    res["tokens"] = ing.progress.windows_seen * cfg.ctx_len
    res["chosen"] = chosen[-1]  # type: ignore[assignment]
    return res


def worker(mode: str, tokens: int, device: str | None, batch: int, out: Path, model: str,
           corpus: str | None, layers: list[int], reps: int = 3) -> dict[str, float]:
    """One measurement in this process: 'ingest' (the whole run), 'pass' (no store write), 'baseline', or
    'compare' (every state-update path, `_compare`)."""
    import torch

    from ingest.harvest import Harvester
    from ingest.ingest_pass import IngestConfig, IngestPass

    if mode == "compare":
        return _compare(tokens, device, batch, out, model, corpus, layers, reps)
    cfg = IngestConfig(transcoders=[str(_transcoders(out / "tc", layers))], model=model, corpus=corpus,
                       max_tokens=tokens, ctx_len=128, batch_size=batch, device=device, source_set="bench4k")
    res: dict[str, float] = {}
    if mode == "ingest":
        from ingest.run import run_ingest

        s = run_ingest(cfg, str(out / f"ingest-{tokens}.duckdb"), checkpoint=None, progress=False)
        res = {"tokens": s.tokens, "seconds": s.seconds, **{f"t_{k}": v for k, v in s.timings.items()}}
    elif mode == "pass":
        t0 = time.perf_counter()
        ing = IngestPass(cfg, None, progress=False)
        t1 = time.perf_counter()
        ing.run(None, 1 << 30)
        if ing.lm.device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        res = {"tokens": ing.stats.tokens, "seconds": t2 - t0, "t_load": t1 - t0, "t_pass": t2 - t1, "t_write": 0.0}
    else:
        ing = IngestPass(cfg, None, progress=False)
        harvester = Harvester.for_transcoders(ing.lm.model, ing.tset.transcoders)
        t0 = time.perf_counter()
        n = 0
        for _, windows, _ in ing.batches():
            captured = harvester.run(torch.tensor(windows, dtype=torch.long).to(ing.lm.device))
            for t in ing.tset.transcoders:
                t.encode(captured[(t.layer, t.hook_in)].float())
            n += len(windows) * cfg.ctx_len
        if ing.lm.device.type == "cuda":
            torch.cuda.synchronize()
        res = {"tokens": n, "seconds": time.perf_counter() - t0}
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return res


def _spawn(mode: str, tokens: int, args: argparse.Namespace) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--worker", mode, "--tokens", str(tokens), "--batch", str(args.batch),
           "--out", args.out] + (["--device", args.device] if args.device else []) \
        + (["--random-model", args.random_model] if args.random_model else []) \
        + (["--corpus", args.corpus] if args.corpus else []) + ["--layers", args.layers] \
        + (["--compare", str(args.compare)] if args.compare else [])
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{mode} worker failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    """Run the workers and print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=50_000)
    ap.add_argument("--big-tokens", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--device")
    ap.add_argument("--out", default="bench/out/ingest")
    ap.add_argument("--worker", choices=["ingest", "pass", "baseline", "compare"])
    ap.add_argument("--random-model", help="config/tokenizer folder: random weights, same architecture")
    ap.add_argument("--corpus", help="corpus path (default ../shared/corpus/wikitext-2 or installed docs)")
    ap.add_argument("--pass-only", action="store_true", help="time the pass without the store write")
    ap.add_argument("--compare", type=int, metavar="REPS",
                    help="time baseline and each state update in one process, REPS rounds after a warm-up")
    ap.add_argument("--layers", default=",".join(map(str, LAYERS)), help="hooked layers, or 'all' (default 3,7,11,15)")
    args = ap.parse_args()
    layers = list(range(30)) if args.layers == "all" else [int(x) for x in args.layers.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.worker:
        model = _random_model(Path(args.random_model), out) if args.random_model else "default"
        print(json.dumps(worker(args.worker, args.tokens, args.device, args.batch, out, model,
                                args.corpus or _corpus(), layers, args.compare or 3)))
        return
    _transcoders(out / "tc", layers)
    if args.compare:
        r = _spawn("compare", args.tokens, args)
        base = r["t_baseline"]
        print(f"device {args.device or 'default'}, {len(layers)} x 4096 features, {r['tokens']:,} tokens, "
              f"batch {args.batch}, median of {args.compare} rounds in one process")
        for name, label in [("baseline", "bare forward + encode"), ("sparse", "pass, sparse update (CPU path)"),
                            ("dense", "pass, dense update op by op"), ("graphed", "pass, dense update as CUDA graphs"),
                            ("default", f"pass, default (timed, chose {r['chosen']})")]:
            print(f"{label:<40}{r['t_' + name]:7.2f} s  {r['t_' + name] / base:6.3f}x baseline")
        print(f"{'ratio pass / baseline (default)':<40}{r['t_default'] / base:15.3f}x  (goal <= 1.15)")
        return
    mode = "pass" if args.pass_only else "ingest"
    base = _spawn("baseline", args.tokens, args)
    small = _spawn(mode, args.tokens, args)
    big = _spawn(mode, args.big_tokens, args) if args.big_tokens else None
    rows = [
        ("device", args.device or "default (cuda if present)"),
        ("layers x features", f"{len(layers)} x 4096 (TopK k=32)"),
        ("tokens", f"{small['tokens']:,}"),
        ("bare forward + encode", f"{base['seconds']:.1f} s ({base['tokens'] / base['seconds']:,.0f} tok/s)"),
        ("ingest: load / pass / write", f"{small['t_load']:.1f} / {small['t_pass']:.1f} / {small['t_write']:.1f} s"),
        ("ingest pass / baseline", f"{small['t_pass'] / base['seconds']:.3f}"),
        ("ingest tokens/s (whole run)", f"{small['tokens'] / small['seconds']:,.0f}"),
    ]
    if big:
        rows += [("peak RSS at %s tokens" % f"{small['tokens']:,}", f"{small['peak_rss_mb']:,.0f} MB"),
                 ("peak RSS at %s tokens" % f"{big['tokens']:,}", f"{big['peak_rss_mb']:,.0f} MB"),
                 ("RSS growth 50k -> 200k", f"{(big['peak_rss_mb'] / small['peak_rss_mb'] - 1) * 100:+.1f}% "
                                           "(goal within 10%)")]
    if args.pass_only:
        rows.append(("ratio pass / baseline", f"{small['t_pass'] / base['seconds']:.3f}  (goal <= 1.15)"))
    else:
        rows.append(("ratio (pass + write) / baseline",
                     f"{(small['t_pass'] + small['t_write']) / base['seconds']:.3f}  (goal <= 1.15)"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
