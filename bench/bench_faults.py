"""Run the whole fault matrix of issue 17 and count what happened.

Bad import folders, hostile graph files, hostile HTTP requests and load against `featuredb serve` and
`trace serve`, escapes through `featuredb query`, hostile servers for the Neuronpedia client, and SIGKILL at
named points of import, pull, ingest, train and `trace label` followed by the same command again.

    .venv/bin/python bench/bench_faults.py [--quick] [--only import,graph,...] [--out bench/out/faults] [--json]

Prints one row per boundary and a total: inputs tried, clear errors, accepted, tracebacks, data-loss cases,
security failures and 5xx. The goal is 0 in the last four columns. Failures are listed under the table.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from fault_cases.outcome import KINDS, Outcome  # noqa: E402


def _pull_kills(work: Path) -> Iterator[Outcome]:
    """Kill `np pull` against a real `featuredb serve` standing in for neuronpedia.org."""
    from fault_cases.kills import MODEL, SOURCE, pull_cases
    from fault_cases.servers import running
    from featuredb import FeatureStore
    from featuredb.formats.neuronpedia_import import import_neuronpedia
    from featuredb.synthetic_export import generate_export

    export = generate_export(work / "remote-export", model=MODEL, source=SOURCE, n_features=300, n_activations=6,
                             ctx_len=16, progress=False)
    with FeatureStore(work / "remote.duckdb") as store:
        import_neuronpedia(store, export, progress=False)
    with running(["serve", "--db", str(work / "remote.duckdb")], "/openapi.json") as (base, _):
        yield from pull_cases(work, base)


def _label_kills(work: Path) -> Iterator[Outcome]:
    """Kill `trace label` before and while it writes its output."""
    from fault_cases.graphs import build_store, good_graph
    from fault_cases.kills import graph_label_cases

    graph = work / "graph.json"
    graph.write_text(json.dumps(good_graph()))
    yield from graph_label_cases(work, graph, build_store(work))


AREAS = {  # area -> "module:function" under bench/, imported only when the area runs
    "import": "fault_cases.imports:cases", "graph": "fault_cases.graphs:cases", "serve": "fault_cases.servers:cases",
    "query": "fault_cases.store_queries:cases", "client": "fault_cases.client_headers:cases",
    "kill-import": "fault_cases.kills:import_cases", "kill-pull": "bench_faults:_pull_kills",
    "kill-label": "bench_faults:_label_kills", "kill-train-ingest": "fault_cases.kills:train_and_ingest_cases",
}


def _area(name: str) -> Callable[[Path], Iterator[Outcome]]:
    module, func = AREAS[name].split(":")
    if module == "bench_faults":
        return globals()[func]
    return getattr(importlib.import_module(module), func)


def main() -> None:
    """Run every area, print the table and exit non-zero when any failure was counted."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="Leave out the train and ingest kills (tiny model).")
    ap.add_argument("--only", help="Comma-separated areas to run.")
    ap.add_argument("--out", default="bench/out/faults")
    ap.add_argument("--json", action="store_true", help="Print every outcome as JSON instead of the table.")
    args = ap.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    chosen = args.only.split(",") if args.only else [a for a in AREAS if not (args.quick and a == "kill-train-ingest")]
    unknown = [a for a in chosen if a not in AREAS]
    if unknown:
        ap.error(f"unknown area {unknown[0]!r}; choose from {', '.join(AREAS)}")
    outcomes: list[Outcome] = []
    seconds: dict[str, float] = {}
    for name in chosen:
        work = out / name
        work.mkdir(parents=True)
        t0 = time.perf_counter()
        outcomes.extend(_area(name)(work))
        seconds[name] = time.perf_counter() - t0
        print(f"  {name}: done in {seconds[name]:.0f} s", file=sys.stderr)
    if args.json:
        print(json.dumps([o.__dict__ for o in outcomes], indent=2))
    else:
        _table(outcomes, chosen, seconds)
    sys.exit(1 if any(o.failed for o in outcomes) else 0)


def _table(outcomes: list[Outcome], chosen: list[str], seconds: dict[str, float]) -> None:
    heads = ["tried", "clear errors", "accepted", "tracebacks", "data loss", "security", "5xx"]
    print(f"| {'area':<18} | " + " | ".join(heads) + " | seconds |")
    print("|" + "---|" * (len(heads) + 2))
    by_area: dict[str, Counter[str]] = {}
    for o in outcomes:
        by_area.setdefault(o.area, Counter())[o.kind] += 1
    total: Counter[str] = Counter()
    for area, counts in by_area.items():
        total.update(counts)
        print(f"| {area:<18} | {sum(counts.values())} | " + " | ".join(str(counts[k]) for k in
              ("clear_error", "accepted", "traceback", "data_loss", "security_failure", "5xx")) + " | |")
    print(f"| {'**total**':<18} | {sum(total.values())} | " + " | ".join(str(total[k]) for k in
          ("clear_error", "accepted", "traceback", "data_loss", "security_failure", "5xx")) +
          f" | {sum(seconds.values()):.0f} |")
    failed = [o for o in outcomes if o.failed]
    for o in failed:
        print(f"  FAIL {o.area} / {o.case}: {o.kind}: {o.detail}")
    print(f"\ninputs tried {sum(total.values())}, clear errors {total['clear_error']}, tracebacks "
          f"{total['traceback']}, data loss {total['data_loss']}, security failures {total['security_failure']}, "
          f"5xx {total['5xx']}  (goal: 0 / 0 / 0 / 0)")
    assert set(total) <= set(KINDS)


if __name__ == "__main__":
    main()
