"""The typed read layer (featuredb.store.reads): what tracer, ingest and the server ask of the store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import MODEL, SOURCE
from featuredb import FeatureStore
from featuredb.store.reads import (ModelSettings, Scope, SourceSetSettings, SourceSettings, chosen_labels,
                                   count_features, feature_indices, has_features, model_ids, model_settings,
                                   model_sources, present_keys, source_set_settings)
from featuredb.store.schema import feature_key


def test_settings_read_what_ingest_wrote_and_keep_a_format_s_extra_keys() -> None:
    stored = json.dumps({"format": "clt", "transcoders": ["/t/a.safetensors"], "layers": [0, 2], "shared": {"k": 1}})
    settings = SourceSetSettings.from_json(stored)
    assert settings.transcoders == ("/t/a.safetensors",) and settings.layers == (0, 2)
    assert settings.extra == {"shared": {"k": 1}}
    assert json.loads(settings.to_json()) == json.loads(stored)  # written back unchanged
    source = SourceSettings.from_json(json.dumps({"layer": 3, "k": 32, "added_later": True}))
    assert (source.layer, source.k, source.bos_excluded) == (3, 32, False)
    assert SourceSettings.from_json(source.to_json()) == source
    # a row imported from Neuronpedia has no settings: nothing to run, and no error
    assert ModelSettings.from_json(None).path is None and SourceSetSettings.from_json("").transcoders == ()


def test_scopes_keys_and_labels_of_an_imported_store(store_db: Path) -> None:
    with FeatureStore(store_db, read_only=True) as store:
        assert model_ids(store, having="features") == [MODEL]
        assert has_features(store, Scope(MODEL, SOURCE)) and not has_features(store, Scope(MODEL, "9-other"))
        assert count_features(store, Scope(MODEL)) == 40 == len(feature_indices(store, Scope(MODEL, SOURCE)))
        keys = [feature_key(MODEL, SOURCE, 1), feature_key(MODEL, SOURCE, 999)]
        assert present_keys(store, keys) == {keys[0]}
        labels = chosen_labels(store, [feature_key(MODEL, SOURCE, i) for i in (1, 2, 3)])
        # the one label rule: score, then Neuronpedia's type order, baseline last
        assert labels[feature_key(MODEL, SOURCE, 1)] == ("max-act-logits label", "np_max-act-logits")
        assert labels[feature_key(MODEL, SOURCE, 2)] == ("other at 0.8", "oai_token-act-pair")
        assert model_settings(store, MODEL).path is None  # imported: no local weights to run
        assert all(not s.set_settings.transcoders for s in model_sources(store, MODEL))


@pytest.mark.slow
def test_an_ingested_store_records_the_files_inference_and_the_tracer_load(default_store: Path) -> None:
    with FeatureStore(default_store, read_only=True) as store:
        model = model_settings(store, "smollm2-135m-instruct")
        assert model is not None and Path(model.path).is_dir() and model.dtype
        sources = model_sources(store, "smollm2-135m-instruct")
        assert len(sources) == 30
        for s in sources:
            assert s.settings.layer == int(s.source.split("-", 1)[0]) and Path(s.settings.path).exists()
            assert s.settings.bos_excluded and s.settings.d_transcoder == 256
            assert all(Path(p).exists() for p in s.set_settings.transcoders)
        assert source_set_settings(store, "smollm2-135m-instruct", sources[0].set_name) == sources[0].set_settings
        assert source_set_settings(store, "smollm2-135m-instruct", "no-such-set") is None
