"""Benchmark labels: today's baseline against the new one (embedding score), explain throughput, scoring time.

    .venv/bin/python bench/bench_labels.py [--db data/featuredb.duckdb] [--model smollm2-135m-instruct]
                                           [--old-baseline 77d5965] [--explain-features 200]

On a copy of the store (the demo's, by default): label every feature with the baseline of commit
`--old-baseline` (read from git) and score those labels with the offline embedding score (delphi's embedding
scorer with the local MiniLM: AUROC of the label against the feature's activating windows vs other features'),
then the same with the current baseline. Then `featuredb explain`'s throughput against a loopback
OpenAI-compatible server that answers at once (concurrency 1 and 16), and the embedding score's time per 1,000
features. Ends with the issue's figure: new mean - old mean (goal >= 0.1).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from featuredb import FeatureStore  # noqa: E402
from featuredb.labels import baseline  # noqa: E402
from featuredb.labels.chat_endpoint import ChatEndpoint  # noqa: E402
from featuredb.labels import embedding_score  # noqa: E402
from featuredb.labels.explain import explain_features_async  # noqa: E402
from featuredb.labels.label_rule import BASELINE_TYPE  # noqa: E402


def old_baseline(commit: str):  # type: ignore[no-untyped-def]
    """The baseline labeller module as it was at `commit`."""
    text = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:featuredb/labels/baseline.py"],
                          capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "old_baseline.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("old_baseline", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["old_baseline"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def baseline_scores(db: Path, labeller, model: str, sources: list[str] | None,  # type: ignore[no-untyped-def]
                    refresh: bool) -> tuple[float, float, int, float, float, float]:
    """(mean, share >= 0.7, labels scored, labelling s, search refresh s, scoring s) of one labeller's baseline
    on a copy of db: every feature of the model is labelled, those of `sources` (default: all) are scored. With
    `refresh`, the search index is rebuilt first, as `featuredb label features` does (it embeds every label,
    which the score then reuses); without, the score embeds the labels itself."""
    with FeatureStore(db) as store:
        t = time.perf_counter()
        labeller.label_features(store, model=model)
        label_s = time.perf_counter() - t
        t = time.perf_counter()
        if refresh:
            store.refresh_search(only_if_dirty=True)
        refresh_s = time.perf_counter() - t
        cached = embedding_score._cached_explanation_vectors
        if not refresh:  # cold: whatever index the store has, the score embeds every label itself
            embedding_score._cached_explanation_vectors = lambda store, descs: ([], np.zeros((0, 384), np.float32))
        try:
            score_s = embedding_score.score_embedding(store, model=model, source=sources,
                                                      type_name=BASELINE_TYPE, progress=False).seconds
        finally:
            embedding_score._cached_explanation_vectors = cached
        values = [r[0] for r in store.con.execute(
            'SELECT s.value FROM explanation_scores s JOIN explanations e ON e.id = s."explanationId" '
            'WHERE e."typeName" = ? AND e."modelId" = ?', [BASELINE_TYPE, model]).fetchall()]
    mean = sum(values) / len(values) if values else float("nan")
    share = sum(v >= 0.7 for v in values) / len(values) if values else float("nan")
    return mean, share, len(values), label_s, refresh_s, score_s


def explain_rate(db: Path, model: str, n: int, concurrency: int) -> float:
    """Features explained per second against a loopback OpenAI-shaped server that answers at once."""
    from fake_openai import fake_openai

    with fake_openai(lambda req: "Explanation: the word Texas") as server, FeatureStore(db) as store:
        endpoint = ChatEndpoint(server.url, f"bench-explainer-c{concurrency}", key_env="FEATUREDB_BENCH_NO_KEY",
                                concurrency=concurrency)  # its own model name, so no run skips another's work
        t = time.perf_counter()
        report = asyncio.run(explain_features_async(store, endpoint, model=model, max_features=n, progress=False))
        return report.explained / (time.perf_counter() - t)


def main() -> None:
    """Run the rows and print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default="data/featuredb.duckdb")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--old-baseline", default="77d5965", help="commit whose baseline labeller is 'today's'")
    ap.add_argument("--explain-features", type=int, default=200)
    ap.add_argument("--sources", help="score only these sources (comma-separated), e.g. 6 of the demo's 30 layers "
                                      "= 12,288 features; default: every source")
    args = ap.parse_args()
    src = Path(args.db)
    if not src.exists():
        sys.exit(f"bench_labels: {src}: no store (run `make demo` first, or pass --db)")
    work = Path(tempfile.mkdtemp(prefix="bench-labels-"))
    rows: list[tuple[str, str]] = []
    with FeatureStore(src, read_only=True) as store:
        n_features = store.con.execute('SELECT count(*) FROM features WHERE "modelId" = ?', [args.model]).fetchone()[0]
    results = {}
    for name, labeller in (("old", old_baseline(args.old_baseline)), ("new", baseline)):
        db = work / f"{name}.duckdb"
        shutil.copyfile(src, db)
        mean, share, n, label_s, refresh_s, score_s = baseline_scores(
            db, labeller, args.model, args.sources.split(",") if args.sources else None, refresh=name == "new")
        results[name] = mean
        rows.append((f"{name} baseline ({'commit ' + args.old_baseline if name == 'old' else 'this tree'}): "
                     "embedding score mean / share >= 0.7",
                     f"{mean:.3f} / {share:.1%} of {n:,} labels (labelling all {n_features:,}: {label_s:.1f} s)"))
        per_12k = score_s / max(n, 1) * 12_000
        if name == "old":
            rows.append((f"embedding score of {n:,} labels, cold (embeds the labels and the example windows)",
                         f"{score_s:.1f} s = {score_s / max(n, 1) * 1000:.2f} s per 1,000 ({per_12k:.0f} s per 12,000)"))
        else:
            rows.append((f"search index refresh, as `label features` runs it (embeds all {n_features:,} labels)",
                         f"{refresh_s:.1f} s"))
            rows.append((f"embedding score of {n:,} labels after it (embeds the example windows)",
                         f"{score_s:.1f} s = {score_s / max(n, 1) * 1000:.2f} s per 1,000 (goal: 12,000 in <= 60 s "
                         f"-> {per_12k:.0f} s)"))
    db = work / "explain.duckdb"
    shutil.copyfile(work / "new.duckdb", db)
    for conc in (1, 16):
        rate = explain_rate(db, args.model, args.explain_features, conc)
        rows.append((f"explain, loopback server answering at once, concurrency {conc}", f"{rate:,.0f} features/s"))
    rows.append(("**new - old baseline mean embedding score**",
                 f"**{results['new'] - results['old']:+.3f}** (goal >= +0.1) on {n:,} of the store's "
                 f"{n_features:,} features"))
    width = max(len(k) for k, _ in rows)
    print("| metric | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k:<{width}} | {v} |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
