"""Property tests of the import boundary: any generated export imports exactly, or is refused naming a bad line.

Exports are generated with valid lines and lines made bad on purpose (wrong types, NaN/Infinity, bad indexes,
objects in tokens, missing keys, another model's id, repeated fields, bad bytes, broken JSON, not an object) in
plain and gzip files, some of them cut off or corrupted. Each line knows whether it is good, so the expected rows
come from this Python description, not from the importer. The second property checks line by line that the SQL
the import runs and the Python scanner that names bad lines agree.
"""

from __future__ import annotations

import gzip
import json
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featuredb import BadInputError, FeatureStore
from featuredb.errors import FeatureDBError
from featuredb.formats.jsonl_lines import line_problem
from featuredb.formats.neuronpedia_import import _read_sql, _rules, import_neuronpedia
from featuredb.store.schema import ACTIVATIONS, FEATURES

MODELS, SOURCES = ("m-a", "m-b"), ("3-tc", "7-tc")
FEATURE_FIELDS = {"frac_nonzero": "DOUBLE", "hasVector": "BOOLEAN", "umap_cluster": "BIGINT", "hookName": "VARCHAR",
                  "pos_str": "VARCHAR[]", "pos_values": "DOUBLE[]", "topkCosSimIndices": "BIGINT[]"}
ACTIVATION_FIELDS = {"tokens": "VARCHAR[]", "values": "DOUBLE[]", "maxValue": "DOUBLE", "maxValueTokenIndex": "BIGINT",
                     "dataIndex": "VARCHAR", "binMin": "DOUBLE", "zIndices": "BIGINT[][]"}
FIELDS = {"features": FEATURE_FIELDS, "activations": ACTIVATION_FIELDS}
PROPS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- values --------------------------------------------------------------------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False)
bigint = st.integers(-(2**63), 2**63 - 1)
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=6)
VALID = {"DOUBLE": finite | st.integers(-(10**30), 10**30), "BIGINT": bigint, "BOOLEAN": st.booleans(),
         "VARCHAR": text}
JUNK = st.sampled_from([{"a": 1}, [1], "1.5", "x", True, 2.5, 7, None, []])


def valid_value(duck_type: str) -> st.SearchStrategy[Any]:
    """A value that keeps the rule of a column of `duck_type`."""
    if duck_type.endswith("[]"):
        return st.lists(valid_value(duck_type[:-2]), max_size=4)
    return VALID[duck_type]


def wrong_value(duck_type: str) -> st.SearchStrategy[str]:
    """JSON text of a value that breaks the rule of a column of `duck_type` (NaN and Infinity as written)."""
    nonfinite = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "nan", "-inf"])
    if duck_type.endswith("[]"):
        item = duck_type[:-2]
        bad_item = wrong_value(item) | st.just("null")
        good = st.lists(valid_value(item), max_size=2).map(lambda v: [json.dumps(x) for x in v])
        as_list = st.tuples(good, bad_item, good).map(lambda t: "[" + ", ".join([*t[0], t[1], *t[2]]) + "]")
        return as_list | st.sampled_from(['"[1]"', "5", "true", "{}"])
    wrong = JUNK.filter(lambda v: v is not None and not _fits(duck_type, v)).map(json.dumps)
    return wrong | nonfinite if duck_type == "DOUBLE" else wrong | (nonfinite if duck_type != "VARCHAR" else wrong)


def _fits(duck_type: str, v: Any) -> bool:
    if duck_type == "VARCHAR":
        return isinstance(v, str)
    if duck_type == "BOOLEAN":
        return isinstance(v, bool)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return duck_type == "DOUBLE" or isinstance(v, int)


BAD_INDEX = st.sampled_from(['"3.7"', "-1", '"-1"', "9223372036854775808", '"9223372036854775808"', '" 4"', "4.0",
                             '"1e2"', "true", '""', '"\\u0664"', "[1]", '{"i": 1}', "NaN"])
INDEX = st.one_of(st.integers(0, 4), st.integers(0, 2**63 - 1)).flatmap(
    lambda i: st.sampled_from([json.dumps(i), json.dumps(str(i))]).map(lambda s: (i, s)))

# -- lines ---------------------------------------------------------------------------------------------------------


@dataclass
class Line:
    """One generated line: its bytes, and the row it stands for when good (None when bad, or blank)."""

    raw: bytes
    row: dict[str, Any] | None
    bad: bool = False


@st.composite
def lines(draw: st.DrawFn, table: str, model: str, source: str) -> Line:
    """A good line of `table` (sometimes blank), or one made bad in one way."""
    if draw(st.integers(0, 15)) == 0:
        return Line(draw(st.sampled_from([b"", b"  ", b"\t\r", b"\x0c"])), None)
    index, index_text = draw(INDEX)
    fields = FIELDS[table]
    names = draw(st.lists(st.sampled_from(sorted(fields)), unique=True, max_size=len(fields)))
    values = {n: draw(valid_value(fields[n]) | st.none()) for n in names}
    row: dict[str, Any] = {"index": index, **values}
    parts = [("index", index_text)] + [(n, json.dumps(v, ensure_ascii=draw(st.booleans()))) for n, v in values.items()]
    if table == "activations":
        row["id"] = draw(st.sampled_from(["a", "b", "c", "d", "é\"\\"]))
        parts.append(("id", json.dumps(row["id"])))
    if draw(st.booleans()):
        parts.append(("modelId", json.dumps(model)))
    if draw(st.integers(0, 4)) == 0:
        parts.append(("unknownField", draw(st.sampled_from(['{"x": [1, NaN]}', "[]", '"?"', "-Infinity", "null"]))))
    how = draw(st.sampled_from(["good"] * 6 + ["type", "index", "no index", "folder", "twice", "bytes", "cut",
                                              "not object", "nan"]))
    if how in ("type", "nan"):
        name = draw(st.sampled_from(sorted(fields)))
        if how == "nan":
            name = draw(st.sampled_from([n for n, t in fields.items() if t.startswith("DOUBLE")]))
        bad = draw(wrong_value(fields[name]))
        parts = [p for p in parts if p[0] != name] + [(name, bad)]
    elif how == "index":
        parts[0] = ("index", draw(BAD_INDEX))
    elif how == "no index":
        parts = parts[1:] if draw(st.booleans()) else [("index", "null"), *parts[1:]]
    elif how == "folder":
        other = draw(st.sampled_from(["layer", "modelId"]))
        wrong = {"layer": "99-other", "modelId": "m-other"}[other]
        parts = [p for p in parts if p[0] != other] + [(other, json.dumps(wrong))]
    elif how == "twice":
        parts.append(("index", json.dumps(index + 1)))
    parts = draw(st.permutations(parts))
    body = "{" + ", ".join(f'"{k}": {v}' for k, v in parts) + "}"
    raw = body.encode()
    if how == "bytes":
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf"])) + raw[at:]
    elif how == "cut":
        raw = body[: draw(st.integers(1, len(body) - 1))].encode()
    elif how == "not object":
        raw = draw(st.sampled_from([b"[1, 2]", b"5", b'"text"', b"null"]))
    return Line(raw, None if how != "good" else row, bad=how != "good")


@dataclass
class ExportFile:
    """One generated file and what became of it: lines, gzip or not, and how the gzip data was damaged."""

    path: Path
    table: str
    lines: list[Line]
    damage: str = ""  # "", "cut", "flip" or "tail"
    readable: int = 0  # with damage: how many lines can still be read whole

    @property
    def refused(self) -> bool:
        """Whether a strict import must stop at this file."""
        return bool(self.damage) or any(x.bad for x in self.lines)


@dataclass
class Export:
    """A generated export folder."""

    root: Path
    files: list[ExportFile] = field(default_factory=list)


@st.composite
def exports(draw: st.DrawFn, root: Path) -> Export:
    """An export of one or two sources with features and activations, some of it bad."""
    export = Export(root)
    pairs = draw(st.lists(st.tuples(st.sampled_from(MODELS), st.sampled_from(SOURCES)), min_size=1, max_size=2,
                          unique=True))
    for model, source in pairs:
        for table in draw(st.lists(st.sampled_from(["features", "activations"]), min_size=1, max_size=2, unique=True)):
            for b in range(draw(st.integers(1, 2))):
                gz = draw(st.booleans())
                path = root / model / source / table / f"batch-{b}.jsonl{'.gz' if gz else ''}"
                f = ExportFile(path, table, draw(st.lists(lines(table, model, source), min_size=1, max_size=6)))
                data = b"".join(x.raw + b"\n" for x in f.lines)
                f.readable = len(f.lines)
                if draw(st.booleans()):
                    data = data[:-1]  # no newline at the end: after damaged gzip data, that line is lost
                    f.readable -= 1
                if gz:
                    data = gzip.compress(data, mtime=0)
                    f.damage = draw(st.sampled_from(["", "", "", "cut", "flip", "tail"]))
                    data = _damage(draw, f, data)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                export.files.append(f)
    return export


def _damage(draw: st.DrawFn, f: ExportFile, data: bytes) -> bytes:
    if f.damage == "tail":
        return data + draw(st.sampled_from([b"\x00" * 8, b"junk", b"\x1f\x8b\x08\x00broken"]))
    if f.damage == "cut":
        data = data[: draw(st.integers(10, len(data) - 1))]
        f.readable = zlib.decompressobj(31).decompress(data).count(b"\n")  # whole lines before the cut
        return data
    if f.damage == "flip":
        at = draw(st.integers(10, len(data) - 9))  # inside the deflate data
        flipped = data[:at] + bytes([data[at] ^ (1 << draw(st.integers(0, 7)))]) + data[at + 1:]
        whole = zlib.decompress(data, 31)
        try:
            if zlib.decompress(flipped, 31) == whole:
                f.damage = ""  # a bit that changes nothing (padding): the file is still whole
        except zlib.error as e:
            if "incomplete" in str(e):  # the stream now seems to stop early: read as a file cut off
                prefix = zlib.decompressobj(31).decompress(flipped)
                if not whole.startswith(prefix):
                    f.damage = ""  # garbage that looks cut off: no reader can tell, so leave this case out
                    return data
                f.damage, f.readable = "cut", prefix.count(b"\n")
        return flipped
    return data


# -- what the store must hold --------------------------------------------------------------------------------------

KEY = {"features": ("index",), "activations": ("id",)}
PRESET = {  # rows already in the store before the import: one source's rows are then replaced, not inserted
    "features": [{"modelId": "m-a", "layer": "3-tc", "index": i, "frac_nonzero": 0.5} for i in range(3)],
    "activations": [{"modelId": "m-a", "layer": "3-tc", "index": 0, "id": k, "maxValue": 1.0} for k in "ab"],
}


def _key(table: str, model: str, source: str, row: dict[str, Any]) -> tuple[Any, ...]:
    return (model, source, *(row[k] for k in KEY[table]))


def expected_rows(export: Export, skip_bad: bool) -> dict[str, dict[tuple[Any, ...], dict[str, Any]]]:
    """Per table, key -> row after importing `export` over PRESET (last line wins), from the generated lines."""
    out = {t: {_key(t, r["modelId"], r["layer"], r): _full(t, r) for r in rows} for t, rows in PRESET.items()}
    for f in sorted(export.files, key=lambda f: f.path.parts[-4:-2]):  # order within a source: batch number
        model, source = f.path.parts[-4], f.path.parts[-3]
        if skip_bad and f.damage == "flip":
            continue
        kept = f.lines[: f.readable] if f.damage else f.lines
        for line in kept:
            if line.row is not None:
                out[f.table][_key(f.table, model, source, line.row)] = _full(f.table, line.row)
    return out


def _full(table: str, row: dict[str, Any]) -> dict[str, Any]:
    return {c: row.get(c) for c in ("index", *KEY[table], *FIELDS[table])}


def stored_rows(con: duckdb.DuckDBPyConnection) -> dict[str, dict[tuple[Any, ...], dict[str, Any]]]:
    """Per table, key -> the row as stored."""
    out: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {}
    for table, fields in FIELDS.items():
        cols = ["modelId", "layer", *dict.fromkeys(("index", *KEY[table], *fields))]
        cur = con.execute(f"SELECT {', '.join(f'{chr(34)}{c}{chr(34)}' for c in cols)} FROM {table}")
        rows = [dict(zip(cols, r)) for r in cur.fetchall()]
        out[table] = {_key(table, r["modelId"], r["layer"], r): _full(table, r) for r in rows}
        assert len(out[table]) == len(rows), f"{table}: two rows with one key"
    return out


def _normal(rows: dict[str, dict[tuple[Any, ...], dict[str, Any]]]) -> dict[str, Any]:
    """Rows with ints in DOUBLE fields as floats, so that 3 and 3.0 compare equal as DuckDB stores them."""
    def fix(table: str, row: dict[str, Any]) -> dict[str, Any]:
        out = dict(row)
        for c, t in FIELDS[table].items():
            if t == "DOUBLE" and out[c] is not None:
                out[c] = float(out[c])
            elif t == "DOUBLE[]" and out[c] is not None:
                out[c] = [float(x) for x in out[c]]
        return out
    return {t: {k: fix(t, r) for k, r in rows[t].items()} for t in rows}


def _open_store(db: Path) -> FeatureStore:
    store = FeatureStore(db)
    store.upsert({t: pl.DataFrame(rows) for t, rows in PRESET.items()})
    return store


def _close(store: FeatureStore) -> None:
    store.con.close()  # not store.close(): rebuilding the search indexes is not under test and takes seconds


# -- properties ----------------------------------------------------------------------------------------------------


@PROPS
@given(data=st.data())
def test_an_export_imports_exactly_or_is_refused_naming_a_bad_line_and_leaves_the_store_unchanged(
        data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        export = data.draw(exports(Path(tmp) / "export"))
        store = _open_store(Path(tmp) / "store.duckdb")
        try:
            before = stored_rows(store.con)
            refused = [f for f in export.files if f.refused]
            if refused:
                with pytest.raises(BadInputError) as err:
                    import_neuronpedia(store, export.root, progress=False)
                message = str(err.value)
                assert "\n" not in message
                named = next((f for f in refused if message.startswith(f"{f.path}:")), None)
                assert named is not None, message
                if not named.damage:  # a line made bad on purpose, or one right after a cut
                    line = int(message[len(str(named.path)) + 1:].split(":")[0])
                    assert named.lines[line - 1].bad, message
                assert stored_rows(store.con) == before
                report = import_neuronpedia(store, export.root, skip_bad_lines=True, progress=False)
                assert report.skipped_lines >= sum(x.bad for f in refused for x in f.lines if not f.damage)
            elif not any(x.row for f in export.files for x in f.lines):
                with pytest.raises(FeatureDBError, match="the export holds no records"):
                    import_neuronpedia(store, export.root, progress=False)
            else:
                import_neuronpedia(store, export.root, progress=False)
            assert _normal(stored_rows(store.con)) == _normal(expected_rows(export, skip_bad=True))
            if not refused and any(x.row for f in export.files for x in f.lines):  # again: the same rows
                import_neuronpedia(store, export.root, progress=False)
                assert _normal(stored_rows(store.con)) == _normal(expected_rows(export, skip_bad=True))
        finally:
            _close(store)


@settings(max_examples=150, deadline=None)
@given(table=st.sampled_from(["features", "activations"]), line=st.data())
def test_the_sql_check_and_the_python_scanner_agree_on_every_line(table: str, line: st.DataObject) -> None:
    generated = line.draw(lines(table, "m-a", "3-tc") | st.binary(max_size=12).map(lambda b: Line(b, None)))
    rules = _rules(FEATURES if table == "features" else ACTIVATIONS, "m-a", "3-tc")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "batch-0.jsonl"
        path.write_bytes(generated.raw.replace(b"\n", b" ") + b"\n")
        try:
            rows = duckdb.connect().execute(_read_sql([path], rules)).fetchall()
            sql_problem = None
        except duckdb.Error as e:
            rows, sql_problem = [], str(e)
    python_problem = line_problem(generated.raw.replace(b"\n", b" "), rules)
    assert (sql_problem is None) == (python_problem is None), (generated.raw, sql_problem, python_problem)
    if generated.bad:
        assert python_problem is not None
    if generated.row is not None:
        assert python_problem is None and len(rows) == 1
        got = dict(zip(rules.columns, rows[0]))
        want = _normal({table: {(): _full(table, generated.row)}})[table][()]
        assert _normal({table: {(): _full(table, got)}})[table][()] == want
