"""Bad exports: one clear error naming file and line, nothing committed; --skip-bad-lines counts instead."""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path

import duckdb
import pytest

from bit_flip import flip_a_bit_duckdb_reads_silently
from conftest import MODEL, SOURCE
from featuredb import BadInputError, FeatureStore
from featuredb.formats.neuronpedia_import import _read_sql, _rules, import_neuronpedia
from featuredb.store.schema import ACTIVATIONS
from featuredb.synthetic_export import generate_export


def _rewrite_line(path: Path, line_no: int, text: str) -> None:
    lines = gzip.open(path, "rt").read().splitlines(True)
    lines[line_no - 1] = text + "\n"
    with gzip.open(path, "wt") as f:
        f.write("".join(lines))


def _counts(db: Path) -> dict[str, int]:
    with FeatureStore(db, read_only=True) as s:
        return s.info()["tables"]


def test_malformed_line_aborts_naming_file_and_line_and_commits_nothing(small_export: Path, db_path: Path) -> None:
    bad = small_export / MODEL / SOURCE / "activations" / "batch-0.jsonl.gz"
    _rewrite_line(bad, 7, '{"index": 1, "values": [0.5,')
    with FeatureStore(db_path) as store, pytest.raises(BadInputError) as err:
        import_neuronpedia(store, small_export, progress=False)
    assert f"{bad}:7:" in str(err.value) and "malformed JSON" in str(err.value)
    assert "\n" not in str(err.value)
    assert all(n == 0 for n in _counts(db_path).values())


def test_wrong_field_type_is_named(small_export: Path, db_path: Path) -> None:
    bad = small_export / MODEL / SOURCE / "features" / "batch-0.jsonl.gz"
    _rewrite_line(bad, 3, json.dumps({"modelId": MODEL, "layer": SOURCE, "index": "2", "frac_nonzero": "lots"}))
    with FeatureStore(db_path) as store, pytest.raises(BadInputError, match=r"batch-0.jsonl.gz:3: field 'frac_nonzero'"):
        import_neuronpedia(store, small_export, progress=False)


def test_corrupt_gzip_aborts_naming_the_file(small_export: Path, db_path: Path) -> None:
    bad = small_export / MODEL / SOURCE / "explanations" / "batch-0.jsonl.gz"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2] + b"\x00garbage" * 8)
    with FeatureStore(db_path) as store, pytest.raises(BadInputError, match=r"explanations/batch-0.jsonl.gz:\d+: corrupt gzip"):
        import_neuronpedia(store, small_export, progress=False)
    assert _counts(db_path)["features"] == 0


def test_skip_bad_lines_skips_and_counts_them(small_export: Path, db_path: Path) -> None:
    bad = small_export / MODEL / SOURCE / "activations" / "batch-0.jsonl.gz"
    _rewrite_line(bad, 2, "not json at all")
    _rewrite_line(bad, 5, json.dumps({"tokens": ["a"], "values": [1.0]}))  # no index
    with FeatureStore(db_path) as store:
        report = import_neuronpedia(store, small_export, skip_bad_lines=True, progress=False)
    assert report.skipped_lines == 2
    assert any(":5: missing field 'index'" in e for e in report.skipped_examples)
    assert _counts(db_path)["activations"] == 40 * 6 - 2


def test_index_as_number_or_string_unknown_fields_and_missing_optional_files(tmp_path: Path, db_path: Path) -> None:
    d = tmp_path / "exp" / "gpt2-small" / "8-res-jb"
    (d / "features").mkdir(parents=True)
    rows = [{"modelId": "gpt2-small", "layer": "8-res-jb", "index": 3, "frac_nonzero": 0.1, "brandNewField": [1]},
            {"modelId": "gpt2-small", "layer": "8-res-jb", "index": "4", "maxActApprox": 2.5}]
    with gzip.open(d / "features" / "batch-0.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    with FeatureStore(db_path) as store:
        report = import_neuronpedia(store, tmp_path / "exp", progress=False)
        assert report.rows == {"features": 2}
        assert store.get_feature("gpt2-small", "8-res-jb", 4).maxActApprox == 2.5
        assert store.get_feature("gpt2-small", "8-res-jb", "3").frac_nonzero == 0.1


def test_folder_without_an_export_is_a_clear_error(tmp_path: Path, db_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with FeatureStore(db_path) as store, pytest.raises(BadInputError, match="no Neuronpedia export found"):
        import_neuronpedia(store, tmp_path / "empty", progress=False)


# -- issue 17: one validation layer for import rows ---------------------------------------------------------------

M, S = "gpt2-small", "8-res-jb"


def _write_lines(path: Path, lines: list[str | bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def _feature(i: int, **fields: object) -> str:
    return json.dumps({"modelId": M, "layer": S, "index": str(i), "frac_nonzero": i / 100, **fields})


def _activation(i: int, j: int, **fields: object) -> str:
    return json.dumps({"id": f"a{i}-{j}", "index": str(i), "tokens": [" a", " b"], "values": [0.5, i + j / 10],
                       "maxValue": i + j / 10, **fields})


def _rows(db: Path, table: str) -> list[tuple]:  # type: ignore[type-arg]
    with FeatureStore(db, read_only=True) as s:
        cols = '"index", "frac_nonzero"' if table == "features" else '"id", "index", "tokens", "values", "maxValue"'
        return s.con.execute(f'SELECT {cols} FROM "{table}" ORDER BY ALL').fetchall()


def _import(db: Path, root: Path, **kw: object):  # type: ignore[no-untyped-def]
    with FeatureStore(db) as store:
        return import_neuronpedia(store, root, progress=False, **kw)


@pytest.mark.parametrize("index", ["3.7", "4.0", -1, "-1", 2**63, str(2**63), " 57", "1e2", True, 57.0, "", "٥٧"])
def test_an_index_that_is_not_a_non_negative_integer_is_refused_naming_its_line(tmp_path: Path, db_path: Path,
                                                                                 index: object) -> None:
    lines = [_feature(i) for i in range(60)]
    lines[57] = json.dumps({"modelId": M, "layer": S, "index": index, "frac_nonzero": 0.99})
    f = _write_lines(tmp_path / "exp" / M / S / "features" / "batch-0.jsonl.gz", lines)
    with pytest.raises(BadInputError, match=rf"^{f}:58: field 'index': ") as err:
        _import(db_path, tmp_path / "exp")
    assert "\n" not in str(err.value)
    assert _rows(db_path, "features") == []  # nothing committed: feature 4 not overwritten, nothing lost


def test_skipping_a_bad_index_keeps_every_other_feature_as_written(tmp_path: Path, db_path: Path) -> None:
    lines = [_feature(i) for i in range(60)]
    lines[57] = json.dumps({"modelId": M, "layer": S, "index": "3.7", "frac_nonzero": 0.99})
    _write_lines(tmp_path / "exp" / M / S / "features" / "batch-0.jsonl.gz", lines)
    report = _import(db_path, tmp_path / "exp", skip_bad_lines=True)
    assert report.skipped_lines == 1
    assert _rows(db_path, "features") == [(i, i / 100) for i in range(60) if i != 57]


def test_an_activation_without_index_is_refused(tmp_path: Path, db_path: Path) -> None:
    lines = [_activation(0, j) for j in range(5)]
    lines[2] = json.dumps({"id": "x", "tokens": ["a"], "values": [1.0]})
    f = _write_lines(tmp_path / "exp" / M / S / "activations" / "batch-0.jsonl", lines)
    with pytest.raises(BadInputError, match=rf"^{f}:3: missing field 'index'"):
        _import(db_path, tmp_path / "exp")
    assert _rows(db_path, "activations") == []


def test_importing_an_export_of_two_models_twice_gives_the_same_rows(tmp_path: Path, db_path: Path) -> None:
    for model in ("model-a", "model-b"):  # the same source and activation ids in both models
        generate_export(tmp_path / "exp", model=model, source=SOURCE, n_features=100, n_activations=3, ctx_len=4,
                        progress=False)
    first = _import(db_path, tmp_path / "exp")
    before = {t: _rows(db_path, t) for t in ("features", "activations")}
    second = _import(db_path, tmp_path / "exp")
    assert first.rows == second.rows
    assert {t: _rows(db_path, t) for t in ("features", "activations")} == before
    assert _counts(db_path)["features"] == 200 and _counts(db_path)["activations"] == 600


def test_reimporting_one_model_leaves_another_models_rows_with_the_same_ids_alone(tmp_path: Path,
                                                                                   db_path: Path) -> None:
    for model in ("model-a", "model-b"):
        _write_lines(tmp_path / "both" / model / S / "activations" / "batch-0.jsonl.gz",
                     [_activation(i, j) for i in range(3) for j in range(2)])
    _import(db_path, tmp_path / "both")
    changed = [_activation(i, j, maxValue=99.0) for i in range(3) for j in range(2)]
    _write_lines(tmp_path / "one" / "model-a" / S / "activations" / "batch-0.jsonl.gz", changed)
    _import(db_path, tmp_path / "one")
    with FeatureStore(db_path, read_only=True) as s:
        got = s.con.execute('SELECT "modelId", count(*), max("maxValue") FROM activations GROUP BY 1 ORDER BY 1')
        assert got.fetchall() == [("model-a", 6, 99.0), ("model-b", 6, 2.1)]


def test_a_line_naming_another_model_than_its_folder_is_refused(tmp_path: Path, db_path: Path) -> None:
    line = _feature(0, modelId="model-a")
    _write_lines(tmp_path / "exp" / "model-a" / S / "features" / "batch-0.jsonl.gz", [line])
    f = _write_lines(tmp_path / "exp" / "model-b" / S / "features" / "batch-0.jsonl.gz", [line])  # a copy
    with pytest.raises(BadInputError, match=rf"^{f}:1: field 'modelId': \"model-a\" does not match its folder"):
        _import(db_path, tmp_path / "exp")
    assert _rows(db_path, "features") == []


@pytest.mark.parametrize("name", ["batch-0.jsonl", "batch-0.jsonl.gz"])
def test_skip_bad_lines_drops_only_the_line_with_a_bad_byte(tmp_path: Path, db_path: Path, name: str) -> None:
    lines: list[str | bytes] = [_activation(i, 0) for i in range(200)]
    lines[20] = _activation(20, 0).encode().replace(b" b", b" \xff")  # line 21: not UTF-8
    _write_lines(tmp_path / "exp" / M / S / "activations" / name, lines)
    report = _import(db_path, tmp_path / "exp", skip_bad_lines=True)
    assert report.skipped_lines == 1 and ":21: not UTF-8" in report.skipped_examples[0]
    assert [r[0] for r in _rows(db_path, "activations")] == sorted(f"a{i}-0" for i in range(200) if i != 20)


def test_skip_bad_lines_keeps_the_lines_before_a_cut_gzip_and_says_the_rest_is_lost(tmp_path: Path,
                                                                                     db_path: Path) -> None:
    f = _write_lines(tmp_path / "exp" / M / S / "activations" / "batch-0.jsonl.gz",
                     [_activation(i, 0) for i in range(3000)])
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    whole = zlib.decompressobj(31).decompress(data[: len(data) // 2]).count(b"\n")  # complete lines before the cut
    report = _import(db_path, tmp_path / "exp", skip_bad_lines=True)
    assert f"{f}:{whole + 1}: gzip data ends early" in report.skipped_examples[0]
    assert "rest of the file is lost" in report.skipped_examples[0]
    assert len(_rows(db_path, "activations")) == whole
    assert _rows(db_path, "activations") == sorted(
        (f"a{i}-0", i, [" a", " b"], [0.5, float(i)], float(i)) for i in range(whole))


def test_gzip_data_altered_in_a_way_duckdb_reads_without_error_is_refused(tmp_path: Path, db_path: Path) -> None:
    lines = [_activation(i, j) for i in range(300) for j in range(3)]
    f = _write_lines(tmp_path / "exp" / M / S / "activations" / "batch-0.jsonl.gz", lines)
    read = _read_sql([f], _rules(ACTIVATIONS, M, S))  # what the import reads, its rules checked
    if not flip_a_bit_duckdb_reads_silently(f, read):
        pytest.fail("no silently altering bit flip found")
    with pytest.raises(BadInputError, match=rf"^{f}:\d+: corrupt gzip data"):
        _import(db_path, tmp_path / "exp")
    assert _rows(db_path, "activations") == []


@pytest.mark.parametrize("field, value, reason", [
    ("maxValue", "NaN", "expected a finite number, got NaN"),
    ("maxValue", "-Infinity", "expected a finite number"),
    ("maxValue", "1e400", "expected a finite number"),
    ("maxValue", '"1.5"', "expected a number, got \"1.5\""),
    ("maxValue", "true", "expected a number, got true"),
    ("values", "[0.5, NaN]", "item 1: expected a finite number"),
    ("values", "[0.5, Infinity]", "item 1: expected a finite number"),
    ("values", '[0.5, "2"]', "item 1: expected a number"),
    ("values", "[0.5, null]", "item 1: null"),
    ("tokens", '[" a", {"text": "b"}]', "item 1: expected a string, got an object"),
    ("tokens", '[" a", ["b"]]', "item 1: expected a string, got a list"),
    ("tokens", '[" a", 5]', "item 1: expected a string, got 5"),
    ("tokens", '" a b"', "expected a list"),
    ("maxValueTokenIndex", "2.5", "expected an integer, got 2.5"),
    ("maxValueTokenIndex", "9223372036854775808", "out of range"),
    ("dataIndex", "{}", "expected a string, got an object"),
])
def test_a_value_outside_its_fields_rule_is_refused_naming_file_line_and_field(tmp_path: Path, db_path: Path,
                                                                                field: str, value: str,
                                                                                reason: str) -> None:
    lines = [_activation(0, j) for j in range(4)]
    record = json.loads(lines[1])
    record.pop(field, None)
    lines[1] = json.dumps(record)[:-1] + f', "{field}": {value}}}'
    f = _write_lines(tmp_path / "exp" / M / S / "activations" / "batch-0.jsonl.gz", lines)
    with pytest.raises(BadInputError) as err:
        _import(db_path, tmp_path / "exp")
    assert str(err.value).startswith(f"{f}:2: field '{field}': ") and reason in str(err.value)
    assert _rows(db_path, "activations") == []


def test_trailing_commas_and_nan_in_an_unknown_field_are_read_as_duckdb_reads_them(tmp_path: Path,
                                                                                  db_path: Path) -> None:
    _write_lines(tmp_path / "exp" / M / S / "activations" / "batch-0.jsonl",
                 ['{"id": "a", "index": 1, "values": [1.5,], "extra": NaN,}', _activation(2, 0)])
    _import(db_path, tmp_path / "exp")
    assert [r[:2] for r in _rows(db_path, "activations")] == [("a", 1), ("a2-0", 2)]


def test_the_cli_refuses_bad_input_with_one_line_and_a_non_zero_exit(tmp_path: Path, db_path: Path) -> None:
    from click.testing import CliRunner

    from featuredb.cli.root import cli

    lines = [_feature(i) for i in range(5)]
    lines[3] = _feature(3, frac_nonzero=float("nan"))
    f = _write_lines(tmp_path / "exp" / M / S / "features" / "batch-0.jsonl.gz", lines)
    res = CliRunner().invoke(cli, ["import", "neuronpedia", str(tmp_path / "exp"), "--db", str(db_path)])
    assert res.exit_code != 0 and res.exception is None or isinstance(res.exception, SystemExit)
    assert res.stderr.strip().splitlines() == [res.stderr.strip()]
    assert f"{f}:4: field 'frac_nonzero': expected a finite number, got NaN" in res.stderr


@pytest.mark.parametrize("name, data", [("batch-0.jsonl", b"{"), ("batch-0.jsonl.gz", gzip.compress(b"x"))])
def test_a_file_of_one_bad_byte_is_refused_though_duckdb_reads_it_as_empty(tmp_path: Path, db_path: Path,
                                                                           name: str, data: bytes) -> None:
    _write_lines(tmp_path / "exp" / M / S / "features" / "batch-0.jsonl.gz", [_feature(0)])
    f = tmp_path / "exp" / M / S / "activations" / name
    f.parent.mkdir()
    f.write_bytes(data)
    with pytest.raises(BadInputError, match=rf"^{f}:1: malformed JSON"):
        _import(db_path, tmp_path / "exp")


def test_a_duckdb_message_cut_inside_a_utf8_character_is_still_a_clear_error(tmp_path: Path, db_path: Path) -> None:
    con, f = duckdb.connect(), tmp_path / "exp" / M / S / "activations" / "batch-0.jsonl"
    for pad in range(3):  # DuckDB quotes the start of a line with a repeated field, cut at a byte count
        line = '{"index": 0, "tokens": ["' + "x" * pad + "€" * 40 + '"], "index": 1}'
        _write_lines(f, [line])
        try:
            con.execute(f"SELECT * FROM read_json('{f}', format='newline_delimited', columns={{'index': 'JSON'}})")
        except UnicodeDecodeError:
            break
        except duckdb.Error:
            continue
    else:
        pytest.fail("DuckDB no longer cuts its message inside a character")
    with pytest.raises(BadInputError, match=rf"^{f}:1: field 'index' appears twice"):
        _import(db_path, tmp_path / "exp")
