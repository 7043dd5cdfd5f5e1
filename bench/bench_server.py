"""Benchmark the local server and the client: pulls at concurrency 1 and 16, GET feature under 16 clients.

    .venv/bin/python bench/bench_server.py [--features 10000] [--requests 2000] [--only export|client]

`--only export` runs just the circuit-tracer export rows: the per-feature JSON layout against the compact one
(index.json.gz + layer_{L}.bin) on a demo-sized store (`--export-features`, default 2,048 as `sample-export`).

`--only pages` runs just the web UI rows: time to first byte (httpx) and time to load in headless Chromium (the
browser's own navigation timing, load event end) of feature pages and search pages of every mode, on the
500,000-feature store of bench_search.py (`bench/out/search/search-500000.duckdb`, generated when absent).

`--only client` runs just Neuronpedia's official Python client (`neuronpedia` 1.2.1): its GET feature from one
client, one request at a time, against plain httpx on a kept-alive connection in the same run.

GET feature is measured with one and with two server worker processes (`featuredb serve --workers`), without
and with pre-serialised feature documents (`featuredb reindex --feature-docs`).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from featuredb import FeatureStore  # noqa: E402
from featuredb.store.feature_docs import build_feature_docs  # noqa: E402
from featuredb.formats.circuit_tracer_compact import export_circuit_tracer_compact  # noqa: E402
from featuredb.formats.circuit_tracer_export import export_circuit_tracer  # noqa: E402
from featuredb.formats.neuronpedia_import import import_neuronpedia  # noqa: E402
from featuredb.neuronpedia import NeuronpediaClient  # noqa: E402
from featuredb.neuronpedia.sync import pull_features  # noqa: E402
from featuredb.synthetic_export import generate_export  # noqa: E402
from bench.fault_cases.servers import running  # noqa: E402

MODEL, SOURCE = "bench-model", "12-bench-transcoder"


async def _hammer(base: str, n: int, clients: int, n_features: int) -> list[float]:
    rng = random.Random(0)
    ids = [rng.randrange(n_features) for _ in range(n)]
    lat: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in ids:
        queue.put_nowait(i)

    async def worker() -> None:
        async with httpx.AsyncClient(timeout=30) as c:
            while not queue.empty():
                i = queue.get_nowait()
                t = time.perf_counter()
                r = await c.get(f"{base}/api/feature/{MODEL}/{SOURCE}/{i}")
                lat.append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200

    await asyncio.gather(*(worker() for _ in range(clients)))
    return lat


@contextmanager
def _server(db: Path, workers: int) -> Iterator[str]:
    """`featuredb serve` in a subprocess; yields its base URL once it answers."""
    with running(["serve", "--db", str(db), "--workers", str(workers)], "/openapi.json") as (base, _):
        yield base


def _folder_size(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def bench_export(out: Path, n_features: int) -> list[tuple[str, str]]:
    """Rows for `featuredb export circuit-tracer` on a demo-sized store: per-feature JSON against compact."""
    db = out / f"export-{n_features}.duckdb"
    if not db.exists():
        generate_export(out / f"export-src-{n_features}", model=MODEL, source=SOURCE, n_features=n_features,
                        n_activations=20, ctx_len=64, progress=False)
        with FeatureStore(db) as store:
            import_neuronpedia(store, out / f"export-src-{n_features}", progress=False)
    rows = []
    for layout in ("json", "compact"):
        target = out / f"ct-{layout}"
        shutil.rmtree(target, ignore_errors=True)
        with FeatureStore(db, read_only=True) as store:
            t = time.perf_counter()
            if layout == "json":
                export_circuit_tracer(store, target, progress=False)
            else:
                export_circuit_tracer_compact(store, target, progress=False)
            seconds = time.perf_counter() - t
        size, files = _folder_size(target)
        rows.append((f"export circuit-tracer --layout {layout}, {n_features:,} features",
                     f"{seconds:.2f} s = {n_features / seconds:,.0f} features/s, {size / 1e6:.1f} MB in "
                     f"{files:,} file(s)"))
    return rows


def bench_official_client(db: Path, docs_db: Path, n: int, n_features: int) -> list[tuple[str, str]]:
    """Rows for Neuronpedia's own client against `featuredb serve`: GET feature, one client, one at a time."""
    import contextlib
    import io

    from neuronpedia.requests.base_request import NPRequest
    from neuronpedia.requests.feature_request import FeatureRequest

    rng = random.Random(0)
    rows = []
    for served, label in ((db, "rows"), (docs_db, "feature docs")):
        with _server(served, workers=1) as base:
            NPRequest.BASE_URL = base + "/api"
            request = FeatureRequest(api_key="local")
            indexes = [rng.randrange(n_features) for _ in range(n)]
            with contextlib.redirect_stdout(io.StringIO()):  # the client prints a line per request
                for i in indexes[:20]:
                    request.get(MODEL, SOURCE, i)
                t = time.perf_counter()
                for i in indexes:
                    request.get(MODEL, SOURCE, i)
                official = n / (time.perf_counter() - t)
            with httpx.Client() as plain:
                t = time.perf_counter()
                for i in indexes:
                    plain.get(f"{base}/api/feature/{MODEL}/{SOURCE}/{i}", headers={"accept-encoding": "gzip"}).json()
                baseline = n / (time.perf_counter() - t)
        rows.append((f"official client FeatureRequest.get, 1 client, {label}",
                     f"{official:,.0f} requests/s ({official / baseline:.2f}x plain httpx: {baseline:,.0f}/s)"))
    return rows


PAGE_MODES = ("text", "semantic", "auto", "token", "logit")
PAGE_GOALS = {"feature page": 300, "search": 500}  # ms to load in Chromium, on 2 cores


def _ttfb(client: httpx.Client, url: str) -> float:
    """Milliseconds until the first byte of the body arrives."""
    t = time.perf_counter()
    with client.stream("GET", url) as r:
        chunks = r.iter_raw()
        next(chunks, b"")
        first = time.perf_counter()
        for _ in chunks:
            pass
        assert r.status_code == 200, (url, r.status_code)
    return (first - t) * 1000


def _load_ms(page: object, url: str) -> float:
    """The page's load time in Chromium: navigation start to the end of its load event (browser timing)."""
    page.call("Page.navigate", url=url)  # type: ignore[attr-defined]
    return float(page.wait_for(  # type: ignore[attr-defined]
        f"(() => {{ const n = performance.getEntriesByType('navigation')[0]; return location.href === {url!r} && n "
        "&& n.loadEventEnd > 0 ? n.loadEventEnd - n.startTime : 0; })()"))


def bench_pages(n: int = 40, real_db: Path | None = None) -> list[tuple[str, str]]:
    """Feature and search pages of `featuredb serve` on the 500,000-feature search store: TTFB and load; with
    `real_db` (default: the demo's store, when there is one) also feature pages of real size."""
    import tempfile
    import urllib.parse

    sys.path.insert(0, str(ROOT / "bench"))
    sys.path.insert(0, str(ROOT / "tests"))
    from bench_search import build_store, vocabulary
    from chromium_page import chromium_tab

    vocab = vocabulary()
    store = ROOT / "bench" / "out" / "search" / "search-500000.duckdb"
    if not store.exists():
        store.parent.mkdir(parents=True, exist_ok=True)
        print(f"generating the 500,000-feature store at {store} (once) ...", flush=True)
        build_store(store, 500_000, vocab)
    rng = random.Random(7)
    features = [f"/bench-model/{i % 30}-bench-16k/{i // 30}" for i in rng.sample(range(500_000), n)]
    queries = {m: [] for m in PAGE_MODES}
    for mode in PAGE_MODES:
        for _ in range(n // 4):
            words = " ".join(rng.sample(vocab[:2000], 2)) if mode in ("text", "semantic", "auto") \
                else " " + rng.choice(vocab[:2000])
            queries[mode].append("/search?" + urllib.parse.urlencode({"q": words, "mode": mode}))
    rows: list[tuple[str, str]] = []
    with _server(store, workers=1) as base, httpx.Client(base_url=base, timeout=60) as client:
        for mode in PAGE_MODES:  # warm-up: search context, MiniLM, DuckDB's caches
            client.get(queries[mode][0])
        client.get(features[0])
        ttfb = {"feature page": [_ttfb(client, u) for u in features[1:]]}
        for mode in PAGE_MODES:
            ttfb[f"search, {mode}"] = [_ttfb(client, u) for u in queries[mode][1:]]
        loads: dict[str, list[float]] = {}
        with tempfile.TemporaryDirectory() as work, chromium_tab(Path(work)) as page:
            page.call("Page.enable")
            _load_ms(page, base + "/search")
            rng.shuffle(features)
            loads["feature page"] = [_load_ms(page, base + u) for u in features[1:]]
            for mode in PAGE_MODES:
                loads[f"search, {mode}"] = [_load_ms(page, base + u) for u in queries[mode][1:]]
    worst_search = 0.0
    for name in ttfb:
        t, ld = sorted(ttfb[name]), sorted(loads[name])
        goal = PAGE_GOALS["feature page" if name == "feature page" else "search"]
        p50 = statistics.median(ld)
        if name != "feature page":
            worst_search = max(worst_search, p50)
        rows.append((f"{name}: TTFB p50 / p95", f"{statistics.median(t):.1f} / {t[int(0.95 * len(t)) - 1]:.1f} ms"))
        rows.append((f"{name}: load in Chromium p50 / p95",
                     f"{p50:.1f} / {ld[int(0.95 * len(ld)) - 1]:.1f} ms (goal <= {goal}: "
                     f"{'met' if p50 <= goal else 'MISSED'})"))
    if real_db is not None and real_db.exists():  # pages of real size: 128-token examples, top and intervals
        from featuredb.server.page_layout import feature_url

        with FeatureStore(real_db, read_only=True) as st:
            picked = st.con.execute('SELECT "modelId", layer, "index" FROM features WHERE frac_nonzero > 0 '
                                    "ORDER BY hash(feature_key) LIMIT ?", [n]).fetchall()
            n_acts = st.con.execute("SELECT count(*) / count(DISTINCT feature_key), avg(len(tokens)) "
                                    "FROM activations").fetchone()
        urls = [feature_url(m, s, i) for m, s, i in picked]
        with _server(real_db, workers=1) as base, httpx.Client(base_url=base, timeout=60) as client:
            client.get(urls[0])
            t = sorted(_ttfb(client, u) for u in urls[1:])
            with tempfile.TemporaryDirectory() as work, chromium_tab(Path(work)) as page:
                page.call("Page.enable")
                _load_ms(page, base + urls[0])
                ld = sorted(_load_ms(page, base + u) for u in urls[1:])
        name = f"feature page, {real_db.name} ({n_acts[0]:.0f} examples x {n_acts[1]:.0f} tokens)"
        rows.append((f"{name}: TTFB p50 / p95", f"{statistics.median(t):.1f} / {t[int(0.95 * len(t)) - 1]:.1f} ms"))
        rows.append((f"{name}: load p50 / p95", f"{statistics.median(ld):.1f} / {ld[int(0.95 * len(ld)) - 1]:.1f} ms "
                     f"(goal <= 300: {'met' if statistics.median(ld) <= 300 else 'MISSED'})"))
    feat = statistics.median(loads["feature page"])
    rows.append(("web UI, 500,000 features: feature page / slowest search mode load p50",
                 f"{feat:.0f} ms / {worst_search:.0f} ms (goals 300 / 500)"))
    return rows


def _served_stores(out: Path, n_features: int) -> tuple[Path, Path]:
    """The benchmark store and a copy with feature documents, built once."""
    db = out / "served.duckdb"
    if not db.exists():
        generate_export(out / "export", model=MODEL, source=SOURCE, n_features=n_features, n_activations=20,
                        ctx_len=64, progress=False)
        with FeatureStore(db) as store:
            import_neuronpedia(store, out / "export", progress=False)
    docs_db = out / "served-docs.duckdb"
    if not docs_db.exists():
        shutil.copyfile(db, docs_db)
        with FeatureStore(docs_db) as store:
            build_feature_docs(store, progress=False)
    return db, docs_db


def _print(rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def main() -> None:
    """Build a store, serve it, pull from it twice and load-test GET feature; time the circuit-tracer exports."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--export-features", type=int, default=2048, help="store size for the export rows")
    ap.add_argument("--only", choices=["export", "client", "pages"], help="run only these rows")
    ap.add_argument("--out", default="bench/out/server")
    ap.add_argument("--pages-db", default=str(ROOT / "data" / "featuredb.duckdb"),
                    help="a store of real size for the feature-page rows (default: the demo's, when present)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.only == "export":
        _print(bench_export(out, args.export_features))
        return
    if args.only == "pages":
        _print(bench_pages(real_db=Path(args.pages_db)))
        return
    if args.only == "client":
        _print(bench_official_client(*_served_stores(out, args.features), 500, args.features))
        return
    db = out / "served.duckdb"
    if not db.exists():
        generate_export(out / "export", model=MODEL, source=SOURCE, n_features=args.features, n_activations=20,
                        ctx_len=64, progress=False)
        with FeatureStore(db) as store:
            import_neuronpedia(store, out / "export", progress=False)
    rows = []
    with _server(db, workers=1) as base:
        wanted = [(MODEL, SOURCE, i) for i in range(args.features)]
        for conc in (1, 16):
            target = out / f"pulled-{conc}.duckdb"
            target.unlink(missing_ok=True)
            with NeuronpediaClient(base, concurrency=conc) as client, FeatureStore(target) as store:
                rep = pull_features(client, store, wanted, batch=64, progress=False)
            rows.append((f"pull {args.features:,} features, concurrency {conc}",
                         f"{rep.seconds:.1f} s = {rep.fetched / rep.seconds:,.0f} features/s"))
    docs_db = out / "served-docs.duckdb"
    shutil.copyfile(db, docs_db)
    with FeatureStore(docs_db) as store:
        built = build_feature_docs(store, progress=False)
    rows.append(("feature docs (reindex --feature-docs)",
                 f"{built['seconds']:.1f} s, {built['gzip_bytes'] / 1e6:.1f} MB gzipped "
                 f"(store {db.stat().st_size / 1e6:.0f} -> {docs_db.stat().st_size / 1e6:.0f} MB)"))
    for served, workers, docs in ((db, 1, False), (db, 2, False), (docs_db, 1, True), (docs_db, 2, True)):
        with _server(served, workers=workers) as base:
            asyncio.run(_hammer(base, 100, 16, args.features))  # warm-up
            t = time.perf_counter()
            lat = asyncio.run(_hammer(base, args.requests, 16, args.features))
            wall = time.perf_counter() - t
        lat.sort()
        name = (f"GET feature, 16 clients, {workers} worker{'s' if workers > 1 else ''}"
                f"{', feature docs' if docs else ''}")
        rows.append((f"{name}: p50", f"{statistics.median(lat):.1f} ms"))
        rows.append((f"{name}: p95", f"{lat[int(0.95 * len(lat)) - 1]:.1f} ms (goal <= 50)"))
        rows.append((f"{name}: throughput", f"{len(lat) / wall:,.0f} requests/s (goal >= 500)"))
    rows += bench_official_client(db, docs_db, 500, args.features)
    rows += bench_export(out, args.export_features)
    rows += bench_pages(real_db=Path(args.pages_db))
    _print(rows)


if __name__ == "__main__":
    main()
