"""Neuronpedia's published dataset exports, field by field (issue 18).

The fixture is built from Neuronpedia's own field lists (the db_models dataclasses that describe its bulk exports,
vendored in fixtures/neuronpedia_db_models.json with the commit they come from), not from featuredb's exporter:
one value of the annotated type per field, written in export-data.py's layout. It goes through the real
`featuredb import neuronpedia` / `featuredb export neuronpedia` into and out of a DuckDB file, and every field
must come back under its name with its value.
"""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from featuredb.store.schema import CURRENT_VERSION, FEATURE_KEY_COLUMN, TABLES_BY_NAME, columns_of

DB_MODELS = json.loads((Path(__file__).parent / "fixtures" / "neuronpedia_db_models.json").read_text())
TABLES = DB_MODELS["tables"]  # key -> {"file", "fields": {name: annotation}, "required": [...]}
STORE_TABLE = {"models": "models", "releases": "releases", "sourcesets": "source_sets", "sources": "sources",
               "features": "features", "activations": "activations", "explanations": "explanations"}

MODEL, SOURCE, SET, RELEASE, INDEX = "np-model", "6-np-set", "np-set", "np-release", "5"
# Fields whose values must agree with the folder or with each other (export-data.py takes them from one source).
LINKED: dict[str, dict[str, Any]] = {
    "models": {"id": MODEL},
    "releases": {"name": RELEASE},
    "sourcesets": {"modelId": MODEL, "name": SET, "releaseName": RELEASE},
    "sources": {"id": SOURCE, "modelId": MODEL, "setName": SET},
    "features": {"modelId": MODEL, "layer": SOURCE, "index": INDEX, "sourceSetName": SET},
    "activations": {"id": "act-1", "modelId": MODEL, "layer": SOURCE, "index": INDEX},
    "explanations": {"id": "exp-1", "modelId": MODEL, "layer": SOURCE, "index": INDEX},
}


def _inner(annotation: str) -> str:
    m = re.fullmatch(r"Optional\[(.*)\]", annotation)
    return m.group(1) if m else annotation


def value_of(annotation: str, seed: int) -> Any:
    """A value of a db_models annotation as export-data.py writes it to JSON (datetimes via isoformat())."""
    t = _inner(annotation)
    m = re.fullmatch(r"[Ll]ist\[(.*)\]", t)
    if m:
        return [value_of(m.group(1), seed), value_of(m.group(1), seed + 1)]
    return {
        "str": f"s{seed}-é\"",
        "int": 1000 + seed,
        "float": seed + 0.25,
        "bool": seed % 2 == 0,
        "datetime": f"2024-07-{1 + seed % 28:02d}T18:12:45.{seed:06d}",
    }[t]


def is_json_type(annotation: str, value: Any) -> bool:
    """Whether a parsed JSON value has the type of a db_models annotation (null for Optional ones)."""
    t = _inner(annotation)
    if value is None:
        return t != annotation
    m = re.fullmatch(r"[Ll]ist\[(.*)\]", t)
    if m:
        return isinstance(value, list) and all(is_json_type(m.group(1), v) for v in value)
    if t == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, {"str": str, "bool": bool, "datetime": str}[t])


def fixture_rows() -> dict[str, dict[str, Any]]:
    """One record per table carrying exactly db_models' fields."""
    rows = {}
    seed = 0
    for key, spec in TABLES.items():
        row = {}
        for name, annotation in spec["fields"].items():
            seed += 1
            row[name] = LINKED[key].get(name, value_of(annotation, seed))
        rows[key] = row
    return rows


def write_np_export(root: Path, rows: dict[str, dict[str, Any]], extra: dict[str, Any] | None = None) -> Path:
    """exports/{modelId}/{sourceId}/ as export-data.py leaves it: the four records uncompressed in the source folder,
    batch files gzipped in features/, activations/, explanations/, plus the files featuredb does not read."""
    exports = root / "exports"
    d = exports / MODEL / SOURCE
    for key, spec in TABLES.items():
        path = d / spec["file"].format(n=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = (json.dumps({**rows[key], **(extra or {})}) + "\n").encode()
        path.write_bytes(gzip.compress(data, compresslevel=5) if path.name.endswith(".gz") else data)
    (d / "inference_hosts_on_source.jsonl").write_text(
        json.dumps({"inferenceHostId": "h1", "sourceId": SOURCE, "sourceModelId": MODEL}) + "\n")
    (d / "inference_hosts.jsonl").write_text(json.dumps({"id": "h1", "hostUrl": "", "modelId": MODEL}) + "\n")
    (exports / "config").mkdir()
    (exports / "config" / "explanation_type.jsonl").write_text(json.dumps({"name": "np_max-act-logits"}) + "\n")
    return exports


def featuredb(*args: str) -> dict[str, Any]:
    res = subprocess.run([sys.executable, "-m", "featuredb.cli", *args, "--json"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def read_back(out: Path) -> dict[str, list[dict[str, Any]]]:
    d = out / MODEL / SOURCE
    got = {}
    for key, spec in TABLES.items():
        path = d / spec["file"].format(n=0)
        assert path.is_file(), f"{key}: our export has no {path.relative_to(out)}"
        raw = path.read_bytes()
        assert raw.startswith(b"\x1f\x8b") == path.name.endswith(".gz"), path
        text = gzip.decompress(raw).decode() if path.name.endswith(".gz") else raw.decode()
        got[key] = [json.loads(line) for line in text.splitlines() if line.strip()]
    return got


def test_every_db_models_field_is_a_store_column_of_a_compatible_type() -> None:
    rules = {"str": ("VARCHAR", "JSON"), "int": ("BIGINT",), "float": ("DOUBLE",), "bool": ("BOOLEAN",),
             "datetime": ("VARCHAR",)}
    for key, spec in TABLES.items():
        cols = columns_of(TABLES_BY_NAME[STORE_TABLE[key]], CURRENT_VERSION)
        for name, annotation in spec["fields"].items():
            assert name in cols, f"{key}.{name} ({annotation}) is not a column of {STORE_TABLE[key]}"
            t, depth = _inner(annotation), 0
            while (m := re.fullmatch(r"[Ll]ist\[(.*)\]", t)):
                t, depth = m.group(1), depth + 1
            allowed = ("BIGINT", "VARCHAR") if name == "index" else rules[t]  # index: Neuronpedia's string
            assert cols[name] == "JSON" or cols[name] in {a + "[]" * depth for a in allowed}, (key, name, cols[name])


def test_an_export_with_exactly_db_models_fields_comes_back_field_by_field(tmp_path: Path) -> None:
    rows = fixture_rows()
    exports = write_np_export(tmp_path, rows)
    db = str(tmp_path / "np.duckdb")
    report = featuredb("import", "neuronpedia", str(exports), "--db", db)
    assert report["sources"] == [f"{MODEL}/{SOURCE}"]
    assert report["rows"] == {STORE_TABLE[k]: 1 for k in TABLES}

    out = tmp_path / "out"
    featuredb("export", "neuronpedia", str(out), "--db", db)
    got = read_back(out)
    for key, spec in TABLES.items():
        assert len(got[key]) == 1, key
        line = got[key][0]
        missing = [n for n in spec["fields"] if n not in line]
        assert not missing, f"{key}: our export lacks db_models fields {missing}"
        for name, annotation in spec["fields"].items():
            assert is_json_type(annotation, line[name]), (key, name, annotation, line[name])
            assert line[name] == rows[key][name], (key, name, line[name], rows[key][name])


def test_nulls_extra_fields_and_only_required_fields_are_accepted(tmp_path: Path) -> None:
    # export-data.py writes null for an unset Optional field and may carry columns db_models does not list.
    rows = fixture_rows()
    for key, spec in TABLES.items():
        for name, annotation in spec["fields"].items():
            if name not in spec["required"] and name not in LINKED[key] and annotation.startswith("Optional["):
                rows[key][name] = None
    exports = write_np_export(tmp_path, rows, extra={"similarityMatrixEnabled": False, "zQIndices": [1]})
    db = str(tmp_path / "np.duckdb")
    assert featuredb("import", "neuronpedia", str(exports), "--db", db)["rows"] == {STORE_TABLE[k]: 1 for k in TABLES}
    featuredb("export", "neuronpedia", str(tmp_path / "out"), "--db", db)
    got = read_back(tmp_path / "out")
    for key, spec in TABLES.items():
        assert {n: got[key][0][n] for n in spec["fields"]} == rows[key], key


@pytest.mark.parametrize("key", ["activations", "sources", "explanations"])
def test_a_db_models_field_of_the_wrong_type_is_a_one_line_error_naming_file_and_line(tmp_path: Path,
                                                                                       key: str) -> None:
    rows = fixture_rows()
    bad = {"activations": ("zIndices", [[1, "2"]]), "sources": ("inferenceHosts", "h1"),
           "explanations": ("triggeredById", 7)}[key]
    rows[key][bad[0]] = bad[1]
    exports = write_np_export(tmp_path, rows)
    res = subprocess.run([sys.executable, "-m", "featuredb.cli", "import", "neuronpedia", str(exports),
                          "--db", str(tmp_path / "np.duckdb")], capture_output=True, text=True)
    assert res.returncode != 0 and res.stderr.count("\n") == 1, res.stderr
    path = exports / MODEL / SOURCE / TABLES[key]["file"].format(n=0)
    assert f"{path}:1: field {bad[0]!r}" in res.stderr, res.stderr


def test_the_vendored_field_lists_name_their_origin() -> None:
    assert re.fullmatch(r"[0-9a-f]{40}", DB_MODELS["commit"])
    assert set(TABLES) == set(STORE_TABLE)
    for spec in TABLES.values():
        assert spec["source"].startswith(DB_MODELS["db_models"] + "/") and spec["fields"]
        assert set(spec["required"]) <= set(spec["fields"])
    assert FEATURE_KEY_COLUMN[0] not in {n for s in TABLES.values() for n in s["fields"]}
