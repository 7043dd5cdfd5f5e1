"""Neuronpedia's own Python client (PyPI `neuronpedia` 1.2.1), unchanged, against a live `featuredb serve`:
pointed at the local server the way its users point it at localhost (NPRequest.BASE_URL)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, Iterator

import httpx
import neuronpedia
import pytest
import requests
from neuronpedia.np_activation import Activation
from neuronpedia.np_explanation import Explanation
from neuronpedia.np_feature import Feature, Logit
from neuronpedia.np_graph_metadata import NPGraphMetadata
from neuronpedia.np_model import Model
from neuronpedia.np_sae_feature import SAEFeature
from neuronpedia.np_source_set import SourceSet
from neuronpedia.requests.activation_request import ActivationRequest
from neuronpedia.requests.base_request import NPRequest, NPUnauthorizedError
from neuronpedia.requests.feature_request import FeatureRequest
from neuronpedia.requests.graph_request import GraphRequest
from neuronpedia.requests.source_activation_request import SourceActivationRequest
from neuronpedia.requests.topk_by_token_request import TopKByTokenRequest

from featuredb import FeatureStore
from featuredb.server.app import create_app
from featuredb.server.limits import MAX_GRAPH_BYTES
from loopback import serve_in_thread
from test_server_inference_and_graphs import small_graph
from tiny_model import ingest_tiny_store

TOKEN = "local-write-token"
TEXT = "the city of Texas was a state team"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return ingest_tiny_store(tmp_path_factory.mktemp("official-client"))


@pytest.fixture(scope="module")
def server(tiny: dict[str, Path]) -> Iterator[str]:
    db = tiny["db"].with_name("served.duckdb")
    db.write_bytes(tiny["db"].read_bytes())
    with serve_in_thread(create_app(str(db), write_token=TOKEN)) as url:
        yield url


@pytest.fixture
def client(server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The official client's base URL and key, as a user sets them for a local Neuronpedia."""
    monkeypatch.setattr(NPRequest, "BASE_URL", server + "/api")
    monkeypatch.setenv("NEURONPEDIA_API_KEY", TOKEN)
    return server


def stored(tiny: dict[str, Path], source: str, index: int) -> dict[str, Any]:
    with FeatureStore(tiny["db"], read_only=True) as store:
        return store.get_feature("tiny", source, index).model_dump(mode="json")


def test_feature_get_returns_the_stores_examples(client: str, tiny: dict[str, Path]) -> None:
    want = stored(tiny, "1-tc16", 3)
    got = FeatureRequest().get("tiny", "1-tc16", 3)
    assert (got.modelId, got.source, got.index) == ("tiny", "1-tc16", "3")
    assert got.density == pytest.approx(want["frac_nonzero"])
    assert [a.tokens for a in got.activations] == [a["tokens"] for a in want["activations"]]
    assert [a.values for a in got.activations] == [a["values"] for a in want["activations"]]
    interval = [a for a in got.activations if a.quantileMin is not None and a.quantileMin >= 0]
    assert interval and all(0 <= a.quantileFraction <= 1 for a in interval)


def test_feature_get_carries_the_relations_neuronpedia_includes(client: str) -> None:
    raw = requests.get(f"{client}/api/feature/tiny/1-tc16/3").json()
    assert raw["model"]["id"] == "tiny" and raw["source"]["id"] == "1-tc16" and raw["sourceSet"]["name"] == "tc16"
    assert raw["lists"] == [] and raw["comments"] == []
    assert all(a["source"] == "1-tc16" for a in raw["activations"])
    sae_feature = SAEFeature.get("tiny", "1-tc16", "3")
    assert json.loads(sae_feature.jsonData)["activations"] == raw["activations"]


def test_uploaded_model_source_set_and_features_read_back(client: str) -> None:
    model = Model.new("local-model", 2, "Local model", "https://example.org/local")
    assert (model.id, model.layers, model.display_name) == ("local-model", 2, "Local model")
    sset = SourceSet.new("mytc", "local-model", "my transcoders", "https://example.org/tc")
    assert [s.id for s in sset.sources] == ["0-mytc", "1-mytc"]
    assert SourceSet.get("local-model", "mytc").sources == sset.sources
    feature = Feature("local-model", "1-mytc", 7, density=0.02, top_logits=[Logit(" Austin", 1.5)],
                      bottom_logits=[Logit(" Paris", -0.5)],
                      explanations=[Explanation("local-model", "1-mytc", 7, "Texas cities", "np_max-act-logits",
                                                "gpt-4o-mini")],
                      activations=[Activation("local-model", "1-mytc", 7, ["in", " Dallas"], [0.0, 3.0],
                                              quantileMax=3.0, quantileMin=2.0, quantileFraction=0.25)])
    assert sset.get_source_for_layer_number(1).upload_batch([feature]) == {"message": "1 features created."}
    got = Feature.get("local-model", "1-mytc", 7)
    assert [(e.text, e.method, e.explainer_model) for e in got.explanations] == [
        ("Texas cities", "np_max-act-logits", "gpt-4o-mini")]
    assert got.activations[0].tokens == ["in", " Dallas"] and got.activations[0].quantileFraction == 0.25
    assert got.density == pytest.approx(0.02)
    raw = requests.get(f"{client}/api/feature/local-model/1-mytc/7").json()
    assert raw["pos_str"] == [" Austin"] and raw["neg_values"] == [-0.5] and raw["maxActApprox"] == 3.0
    assert ActivationRequest().upload_batch("local-model", "1-mytc", "7", [
        Activation("local-model", "1-mytc", 7, ["a", " Houston"], [0.5, 2.5])]) == {"message": "1 activations created."}
    assert len(Feature.get("local-model", "1-mytc", 7).activations) == 2


def test_upload_into_a_source_that_does_not_exist_is_a_clear_404(client: str) -> None:
    feature = Feature("tiny", "9-nope", 1, activations=[Activation("tiny", "9-nope", 1, ["a"], [1.0])])
    with pytest.raises(requests.HTTPError, match="not found"):
        FeatureRequest().upload_batch("tiny", "9-nope", [feature])


def test_writes_need_the_servers_token(client: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEURONPEDIA_API_KEY", "wrong")
    with pytest.raises(NPUnauthorizedError):
        Model.new("other-model", 2)
    with pytest.raises(NPUnauthorizedError):
        GraphRequest().upload(json.dumps(small_graph("denied")))


def test_inference_calls_match_the_local_model(client: str, tiny: dict[str, Path]) -> None:
    one = ActivationRequest().compute_activation_for_text("tiny", "1-tc16", 3, TEXT)
    two = ActivationRequest().compute_activation_for_texts("tiny", "1-tc16", 3, [TEXT, "the state"])
    assert two[0].values == pytest.approx(one.values) and len(two[1].tokens) == 3
    sparse = ActivationRequest().compute_all_source_activations_for_text("tiny", "1-tc16", TEXT)[0]
    assert sparse["tokens"] == one.tokens
    for pos, value in sparse["activeFeatures"].get("3", []):
        assert value == pytest.approx(one.values[pos], abs=1e-3)
    assert len(sparse["activeFeatures"].get("3", [])) == sum(v > 0 for v in one.values[1:])
    by_token = TopKByTokenRequest().compute_top_features_by_token_for_text("tiny", "1-tc16", TEXT, num_results=3)
    assert [r.token for r in by_token] == one.tokens[1:]
    assert all(len(r.topFeatures) <= 3 for r in by_token) and any(r.topFeatures for r in by_token)
    batch = TopKByTokenRequest().compute_top_features_by_token_for_texts("tiny", "1-tc16", [TEXT, "the state"], 3)
    assert [[f.feature.index for f in r.topFeatures] for r in batch[0]] == \
        [[f.feature.index for f in r.topFeatures] for r in by_token]
    top = SourceActivationRequest().compute_top_features_for_text("tiny", "1-tc16", TEXT, num_results=5)
    assert 0 < len(top) <= 5 and all(a.source == "1-tc16" and a.tokens == one.tokens for a in top)
    assert [max(a.values) for a in top] == sorted((max(a.values) for a in top), reverse=True)
    both = SourceActivationRequest().compute_top_features_for_texts("tiny", ["1-tc16", "2-tc16"], [TEXT, "the state"])
    assert len(both) == 2 and {a.source for a in both[0]} <= {"1-tc16", "2-tc16"}


def test_graph_upload_get_list_delete(client: str, tmp_path: Path) -> None:
    path = tmp_path / "client-graph.json"
    path.write_text(json.dumps(small_graph("client-graph")))
    meta = NPGraphMetadata.upload_file(str(path))  # signed-put, a gzipped PUT, save-to-db, get
    assert (meta.model_id, meta.slug, meta.prompt_tokens) == ("tiny", "client-graph", ["the", " city"])
    assert requests.get(meta.json_url).json()["nodes"] == small_graph("client-graph")["nodes"]
    assert "client-graph" in [g.slug for g in NPGraphMetadata.list_owned()]
    meta.delete()
    with pytest.raises(requests.HTTPError, match="not found"):
        NPGraphMetadata.get("tiny", "client-graph")


def test_a_gzip_bomb_upload_is_refused(client: str) -> None:
    auth = {"x-api-key": TOKEN}
    bomb = gzip.compress(b" " * (MAX_GRAPH_BYTES + 1024))
    put = httpx.post(f"{client}/api/graph/signed-put", json={"filename": "b.json", "contentLength": len(bomb)},
                     headers=auth).json()
    r = httpx.put(put["url"], content=bomb, headers={"content-encoding": "gzip"})
    assert r.status_code == 400 and "once unzipped" in r.json()["error"]


def test_a_read_only_server_refuses_uploads(tiny: dict[str, Path], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "ro.duckdb"
    db.write_bytes(tiny["db"].read_bytes())
    with serve_in_thread(create_app(str(db))) as url:
        monkeypatch.setattr(NPRequest, "BASE_URL", url + "/api")
        with neuronpedia.api_key(TOKEN):
            assert FeatureRequest().get("tiny", "1-tc16", 3).index == "3"  # reads still work
            with pytest.raises(requests.HTTPError, match="403"):
                Model.new("ro-model", 2)


@pytest.mark.circuit_tracer
def test_saelens_feature_helper_reads_the_local_server(client: str, tiny: dict[str, Path],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from sae_lens.analysis import neuronpedia_integration as np_integration

    monkeypatch.setattr(np_integration, "NEURONPEDIA_DOMAIN", client)  # the helper takes no base URL argument
    got = np_integration.get_neuronpedia_feature(3, 1, model="tiny", dataset="tc16")
    want = stored(tiny, "1-tc16", 3)
    assert got["index"] == 3 and got["layer"] == "1-tc16"
    assert [a["tokens"] for a in got["activations"]] == [a["tokens"] for a in want["activations"]]
