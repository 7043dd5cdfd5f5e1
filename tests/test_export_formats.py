"""circuit-tracer feature files (validated against Neuronpedia's schema) and Parquet export."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import polars as pl
import pytest

from conftest import MODEL, SHARED, SOURCE
from featuredb import FeatureStore
from featuredb.errors import FeatureDBError
from featuredb.formats.circuit_tracer_export import export_circuit_tracer
from featuredb.formats.neuronpedia_import import import_neuronpedia
from featuredb.formats.parquet_export import export_parquet
from featuredb.identity import cantor_pair
from featuredb.store.schema import TABLES


def test_circuit_tracer_files_validate_and_sit_where_the_frontend_looks(small_export: Path, db_path: Path,
                                                                          tmp_path: Path) -> None:
    schema = json.loads((SHARED / "formats" / "neuronpedia" / "feature-details-schema.json").read_text())
    with FeatureStore(db_path) as store:
        import_neuronpedia(store, small_export, progress=False)
        report = export_circuit_tracer(store, tmp_path / "features", progress=False)
        np_feature = store.get_feature(MODEL, SOURCE, 11)
    assert report["features"] == 40
    files = sorted((tmp_path / "features" / MODEL).glob("*.json"))
    assert len(files) == 40
    # The frontend fetches ./features/{scan}/{cantor(layer, index)}.json
    path = tmp_path / "features" / MODEL / f"{cantor_pair(6, 11)}.json"
    record = json.loads(path.read_text())
    jsonschema.validate(record, schema)
    for f in files[:5]:
        jsonschema.validate(json.loads(f.read_text()), schema)
    assert record["index"] == 11 and record["transcoder_id"] == f"{MODEL}/{SOURCE}"
    names = [q["quantile_name"] for q in record["examples_quantiles"]]
    assert names[0] == "Top activations" and names[1].startswith("Interval 0")
    top = record["examples_quantiles"][0]["examples"]
    assert len(top) == 4 and len(record["examples_quantiles"][1]["examples"]) == 2
    assert top[0]["tokens_acts_list"] == np_feature.activations[0].values
    assert top[0]["train_token_ind"] == np_feature.activations[0].maxValueTokenIndex
    assert record["top_logits"] == np_feature.pos_str and record["bottom_logits"] == np_feature.neg_str
    assert record["act_max"] == np_feature.maxActApprox
    assert record["activation_frequency"] == np_feature.frac_nonzero
    # circuit-tracer draws `histogram` as counts in equal bins over [act_min, act_max]
    assert len(record["histogram"]) == 40
    assert sum(record["histogram"]) == pytest.approx(sum(np_feature.freq_hist_data_bar_heights))
    width = (record["act_max"] - record["act_min"]) / 40
    first = min(np_feature.freq_hist_data_bar_values)
    assert record["histogram"][min(39, int((first - record["act_min"]) / width))] > 0


def test_two_source_sets_cannot_share_a_scan_folder(small_export: Path, tmp_path: Path, db_path: Path) -> None:
    with FeatureStore(db_path) as store:
        import_neuronpedia(store, small_export, progress=False)
        store.con.execute("""INSERT INTO features ("modelId", "layer", "index") VALUES (?, '6-other-set', 0)""", [MODEL])
        with pytest.raises(FeatureDBError, match="would share"):
            export_circuit_tracer(store, tmp_path / "f", progress=False)
        assert export_circuit_tracer(store, tmp_path / "f", source="6-other-set", scan="other",
                                     progress=False)["features"] == 1


def test_parquet_export_writes_every_table(small_export: Path, db_path: Path, tmp_path: Path) -> None:
    with FeatureStore(db_path) as store:
        import_neuronpedia(store, small_export, progress=False)
        rows = export_parquet(store, tmp_path / "pq")
    assert set(rows) == {t.name for t in TABLES}
    acts = pl.read_parquet(tmp_path / "pq" / "activations.parquet")
    assert acts.height == rows["activations"] == 240
    assert {"tokens", "values", "maxValue", "binMin"} <= set(acts.columns)
