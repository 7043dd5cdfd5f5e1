"""Graph JSON into `featuredb trace label`: bad graphs, good ones, and faults while the output is written.

Every case runs the real CLI in a subprocess against a 40-feature store built under `work`. A refused
input must be one stderr line with a non-zero exit; an accepted one must write strict JSON (no NaN or
Infinity). Either way the output file must hold its old bytes or complete new ones, and no temp file
(`.{name}.tmp-*`) may stay behind. Output faults (a full disk, a read-only folder, a file-size limit, a
SIGKILL just before the rename) are injected into the same CLI by a small wrapper around its entry point.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

from bench.fault_cases.outcome import DATA_LOSS, Outcome, cli_outcome

AREA = "graph"
MODEL, SET = "demo-model", "demo-transcoder"
OLD_OUTPUT = b'{"old": "output"}'

# Runs the CLI with one output fault: argv = [kind, output folder, featuredb args...].
FAULT_WRAPPER = r"""
import errno, os, signal, sys
kind, folder = sys.argv[1], os.path.realpath(sys.argv[2])
sys.argv = ["featuredb", *sys.argv[3:]]
real_open, real_write, real_replace = os.open, os.write, os.replace
ours = set()
def here(path):
    return os.path.dirname(os.path.realpath(path)) == folder
def fault_open(path, flags, mode=0o777, *a, **k):
    if kind == "erofs" and here(path) and flags & os.O_CREAT:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
    fd = real_open(path, flags, mode, *a, **k)
    if here(path):
        ours.add(fd)
    return fd
def fault_write(fd, data):
    if kind == "enospc" and fd in ours:
        if len(data) > 1:
            return real_write(fd, bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real_write(fd, data)
def fault_replace(src, dst, *a, **k):
    if kind == "sigkill" and here(src):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst, *a, **k)
os.open, os.write, os.replace = fault_open, fault_write, fault_replace
from featuredb.cli.root import main
main()
"""


def _node(node_id: str, feature: int | None, layer: str, pos: int, kind: str, clerp: str = "") -> dict[str, Any]:
    return {"node_id": node_id, "feature": feature, "layer": layer, "ctx_idx": pos, "feature_type": kind,
            "token_prob": 0.0, "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0, "jsNodeId": node_id,
            "clerp": clerp, "influence": 0.5, "activation": 1.0}


def good_graph() -> dict[str, Any]:
    """A circuit-tracer-shaped graph of the bench store's features: an embedding, 6 features at layer 6, a logit."""
    nodes = [_node("E_1_1", 1, "E", 1, "embedding"), _node("31_5_1", 5, "31", 1, "logit", 'Output " x"'),
             _node("0_6_1", -1, "6", 1, "mlp reconstruction error")]
    links = []
    for i in range(1, 7):
        feature = (6 + i) * (6 + i + 1) // 2 + i  # circuit-tracer's Cantor pairing of (layer 6, index i)
        nodes.append(_node(f"6_{i}_1", feature, "6", 1, "cross layer transcoder"))
        links += [{"source": "E_1_1", "target": f"6_{i}_1", "weight": 1.0 if i < 4 else -1.0},
                  {"source": f"6_{i}_1", "target": "31_5_1", "weight": 0.5}]
    return {"metadata": {"slug": "bench", "scan": MODEL, "transcoder_list": [], "prompt_tokens": ["a", " b"],
                         "prompt": "a b", "node_threshold": 0.8, "schema_version": 1,
                         "feature_details": {"neuronpedia_source_set": SET}},
            "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
            "nodes": nodes, "links": links}


def _mutated(change: Callable[[dict[str, Any]], Any]) -> Callable[[], str]:
    def text() -> str:
        g = good_graph()
        change(g)
        return json.dumps(g)  # NaN and Infinity come out as the bare tokens Python's json writes
    return text


def _set(path: tuple[Any, ...], value: Any) -> Callable[[], str]:
    def change(g: dict[str, Any]) -> None:
        target = g
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return _mutated(change)


def _deep(levels: int) -> str:
    g = json.dumps(good_graph())
    return g[:-1] + ', "extra": ' + "[" * levels + "]" * levels + "}"


def _dup_feature(g: dict[str, Any]) -> None:
    g["nodes"].append(dict(g["nodes"][3]))


def _drop_node_id(g: dict[str, Any]) -> None:
    del g["nodes"][3]["node_id"]


def _legacy_id_unparseable(g: dict[str, Any]) -> None:
    """Without schema_version 1 a feature node's id is its only name."""
    del g["metadata"]["schema_version"]
    g["nodes"][3]["node_id"] = "6_x_1"


def _legacy_id_5000_digits(g: dict[str, Any]) -> None:
    del g["metadata"]["schema_version"]
    g["nodes"][3]["node_id"] = "9" * 5000 + "_1_1"


def _saved_by_frontend(g: dict[str, Any]) -> None:
    """qParams as circuit-tracer's frontend saves them (URL-parameter strings) and an error id equal to a feature's."""
    g["qParams"] = {"pinnedIds": "6_1_1,6_2_1", "supernodes": json.dumps([["mine", "6_1_1", "6_2_1"]]),
                    "clerps": "[]", "linkType": "both", "clickedId": None, "sg_pos": "", "pruningThreshold": "0.8"}
    g["nodes"].append(_node("6_1_1", -1, "1", 1, "mlp reconstruction error"))


# name -> graph file bytes, for inputs that must be refused
BAD: dict[str, Callable[[], str | bytes]] = {
    "qparams-json-string-of-object": _set(("qParams",), json.dumps({"pinnedIds": []})),
    "qparams-null": _set(("qParams",), None),
    "qparams-list": _set(("qParams",), []),
    "link-weight-nan": _set(("links", 0, "weight"), float("nan")),
    "link-weight-infinity": _set(("links", 1, "weight"), float("inf")),
    "link-weight-1e400": lambda: json.dumps(good_graph()).replace('"weight": 0.5', '"weight": 1e400', 1),
    "node-influence-nan": _set(("nodes", 3, "influence"), float("nan")),
    "node-influence-minus-infinity": _set(("nodes", 4, "influence"), float("-inf")),
    "duplicate-feature-node-ids": _mutated(_dup_feature),
    "node-without-node_id": _mutated(_drop_node_id),
    "node-id-integer": _set(("nodes", 3, "node_id"), 61),
    "feature-abc": _set(("nodes", 3, "feature"), "abc"),
    "feature-node-id-unparseable": _mutated(_legacy_id_unparseable),
    "feature-node-id-5000-digits": _mutated(_legacy_id_5000_digits),
    "nodes-object": _set(("nodes",), {"a": 1}),
    "nodes-string": _set(("nodes",), "[]"),
    "links-object": _set(("links",), {}),
    "links-null": _set(("links",), None),
    "link-to-missing-node": _set(("links", 0, "target"), "6_39_9"),
    "node-not-object": _set(("nodes", 2), "0_6_1"),
    "ctx_idx-negative": _set(("nodes", 3, "ctx_idx"), -1),
    "ctx_idx-string": _set(("nodes", 3, "ctx_idx"), "1"),
    "supernodes-number": _set(("qParams", "supernodes"), 5),
    "supernodes-list-of-strings": _set(("qParams", "supernodes"), ["a", "b"]),
    "supernodes-member-not-string": _set(("qParams", "supernodes"), [["label", 7]]),
    "supernodes-empty-group": _set(("qParams", "supernodes"), [[]]),
    "supernodes-broken-json-string": _set(("qParams", "supernodes"), "[[\"a\", "),
    "pinnedIds-object": _set(("qParams", "pinnedIds"), {"a": 1}),
    "clerps-not-pairs": _set(("qParams", "clerps"), [["only one"]]),
    "metadata-list": _set(("metadata",), []),
    "metadata-scan-empty": _set(("metadata", "scan"), ""),
    "clerp-lone-surrogate": lambda: json.dumps(good_graph()).replace('"clerp": ""', '"clerp": "\\ud800"', 1),
    "deep-nesting-100000-lists": lambda: _deep(100_000),
    "deep-nesting-200-lists": lambda: _deep(200),
    "top-level-deep-nesting": lambda: "[" * 100_000 + "]" * 100_000,
    "top-level-list": lambda: "[]",
    "empty-file": lambda: "",
    "not-utf8": lambda: b'{"metadata": {"slug": "\xff\xfe"}}',
    "integer-of-5000-digits": lambda: json.dumps(good_graph()).replace('"ctx_idx": 1', '"ctx_idx": ' + "9" * 5000, 1),
}
# name -> graph file text, for inputs that must be labelled
GOOD: dict[str, Callable[[], str | bytes]] = {
    "circuit-tracer-shaped": lambda: json.dumps(good_graph()),
    "saved-by-circuit-tracer-frontend": _mutated(_saved_by_frontend),
    "weights-near-float-max": lambda: json.dumps(good_graph()).replace('"weight": 1.0', '"weight": 1.7e308'),
    "utf8-bom-and-odd-unicode": lambda: "\ufeff" + _set(("nodes", 3, "clerp"), "\u202e\x00 \U0001f600 \u0301")(),
}


def build_store(work: Path) -> Path:
    """A 40-feature store (demo-model / 6-demo-transcoder), as the tests' fixture makes it."""
    from featuredb import FeatureStore
    from featuredb.formats.neuronpedia_import import import_neuronpedia
    from featuredb.synthetic_export import generate_export

    db = work / "store.duckdb"
    if not db.exists():
        export = generate_export(work / "export", model=MODEL, source=f"6-{SET}", n_features=40, n_activations=6,
                                 ctx_len=8, n_top=4, progress=False)
        with FeatureStore(db) as store:
            import_neuronpedia(store, export, progress=False)
    return db


def _strict_json(text: bytes) -> str | None:
    """Why `text` is not strict JSON (NaN, Infinity or malformed), or None."""
    def refuse(token: str) -> None:
        raise ValueError(f"holds {token}")
    try:
        json.loads(text, parse_constant=refuse)
    except ValueError as e:
        return str(e)[:80]
    return None


def _leftovers(folder: Path, out: Path) -> list[str]:
    """Anything but the output in its own folder: temp files a run left behind."""
    return sorted(p.name for p in folder.iterdir() if p.name != out.name)


def _run(args: list[str], *, fault: str | None = None, folder: Path | None = None,
         fsize: int | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", FAULT_WRAPPER, fault, str(folder)] if fault else [sys.executable, "-m",
                                                                                     "featuredb.cli"]
    limit = (lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))) if fsize else None
    return subprocess.run(cmd + args, capture_output=True, text=True, timeout=300, preexec_fn=limit)


def _folder(work: Path, name: str, data: str | bytes, old: bytes | None) -> tuple[Path, Path]:
    """The case's folder: the graph file written, and the output folder made, holding `old` when given."""
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    src, out = folder / "graph.json", folder / "out" / "labelled.json"
    src.write_bytes(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
    out.parent.mkdir(exist_ok=True)
    if old is not None:
        out.write_bytes(old)
    return src, out


def _judge(name: str, proc: subprocess.CompletedProcess[str], out: Path, *, should_fail: bool,
           left_behind: str) -> Outcome:
    """The CLI's outcome, or DATA_LOSS when a temp file stays beside the output (`left_behind` names it)."""
    outcome = cli_outcome(AREA, name, proc, should_fail=should_fail)
    left = [] if outcome.failed else _leftovers(out.parent, out)
    return Outcome(AREA, name, DATA_LOSS, f"{left_behind} {left[0]}") if left else outcome


def _case(work: Path, db: Path, name: str, data: str | bytes, *, should_fail: bool, fault: str | None = None,
          fsize: int | None = None, old: bytes | None = None) -> Outcome:
    """Write the graph, run `trace label` (with `fault`), and classify; output must be old bytes or whole new JSON."""
    src, out = _folder(work, name, data, old)
    proc = _run(["trace", "label", str(src), "-o", str(out), "--db", str(db)], fault=fault, folder=out.parent,
                fsize=fsize)
    outcome = _judge(name, proc, out, should_fail=should_fail, left_behind="temp file left behind:")
    if outcome.failed:
        return outcome
    now = out.read_bytes() if out.exists() else None
    if proc.returncode != 0 and now != old:
        return Outcome(AREA, name, DATA_LOSS, "a refused run changed the output file")
    if proc.returncode == 0:
        why = _strict_json(now or b"")
        if why:
            return Outcome(AREA, name, DATA_LOSS, f"output is not strict JSON: {why}")
    return outcome


def _sigkill_then_rerun(work: Path, db: Path) -> Outcome:
    """SIGKILL just before the rename: the old output stays; the next run cleans the orphan temp and writes."""
    name = "output-sigkill-before-rename"
    src, out = _folder(work, name, json.dumps(good_graph()), OLD_OUTPUT)
    args = ["trace", "label", str(src), "-o", str(out), "--db", str(db)]
    killed = _run(args, fault="sigkill", folder=out.parent)
    if killed.returncode != -9:
        return Outcome(AREA, name, DATA_LOSS, f"the fault did not fire (exit {killed.returncode})")
    if out.read_bytes() != OLD_OUTPUT:
        return Outcome(AREA, name, DATA_LOSS, "the killed run changed the output file")
    outcome = _judge(name, _run(args), out, should_fail=False, left_behind="the next run left the orphan temp")
    if outcome.failed:
        return outcome
    why = _strict_json(out.read_bytes())
    return Outcome(AREA, name, DATA_LOSS, f"output is not strict JSON: {why}") if why else outcome


def cases(work: Path) -> Iterator[Outcome]:
    """Every bad and good graph input, then every output fault, through the real `trace label` CLI."""
    work.mkdir(parents=True, exist_ok=True)
    db = build_store(work)
    for name, make in BAD.items():
        yield _case(work, db, name, make(), should_fail=True, old=OLD_OUTPUT)
    for name, make in GOOD.items():
        yield _case(work, db, name, make(), should_fail=False)
    good = json.dumps(good_graph())
    yield _case(work, db, "output-disk-full", good, should_fail=True, fault="enospc", old=OLD_OUTPUT)
    yield _case(work, db, "output-read-only-folder", good, should_fail=True, fault="erofs", old=OLD_OUTPUT)
    yield _case(work, db, "output-over-file-size-limit", good, should_fail=True, fsize=1024, old=OLD_OUTPUT)
    yield _sigkill_then_rerun(work, db)


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory(prefix="fault-graphs-") as tmp:
        for o in cases(Path(tmp)):
            print(f"{o.kind:16} {o.case:36} {o.detail}")
