"""Benchmark ingestion: SmolLM2-135M, a 4,096-feature TopK transcoder on each of 4 layers.

Reports tokens/s, the ratio of ingest time to a bare forward pass to the last hooked layer plus
transcoder encode (same windows and batch size, measured in the same run), and peak RSS of separate
ingest processes at 50,000 and 200,000 tokens.

    .venv/bin/python bench/bench_ingest.py [--tokens 50000] [--big-tokens 200000] [--device cuda]

On a machine without the store's packages or the model (the GPU machine), `--random-model DIR` builds
SmolLM2's architecture from DIR's config.json and tokenizer with random weights (same compute), and
`--pass-only` times the pass without writing to the store (the write is CPU work, as on any machine).
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


def _transcoders(out: Path) -> Path:
    from tiny_model import random_weights, write_circuit_tracer

    if not (out / "config.yaml").exists():
        write_circuit_tracer(out, {layer: random_weights(4096, layer, d_model=576) for layer in LAYERS},
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


def worker(mode: str, tokens: int, device: str | None, batch: int, out: Path, model: str,
           corpus: str | None) -> dict[str, float]:
    """One measurement in this process: 'ingest' (the whole run), 'pass' (no store write) or 'baseline'."""
    import torch

    from ingest.harvest import Harvester
    from ingest.ingest_pass import IngestConfig, IngestPass

    cfg = IngestConfig(transcoders=[str(_transcoders(out / "tc"))], model=model, corpus=corpus,
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
        + (["--corpus", args.corpus] if args.corpus else [])
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
    ap.add_argument("--worker", choices=["ingest", "pass", "baseline"])
    ap.add_argument("--random-model", help="config/tokenizer folder: random weights, same architecture")
    ap.add_argument("--corpus", help="corpus path (default ../shared/corpus/wikitext-2 or installed docs)")
    ap.add_argument("--pass-only", action="store_true", help="time the pass without the store write")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.worker:
        model = _random_model(Path(args.random_model), out) if args.random_model else "default"
        print(json.dumps(worker(args.worker, args.tokens, args.device, args.batch, out, model,
                                args.corpus or _corpus())))
        return
    _transcoders(out / "tc")
    mode = "pass" if args.pass_only else "ingest"
    base = _spawn("baseline", args.tokens, args)
    small = _spawn(mode, args.tokens, args)
    big = _spawn(mode, args.big_tokens, args) if args.big_tokens else None
    rows = [
        ("device", args.device or "default (cuda if present)"),
        ("layers x features", f"{len(LAYERS)} x 4096 (TopK k=32)"),
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
    rows.append(("ratio (pass + write) / baseline",
                 f"{(small['t_pass'] + small['t_write']) / base['seconds']:.3f}  (goal <= 1.15)"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
