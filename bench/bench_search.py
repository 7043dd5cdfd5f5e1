"""Benchmark concept search: latency per mode on a generated 500,000-feature store, and relevance on the demo store.

    .venv/bin/python bench/bench_search.py [--features 500000] [--queries 200] [--relevance-db data/featuredb.duckdb]

Latency: a store of N features (30 layers; 5 top examples, 10 top logits and one explanation each, explanation
texts drawn from 50,000 distinct phrases over a 5,000-word WikiText vocabulary) is generated once under
bench/out/search; then 200 queries per mode through the warm Python API (p50, p95), and one CLI call each.
Relevance: 20 concept queries on the store `make demo` builds from the default model; a query counts as a hit
when one of its top-5 features peaks on a concept word in at least half of its top examples.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out" / "search"
WIKITEXT = ROOT.parent / "shared" / "corpus" / "wikitext-2" / "test.txt"
MODES = ("text", "semantic", "auto", "token", "logit")
GOALS = {"text": 10.0, "semantic": 30.0, "token": 50.0, "logit": 50.0}
TEMPLATES = ["mentions of {a} and {b}", "the word \"{a}\" in contexts about {b}", "{a} near {b}",
             "references to {a}, often with {b}", "text about {a} ({b})"]
STOP = set("this that with from have were which their there about would other after first these when into "
           "also been more some than only over such they them then what where while most many made".split())

# (query, concept words whose peak tokens show the concept) for the store built by `make demo`
RELEVANCE = [
    ("software license", ["license", "licence", "licensed"]), ("copyright notice", ["copyright", "©"]),
    ("Python programming language", ["python"]), ("installing packages", ["install", "installation", "pip"]),
    ("version numbers", ["version", "versions"]), ("documentation", ["documentation", "docs"]),
    ("GitHub repositories", ["github", "repository"]), ("error handling", ["error", "errors", "exception"]),
    ("web requests and HTTP", ["http", "https", "request", "requests"]), ("JSON data", ["json"]),
    ("operating systems", ["linux", "windows", "macos", "os"]), ("functions", ["function", "functions", "def"]),
    ("testing code", ["test", "tests", "testing", "pytest"]), ("numbers", ["0", "1", "2", "3", "4", "5"]),
    ("dates and years", ["2020", "2021", "2022", "2023", "2024", "2025", "year"]),
    ("URLs and links", ["http", "https", "www", "://", "url"]), ("command line", ["command", "cli", "$"]),
    ("files and paths", ["file", "files", "path"]), ("the model", ["model", "models"]),
    ("support and contributing", ["support", "contribute", "contributing", "contributors"]),
]


def vocabulary(n: int = 5000) -> list[str]:
    """Frequent words of WikiText (or of installed packages' docs when it is absent)."""
    if WIKITEXT.exists():
        text = WIKITEXT.read_text(encoding="utf-8")
    else:
        from ingest.corpus import installed_docs

        text = " ".join(installed_docs())
    counts = Counter(w for w in re.findall(r"[A-Za-z]{4,}", text) if w.lower() not in STOP)
    return [w for w, _ in counts.most_common(n)]


def build_store(path: Path, n: int, vocab: list[str]) -> float:
    """Generate the latency store with SQL straight into the store's write funnel; returns seconds."""
    from featuredb.store.schema import ACTIVATIONS, EXPLANATIONS, FEATURES
    from featuredb.store.feature_store import FeatureStore

    t0 = time.perf_counter()
    v = len(vocab)
    tpl = "[" + ", ".join("'" + t.replace("'", "''") + "'" for t in TEMPLATES) + "]"
    with FeatureStore(path) as store:
        con = store.con
        # One row holding the vocabulary, cross-joined in; w(x) picks a word (a list literal would be rebuilt per row).
        con.execute("CREATE OR REPLACE TEMP TABLE vv AS SELECT ?::VARCHAR[] AS words", [vocab])
        con.execute(f"CREATE OR REPLACE TEMP MACRO w(x) AS vv.words[((x % {v}) + 1)::BIGINT]")
        with store.transaction():
            store.write_select(FEATURES, f"""SELECT 'bench-model' AS "modelId", (i % 30)::VARCHAR || '-bench-16k' AS layer,
                i // 30 AS "index", 'bench-16k' AS "sourceSetName", (hash(i, 'd') % 1000) / 1e5 AS frac_nonzero,
                5.0 + (hash(i, 'm') % 100) / 10 AS "maxActApprox",
                list_transform(range(10), k -> ' ' || w(hash(i, 'p', k))) AS pos_str,
                list_transform(range(10), k -> 1.0 - k / 20) AS pos_values,
                list_transform(range(10), k -> ' ' || w(hash(i, 'n', k))) AS neg_str,
                list_transform(range(10), k -> -1.0 + k / 20) AS neg_values FROM range({n}) t(i), vv""",
                               ["modelId", "layer", "index", "sourceSetName", "frac_nonzero", "maxActApprox",
                                "pos_str", "pos_values", "neg_str", "neg_values"])
            store.write_select(ACTIVATIONS, f"""SELECT 'bench-model' AS "modelId",
                (i % 30)::VARCHAR || '-bench-16k' AS layer, i // 30 AS "index",
                list_transform(range(12), k -> ' ' || w(hash(i, j, k))) AS tokens,
                list_transform(range(12), k -> CASE WHEN k = 6 THEN 10.0 - j ELSE 0.1 END) AS "values",
                10.0 - j AS "maxValue", 6 AS "maxValueTokenIndex", -1.0 AS "binMin", -1.0 AS "binContains"
                FROM range({n}) t(i), range(5) s(j), vv""",
                               ["modelId", "layer", "index", "tokens", "values", "maxValue", "maxValueTokenIndex",
                                "binMin", "binContains"])
            store.write_select(EXPLANATIONS, f"""SELECT 'bench-model' AS "modelId",
                (i % 30)::VARCHAR || '-bench-16k' AS layer, i // 30 AS "index", 'np_max-act' AS "typeName",
                replace(replace({tpl}[(t % 5) + 1], '{{a}}', w(t)), '{{b}}', w(t * 31 + t // {v})) AS description,
                (hash(i, 's') % 100) / 100 AS "scoreV1"
                FROM (SELECT i, (hash(i, 'e') % 50000)::BIGINT AS t FROM range({n}) r(i)), vv""",
                               ["modelId", "layer", "index", "typeName", "description", "scoreV1"])
        store.refresh_search(progress=True)
    return time.perf_counter() - t0


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def latency(path: Path, vocab: list[str], n_queries: int) -> dict[str, dict[str, float]]:
    """p50/p95 per mode through the warm Python API, and one CLI call per mode."""
    from featuredb.search.api import search
    from featuredb.store.feature_store import FeatureStore

    rng = random.Random(0)
    words = vocab[:2000]
    queries = {
        "text": [f"{rng.choice(words)} {rng.choice(words)}" for _ in range(n_queries)],
        "semantic": [f"{rng.choice(words)} and {rng.choice(words)}" for _ in range(n_queries)],
        "auto": [f"{rng.choice(words)} {rng.choice(words)}" for _ in range(n_queries)],
        "token": [" " + rng.choice(words) for _ in range(n_queries)],
        "logit": [rng.choice(words) for _ in range(n_queries)],
    }
    out: dict[str, dict[str, float]] = {}
    with FeatureStore(path) as store:
        store.refresh_search(only_if_dirty=True)  # a store from an older layout is rebuilt once
    with FeatureStore(path, read_only=True) as store:
        search(store, "warm up", mode="auto")
        for mode in MODES:
            times, found = [], 0
            for q in queries[mode]:
                t0 = time.perf_counter()
                hits = search(store, q, mode=mode, limit=10)
                times.append((time.perf_counter() - t0) * 1000)
                found += bool(hits)
            out[mode] = {"p50_ms": statistics.median(times), "p95_ms": _pct(times, 95),
                         "queries_with_hits": found / len(times)}
    for mode in MODES:
        t0 = time.perf_counter()
        res = subprocess.run([str(ROOT / ".venv" / "bin" / "featuredb"), "search", queries[mode][0], "--mode", mode,
                              "--db", str(path), "--json"], capture_output=True, text=True)
        out[mode]["cli_s"] = time.perf_counter() - t0
        if res.returncode != 0:
            raise SystemExit(f"CLI search failed: {res.stderr.strip()}")
    return out


def relevance(path: Path) -> list[tuple[str, bool, str]]:
    """(query, hit?, evidence) for the 20 concept queries on a store built from the default model."""
    from featuredb.search.api import search
    from featuredb.store.feature_store import FeatureStore

    rows = []
    with FeatureStore(path) as store:
        store.refresh_search(only_if_dirty=True)
    with FeatureStore(path, read_only=True) as store:
        for query, words in RELEVANCE:
            hits = search(store, query, limit=5)
            ok, evidence = False, hits[0].label if hits else "-"
            for h in hits:
                peaks = [r[0] for r in store.con.execute(
                    """SELECT lower(trim(tokens["maxValueTokenIndex" + 1])) FROM activations
                       WHERE "modelId" = ? AND layer = ? AND "index" = ? AND "binMin" = -1""",
                    [h.model, h.source, h.index]).fetchall()]
                share = sum(any(w in (p or "") for w in words) for p in peaks) / max(1, len(peaks))
                if share >= 0.5:
                    ok, evidence = True, f"{h.source}/{h.index}: {h.label}"
                    break
            rows.append((query, ok, evidence))
    return rows


def main() -> None:
    """Build (once) and measure."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", type=int, default=500_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--relevance-db", default=str(ROOT / "data" / "featuredb.duckdb"))
    ap.add_argument("--skip-latency", action="store_true")
    args = ap.parse_args()
    results: dict[str, object] = {}
    if not args.skip_latency:
        OUT.mkdir(parents=True, exist_ok=True)
        path = OUT / f"search-{args.features}.duckdb"
        vocab = vocabulary()
        if not path.exists():
            print(f"generating a {args.features:,}-feature store at {path} (once) ...", flush=True)
            results["build_s"] = build_store(path, args.features, vocab)
        lat = latency(path, vocab, args.queries)
        results["latency"] = lat
        print(f"\nsearch latency, {args.features:,} features, {args.queries} queries per mode (warm Python API)")
        print(f"{'mode':<9} | {'p50 ms':>7} | {'p95 ms':>7} | {'goal p50':>8} | {'CLI call s':>10} | with hits")
        for mode in MODES:
            r, goal = lat[mode], GOALS.get(mode)
            met = "-" if goal is None else f"{goal:.0f} {'met' if r['p50_ms'] <= goal else 'MISSED'}"
            print(f"{mode:<9} | {r['p50_ms']:>7.2f} | {r['p95_ms']:>7.2f} | {met:>8} | {r['cli_s']:>10.2f} | "
                  f"{r['queries_with_hits']:.0%}")
    rel_db = Path(args.relevance_db)
    if rel_db.exists():
        rows = relevance(rel_db)
        results["relevance"] = rows
        print(f"\nrelevance on {rel_db} (auto mode, top 5)")
        for q, ok, ev in rows:
            print(f"  {'HIT ' if ok else 'miss'}  {q:<30} {ev[:70]}")
        print(f"relevance hit rate: {sum(ok for _, ok, _ in rows)}/{len(rows)}")
    else:
        print(f"\n(no relevance store at {rel_db}: run `make demo` first)")
    (ROOT / "bench" / "out").mkdir(exist_ok=True)
    (ROOT / "bench" / "out" / "search.json").write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
