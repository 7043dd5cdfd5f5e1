"""Bad exports: one clear error naming file and line, nothing committed; --skip-bad-lines counts instead."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from conftest import MODEL, SOURCE
from featuredb import BadInputError, FeatureStore
from featuredb.formats.neuronpedia_import import import_neuronpedia


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
