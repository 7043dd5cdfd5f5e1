"""Import, export and re-import keep every stored field; get_feature has Neuronpedia's shape."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from conftest import MODEL, SOURCE, table_snapshot
from featuredb import FeatureStore, NotFoundError
from featuredb.formats.neuronpedia_export import export_neuronpedia
from featuredb.formats.neuronpedia_import import import_neuronpedia
from featuredb.identity import cantor_pair, cantor_unpair
from featuredb.store.schema import TABLES


def test_get_feature_has_neuronpedia_shape_with_activations_by_max_value(small_export: Path, db_path: Path) -> None:
    with FeatureStore(db_path) as store:
        import_neuronpedia(store, small_export, progress=False)
        feature = store.get_feature(MODEL, SOURCE, 7)
    data = json.loads(feature.model_dump_json())
    assert data["modelId"] == MODEL and data["layer"] == SOURCE and data["index"] == "7"
    for field in ("frac_nonzero", "maxActApprox", "pos_str", "pos_values", "neg_str", "neg_values",
                  "freq_hist_data_bar_heights", "logits_hist_data_bar_values"):
        assert field in data
    assert len(data["activations"]) == 6
    maxima = [a["maxValue"] for a in data["activations"]]
    assert maxima == sorted(maxima, reverse=True)
    act = data["activations"][0]
    assert act["values"][act["maxValueTokenIndex"]] == act["maxValue"]
    assert {"binMin", "binMax", "binContains", "dataIndex", "dataSource", "minValue"} <= set(act)
    assert data["explanations"][0]["typeName"] == "np_max-act-logits"


def test_get_feature_accepts_string_index_and_reports_missing(small_export: Path, db_path: Path) -> None:
    with FeatureStore(db_path) as store:
        import_neuronpedia(store, small_export, progress=False)
        assert store.get_feature(MODEL, SOURCE, "12").index == "12"
        with pytest.raises(NotFoundError, match="999"):
            store.get_feature(MODEL, SOURCE, 999)


def test_importing_twice_gives_the_same_rows(small_export: Path, db_path: Path) -> None:
    with FeatureStore(db_path) as store:
        import_neuronpedia(store, small_export, progress=False)
        first = {t.name: table_snapshot(store.con, t.name) for t in TABLES}
        import_neuronpedia(store, small_export, progress=False)
        second = {t.name: table_snapshot(store.con, t.name) for t in TABLES}
    assert first == second
    assert len(first["activations"]) == 40 * 6


def test_import_export_import_is_lossless(small_export: Path, tmp_path: Path) -> None:
    with FeatureStore(tmp_path / "a.duckdb") as a:
        import_neuronpedia(a, small_export, progress=False)
        a.con.execute("""UPDATE sources SET settings = '{"hook":"mlp"}'""")
        export_neuronpedia(a, tmp_path / "out", progress=False)
        before = {t.name: table_snapshot(a.con, t.name) for t in TABLES}
    with FeatureStore(tmp_path / "b.duckdb") as b:
        import_neuronpedia(b, tmp_path / "out", progress=False)
        after = {t.name: table_snapshot(b.con, t.name) for t in TABLES}
        settings = b.con.execute("SELECT settings FROM sources").fetchone()[0]
    assert before == after
    assert json.loads(settings) == {"hook": "mlp"}


def test_export_writes_1024_rows_per_batch_with_string_indices(tmp_path: Path) -> None:
    from featuredb.synthetic_export import generate_export

    generate_export(tmp_path / "src", n_features=2100, n_activations=2, ctx_len=4, progress=False)
    with FeatureStore(tmp_path / "s.duckdb") as store:
        import_neuronpedia(store, tmp_path / "src", progress=False)
        export_neuronpedia(store, tmp_path / "out", progress=False)
    d = tmp_path / "out" / MODEL / SOURCE
    counts = [len(gzip.open(d / "features" / f"batch-{i}.jsonl.gz", "rt").readlines()) for i in range(3)]
    assert counts == [1024, 1024, 52]
    acts = [gzip.open(d / "activations" / f"batch-{i}.jsonl.gz", "rt").readlines() for i in range(3)]
    assert [len(a) for a in acts] == [2048, 2048, 104]
    last = json.loads(acts[1][-1])
    assert last["index"] == "2047" and isinstance(last["index"], str)
    assert (d / "model.jsonl").exists() and (d / "source.jsonl").exists() and (d / "sourceset.jsonl").exists()


def test_upsert_takes_polars_batches_in_one_transaction(db_path: Path) -> None:
    features = pl.DataFrame({"modelId": ["m", "m"], "layer": ["3-tc", "3-tc"], "index": [0, 1],
                             "frac_nonzero": [0.5, 0.0], "pos_str": [[" a", " b"], []]})
    acts = pl.DataFrame({"modelId": ["m"] * 2, "layer": ["3-tc"] * 2, "index": [0, 0],
                         "tokens": [["x", "y"], ["z", "w"]], "values": [[0.0, 2.0], [1.0, 0.0]],
                         "maxValue": [2.0, 1.0], "maxValueTokenIndex": [1, 0]})
    with FeatureStore(db_path) as store:
        written = store.upsert({"features": features, "activations": acts})
        assert written == {"features": 2, "activations": 2}
        store.upsert({"activations": acts})  # same rows again: replaced, not duplicated
        got = store.get_feature("m", "3-tc", 0)
    assert [a.maxValue for a in got.activations] == [2.0, 1.0]
    assert got.pos_str == [" a", " b"]


def test_cantor_pairing_matches_circuit_tracer() -> None:
    assert cantor_pair(0, 0) == 0
    assert cantor_pair(2, 3) == (2 + 3) * (2 + 3 + 1) // 2 + 3
    for layer, idx in [(0, 5), (20, 14110), (29, 0)]:
        assert cantor_unpair(cantor_pair(layer, idx)) == (layer, idx)


def test_reimporting_an_unchanged_export_does_not_grow_the_file(small_export: Path, db_path: Path) -> None:
    sizes = []
    for _ in range(3):
        with FeatureStore(db_path) as store:
            import_neuronpedia(store, small_export, progress=False)
        sizes.append(db_path.stat().st_size)
    assert sizes[0] == sizes[1] == sizes[2]


def test_reimport_replaces_changed_rows(small_export: Path, db_path: Path) -> None:
    with FeatureStore(db_path) as store:
        import_neuronpedia(store, small_export, progress=False)
    batch = small_export / MODEL / SOURCE / "features" / "batch-0.jsonl.gz"
    rows = [json.loads(line) for line in gzip.open(batch, "rt")]
    rows[3]["frac_nonzero"] = 0.5
    with gzip.open(batch, "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    with FeatureStore(db_path) as store:
        import_neuronpedia(store, small_export, progress=False)
        assert store.get_feature(MODEL, SOURCE, rows[3]["index"]).frac_nonzero == 0.5
        assert store.con.execute("SELECT count(*) FROM features").fetchone()[0] == 40
