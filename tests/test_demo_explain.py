"""The demo's `--endpoint` step: a graph's features explained by an OpenAI-compatible server, scored, and then
chosen as the graph's node labels by the one label rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from fake_openai import fake_openai
from featuredb import FeatureStore
from test_server_inference_and_graphs import small_graph
from tiny_model import ingest_tiny_store
from tracer.graph_explainer import EXPLAIN_TYPE, graph_explainer
from tracer.trace_label import trace_label


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return ingest_tiny_store(tmp_path_factory.mktemp("demo-explain"))


def test_graph_features_are_explained_scored_and_become_its_labels(tiny: dict[str, Path]) -> None:
    graph = small_graph("explained")
    graph["metadata"]["feature_details"] = {"neuronpedia_source_set": "tc16"}
    with fake_openai(lambda req: "Explanation: cities and states") as server:
        explain = graph_explainer(str(tiny["db"]), "tiny", server.url, "fake-explainer", "FEATUREDB_NO_SUCH_KEY",
                                  quiet=True)
        first = explain(graph)
        again = explain(graph)  # the demo run twice: nothing is sent again
        sent = len(server.chat_requests)
    assert first["features"] == 1 and first["explained"] == 1 and first["failed"] == 0
    assert again["explained"] == 0 and again["skipped"] == 1 and sent == 1
    with FeatureStore(tiny["db"], read_only=True) as store:
        rows = store.con.execute('SELECT description, "explanationModelName" FROM explanations '
                                 "WHERE feature_key = 'tiny/1-tc16/3' AND \"typeName\" = ?", [EXPLAIN_TYPE]).fetchall()
        assert rows == [("cities and states", "fake-explainer")]
        trace_label(store, graph, where="explained")
    node = next(n for n in graph["nodes"] if n["node_id"] == "1_3_1")
    assert node["clerp"] == "cities and states"
