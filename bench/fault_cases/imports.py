"""Bad and good Neuronpedia export folders fed to `featuredb import neuronpedia`, and what the store holds after.

Every case runs the real command line on a copy of one store that already holds a baseline import. A refused
import must leave that store as it was; an accepted one must hold the baseline plus exactly the rows the good
lines describe (the last line of a key wins). Anything else is DATA_LOSS, and a traceback is a TRACEBACK.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import duckdb

from .outcome import DATA_LOSS, Outcome, cli_outcome

AREA = "import"
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))  # the bit flip the importer's test refuses too

from bit_flip import flip_a_bit_duckdb_reads_silently  # noqa: E402
BASE_MODEL, BASE_SOURCE = "base-model", "1-base"
M, S = "gpt2-small", "8-res-jb"
Row = tuple[Any, ...]
KEY_LEN = {"features": 3, "activations": 3}  # (modelId, layer, index) / (modelId, layer, id)


@dataclass
class Case:
    """One export folder to import: whether the import must be refused, flags, and the rows its good lines add."""

    name: str
    root: Path
    should_fail: bool
    rows: dict[str, list[Row]] = field(default_factory=lambda: {"features": [], "activations": []})
    flags: tuple[str, ...] = ()
    runs: int = 1  # import the folder this many times

    def features(self, lines: list[tuple[bytes, Row | None]], model: str = M, source: str = S,
                 name: str = "batch-0.jsonl.gz") -> Path:
        """Write a features file; the rows of its good lines are expected in the store."""
        return self._write("features", lines, model, source, name)

    def activations(self, lines: list[tuple[bytes, Row | None]], model: str = M, source: str = S,
                    name: str = "batch-0.jsonl.gz") -> Path:
        """Write an activations file; the rows of its good lines are expected in the store."""
        return self._write("activations", lines, model, source, name)

    def _write(self, table: str, lines: list[tuple[bytes, Row | None]], model: str, source: str, name: str) -> Path:
        path = self.root / model / source / table / name
        path.parent.mkdir(parents=True, exist_ok=True)
        data = b"".join(raw + b"\n" for raw, _ in lines)
        path.write_bytes(gzip.compress(data, mtime=0) if name.endswith(".gz") else data)
        self.rows[table] += [(model, source, *row) for _, row in lines if row is not None]
        return path


def feature(i: int, *, index: Any = None, **fields: Any) -> tuple[bytes, Row]:
    """A good features line and its row (index, frac_nonzero, maxActApprox)."""
    record = {"modelId": M, "layer": S, "index": str(i) if index is None else index, "frac_nonzero": i / 64,
              "maxActApprox": float(i), **fields}
    return json.dumps(record).encode(), (i, record["frac_nonzero"], record["maxActApprox"])


def activation(i: int, j: int, **fields: Any) -> tuple[bytes, Row]:
    """A good activations line and its row (id, index, tokens, values, maxValue)."""
    record = {"id": f"act-{i}-{j}", "index": str(i), "tokens": [" the", f" t{j}"], "values": [0.0, i + j / 8],
              "maxValue": i + j / 8, **fields}
    return json.dumps(record).encode(), (record["id"], i, record["tokens"], record["values"], record["maxValue"])


def bad(line: bytes | str | dict[str, Any]) -> tuple[bytes, None]:
    """A line the import must refuse (or skip)."""
    raw = json.dumps(line).encode() if isinstance(line, dict) else line.encode() if isinstance(line, str) else line
    return raw, None


def with_field(line: tuple[bytes, Row], name: str, json_text: str) -> tuple[bytes, None]:
    """A good line with one field replaced by raw JSON text: a bad line."""
    record = json.loads(line[0])
    record.pop(name, None)
    return json.dumps(record)[:-1].encode() + f', "{name}": {json_text}}}'.encode(), None


# -- the cases -----------------------------------------------------------------------------------------------------

CASES: list[tuple[str, bool, tuple[str, ...], Callable[[Case], None]]] = []  # name, must be refused, flags, build


def register(name: str, *flags: str) -> Callable[[Callable[[Case], None]], Callable[[Case], None]]:
    """Make a builder the case `name`: good/... must be accepted, bad/... refused, and skip/... runs with
    --skip-bad-lines; the flag "twice" imports the folder twice."""
    group = name.split("/")[0]
    flags += ("--skip-bad-lines",) if group == "skip" else ()

    def add(build: Callable[[Case], None]) -> Callable[[Case], None]:
        CASES.append((name, group == "bad", flags, build))
        return build
    return add


@register("good/gzip")
def _good(c: Case) -> None:
    c.features([feature(i) for i in range(20)])
    c.activations([activation(i, j) for i in range(20) for j in range(3)])


@register("good/plain")
def _good_plain(c: Case) -> None:
    c.features([feature(i) for i in range(20)], name="batch-0.jsonl")
    c.activations([activation(i, 0) for i in range(20)], name="batch-0.jsonl")


@register("good/index as number, string, leading zeros")
def _index_forms(c: Case) -> None:
    c.features([feature(1, index=1), feature(2, index="2"), feature(3, index="0003")])


@register("good/unknown fields, missing optional files")
def _unknown_fields(c: Case) -> None:
    c.features([feature(i, brandNewField={"x": [1, None]}, other="?") for i in range(5)])  # no activations: fine


@register("good/empty files")
def _empty_file(c: Case) -> None:
    c.features([feature(i) for i in range(5)])
    (c.root / M / S / "features" / "batch-1.jsonl.gz").write_bytes(b"")
    (c.root / M / S / "activations").mkdir()
    (c.root / M / S / "activations" / "batch-0.jsonl").write_bytes(b"")


@register("good/blank lines")
def _blank_lines(c: Case) -> None:
    c.features([feature(0), (b"", None), (b"  \t", None), feature(1), (b"\r", None)], name="batch-0.jsonl")


@register("good/two models imported twice", "twice")
def _two_models(c: Case) -> None:
    for model in ("model-a", "model-b"):  # the same source and activation ids in both
        c.features([feature(i, modelId=model) for i in range(10)], model=model)
        c.activations([activation(i, 0) for i in range(10)], model=model)


@register("good/duplicate keys: last wins")
def _duplicate_keys(c: Case) -> None:
    first, last = feature(4), feature(4, frac_nonzero=0.5)
    c.features([feature(1), first, feature(2), last])
    c.rows["features"].remove((M, S, *first[1]))  # the last copy of a key wins


@register("good/trailing comma (as DuckDB reads it)")
def _trailing_comma(c: Case) -> None:
    raw, row = feature(7)
    c.features([(raw[:-1] + b",}", row), feature(8)])


def _bad_feature_line(line: tuple[bytes, None], at: int = 13) -> Callable[[Case], None]:
    def build(c: Case) -> None:
        lines: list[tuple[bytes, Row | None]] = [feature(i) for i in range(30)]
        lines[at] = line
        c.features(lines)
    return build


def _bad_activation_line(line: tuple[bytes, None], at: int = 20) -> Callable[[Case], None]:
    def build(c: Case) -> None:
        lines: list[tuple[bytes, Row | None]] = [activation(i, 0) for i in range(40)]
        lines[at] = line
        c.features([feature(i) for i in range(40)])
        c.activations(lines)
    return build


@register("bad/gzip cut off")
def _gzip_cut(c: Case) -> None:
    path = c.activations([activation(i, j) for i in range(400) for j in range(3)])
    path.write_bytes(path.read_bytes()[:-300])
    c.rows["activations"] = []


@register("skip/gzip cut off keeps the lines before")
def _gzip_cut_skipped(c: Case) -> None:
    path = c.activations([activation(i, j) for i in range(400) for j in range(3)])
    data = path.read_bytes()[: 2000]
    path.write_bytes(data)
    whole = zlib.decompressobj(31).decompress(data).count(b"\n")  # the lines before the cut stay
    c.rows["activations"] = c.rows["activations"][:whole]


@register("bad/gzip bit flip DuckDB reads silently")
def _gzip_flip(c: Case) -> None:
    """A flipped bit that DuckDB decodes into other, valid data (only the gzip checksum tells)."""
    path = c.activations([activation(i, j) for i in range(300) for j in range(3)])
    read = (f"SELECT * FROM read_json('{path}', format='newline_delimited', "
            "columns={'id': 'VARCHAR', 'index': 'VARCHAR', 'values': 'DOUBLE[]', 'maxValue': 'DOUBLE'})")
    if not flip_a_bit_duckdb_reads_silently(path, read):
        raise RuntimeError("no silently altering bit flip found")


@register("bad/bytes after the gzip stream")
def _gzip_tail(c: Case) -> None:
    path = c.features([feature(i) for i in range(10)])
    path.write_bytes(path.read_bytes() + b"garbage after the gzip stream")


@register("bad/plain text named .gz")
def _not_gzip(c: Case) -> None:
    path = c.features([feature(i) for i in range(10)])
    path.write_bytes(gzip.decompress(path.read_bytes()))  # plain text named .gz


@register("bad/line naming another model")
def _copied_model(c: Case) -> None:
    c.features([feature(i, modelId="model-a") for i in range(5)], model="model-a")
    shutil.copytree(c.root / "model-a", c.root / "model-b")  # its lines still say model-a


@register("bad/release without name")
def _release_without_name(c: Case) -> None:
    c.features([feature(0)])
    (c.root / M / S / "release.jsonl").write_text(json.dumps({"description": "no name"}) + "\n")


@register("bad/file of one byte")
def _one_byte_file(c: Case) -> None:
    c.features([feature(i) for i in range(5)])
    (c.root / M / S / "activations").mkdir()
    (c.root / M / S / "activations" / "batch-0.jsonl").write_bytes(b"{")  # DuckDB alone reads this as empty


@register("bad/export without records")
def _no_records(c: Case) -> None:
    c.features([(b"", None), (b"  ", None)], name="batch-0.jsonl")


@register("bad/folder without an export")
def _no_export(c: Case) -> None:
    c.root.mkdir(parents=True)


@register("skip/five kinds of bad lines")
def _mixed_skipped(c: Case) -> None:
    lines: list[tuple[bytes, Row | None]] = [activation(i, 0) for i in range(30)]
    lines[3] = bad("{not json")
    lines[9] = with_field(activation(9, 0), "values", "[1, NaN]")
    lines[15] = with_field(activation(15, 0), "tokens", '[{"t": 1}]')
    lines[22] = bad({"id": "x", "tokens": ["a"]})
    lines[27] = (activation(27, 0)[0].replace(b"the", b"th\xff"), None)
    c.activations(lines)


@register("skip/bad byte on line 21 skips one line")
def _bad_byte_skipped(c: Case) -> None:
    lines: list[tuple[bytes, Row | None]] = [activation(i, 0) for i in range(200)]
    lines[20] = (activation(20, 0)[0].replace(b"the", b"th\xff"), None)
    c.activations(lines, name="batch-0.jsonl")


ROW = feature(5)
ACT = activation(20, 0)
GOOD_LINE = {"features": ROW, "activations": ACT}
BAD_LINE_IN = {"features": _bad_feature_line, "activations": _bad_activation_line}
BAD_FIELDS = {  # case name: (file, field, raw JSON): a good line of that file with the field's value replaced
    "index 3.7": ("features", "index", '"3.7"'),
    "index 4.0 as a number": ("features", "index", "4.0"),
    "negative index": ("features", "index", "-1"),
    "index beyond BIGINT": ("features", "index", '"9223372036854775808"'),
    "NaN number": ("activations", "maxValue", "NaN"),
    "Infinity in a list": ("activations", "values", "[0.5, Infinity]"),
    "number overflowing to infinity": ("features", "frac_nonzero", "1e400"),
    "object in tokens": ("activations", "tokens", '[" a", {"t": "b"}]'),
    "list in tokens": ("activations", "tokens", '[" a", ["b"]]'),
    "number in tokens": ("activations", "tokens", '[" a", 5]'),
    "null in a number list": ("activations", "values", "[1.0, null]"),
    "number as a string": ("features", "frac_nonzero", '"0.5"'),
    "boolean as a number": ("features", "maxActApprox", "true"),
    "float in an integer field": ("activations", "maxValueTokenIndex", "2.5"),
    "string in a boolean field": ("features", "hasVector", '"yes"'),
    "unpaired surrogate": ("activations", "tokens", '["\\ud800"]'),
}
BAD_LINES = {  # case name: (file, line): a line that is no good record at all
    "activation without index": ("activations", bad({"id": "x", "tokens": [" a"]})),
    "malformed JSON": ("features", bad('{"index": "5", "frac_nonzero": 0.1')),
    "line not an object": ("features", bad("[1, 2, 3]")),
    "field twice in a line": ("features", bad('{"index": "5", "index": "6"}')),
    "invalid UTF-8": ("activations", (ACT[0].replace(b"the", b"th\xff"), None)),
}
for _name, (_file, _field, _json) in BAD_FIELDS.items():
    register(f"bad/{_name}")(BAD_LINE_IN[_file](with_field(GOOD_LINE[_file], _field, _json)))
for _name, (_file, _line) in BAD_LINES.items():
    register(f"bad/{_name}")(BAD_LINE_IN[_file](_line))


# -- running them --------------------------------------------------------------------------------------------------

SNAPSHOT_SQL = {
    "features": 'SELECT "modelId", "layer", "index", "frac_nonzero", "maxActApprox" FROM features',
    "activations": 'SELECT "modelId", "layer", "id", "index", "tokens", "values", "maxValue" FROM activations',
    "explanations": 'SELECT "modelId", "layer", "id", "index", "description" FROM explanations',
    "models": 'SELECT "id" FROM models',
    "sources": 'SELECT "modelId", "id" FROM sources',
    "releases": 'SELECT "name" FROM releases',
}


def snapshot(db: Path) -> dict[str, list[Row]]:
    """Every table's rows (key and value columns), sorted."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {t: sorted(con.execute(sql).fetchall(), key=repr) for t, sql in SNAPSHOT_SQL.items()}
    finally:
        con.close()


def expected(base: dict[str, list[Row]], case: Case) -> dict[str, list[Row]]:
    """The baseline rows with the case's good rows written over them (by key, last wins)."""
    out = {t: list(rows) for t, rows in base.items()}
    for table, rows in case.rows.items():
        keyed = {r[:KEY_LEN[table]]: r for r in base[table]}
        for r in rows:
            keyed[r[:KEY_LEN[table]]] = r
        out[table] = sorted(keyed.values(), key=repr)
    out["features"] = [r[:3] + tuple(float(x) for x in r[3:]) for r in out["features"]]
    return out


def _import(root: Path, db: Path, flags: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "featuredb.cli", "import", "neuronpedia", str(root), "--db", str(db), *flags]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _baseline(work: Path) -> Path:
    """A store holding one source, imported through the CLI."""
    root, db = work / "baseline-export", work / "baseline.duckdb"
    base = Case("baseline", root, False)
    lines = [activation(i, 0) for i in range(10)]
    base.features([feature(i, modelId=BASE_MODEL, layer=BASE_SOURCE) for i in range(10)], BASE_MODEL, BASE_SOURCE)
    base.activations(lines, BASE_MODEL, BASE_SOURCE)
    # the same activation ids as the cases use, in another source: they must stay apart
    base.activations(lines, M, "2-other")
    base.features([feature(i) for i in range(3)])  # rows of the cases' source too: re-imports replace them
    proc = _import(root, db, ())
    if proc.returncode != 0:
        raise RuntimeError(f"baseline import failed: {proc.stderr.strip()}")
    return db


def cases(work: Path) -> Iterator[Outcome]:
    """Run every import case through the CLI and judge the store it leaves."""
    work = Path(work) / "imports"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    base_db = _baseline(work)
    base = snapshot(base_db)
    for n, (name, should_fail, flags, build) in enumerate(CASES):
        case = Case(name, work / f"case-{n:02d}" / "export", should_fail, flags=flags)
        if "twice" in flags:
            case.runs, case.flags = 2, ()
        build(case)
        db = work / f"case-{n:02d}" / "store.duckdb"
        shutil.copy(base_db, db)
        for _ in range(case.runs):
            proc = _import(case.root, db, case.flags)
        outcome = cli_outcome(AREA, name, proc, should_fail=should_fail)
        if not outcome.failed:
            after = snapshot(db)
            want = base if should_fail else expected(base, case)
            if after != want:
                changed = [t for t in after if after[t] != want[t]]
                outcome = Outcome(AREA, name, DATA_LOSS, f"store differs in {', '.join(changed)} "
                                                         f"({'refused' if should_fail else 'accepted'} import)")
        yield outcome
