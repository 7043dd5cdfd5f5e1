"""Graphs as pydantic models (featuredb.graph_models): what a user relies on when a graph goes through them."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from featuredb.errors import BadInputError
from featuredb.formats.graph_json import parse_graph, parse_graph_model
from featuredb.graph_models import Graph, Node, parse_feature_id

REAL = Path(__file__).resolve().parents[1] / "bench" / "hand_grouped" / "dallas-texas.json.gz"


def real_graph_text() -> str:
    """A real graph of the default model (circuit-tracer's output, labelled, with Neuronpedia's extra fields)."""
    return gzip.decompress(REAL.read_bytes()).decode("utf-8")


def ct_graph_models() -> ModuleType:
    """circuit-tracer's own graph_models.py, loaded from its files (it imports only pydantic, not torch)."""
    spec = importlib.util.find_spec("circuit_tracer")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("circuit-tracer is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "frontend" / "graph_models.py"
    loaded = importlib.util.spec_from_file_location("ct_graph_models", path)
    assert loaded and loaded.loader
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    return module


def test_a_real_graph_round_trips_with_every_field_and_in_its_order() -> None:
    text = real_graph_text()
    graph = parse_graph_model(text, "dallas-texas.json")
    out = graph.to_json()
    assert out == parse_graph(text, "dallas-texas.json")  # nothing lost, nothing added (nulls kept)
    raw = json.loads(text)
    assert list(out["metadata"]) == list(raw["metadata"])  # extras such as hand_grouping stay, after the fields
    assert list(out["qParams"]) == list(raw["qParams"])
    assert [list(n) for n in out["nodes"]] == [list(n) for n in raw["nodes"]]
    assert [n["node_id"] for n in out["nodes"]] == [n["node_id"] for n in raw["nodes"]]
    assert out["links"] == raw["links"]


def test_what_code_sets_is_written_and_nothing_else_changes() -> None:
    text = real_graph_text()
    graph = parse_graph_model(text, "g.json")
    first = next(graph.feature_nodes())
    first.clerp = "relabelled"
    graph.qParams.pinnedIds = [first.node_id]
    out, before = graph.to_json(), parse_graph(text, "g.json")
    assert out["nodes"][0]["clerp"] == "relabelled" and out["qParams"]["pinnedIds"] == [first.node_id]
    out["nodes"][0]["clerp"], out["qParams"]["pinnedIds"] = before["nodes"][0]["clerp"], before["qParams"]["pinnedIds"]
    assert out == before


def test_a_node_missing_optional_fields_does_not_gain_them() -> None:
    text = json.dumps({"metadata": {"slug": "s", "scan": "m"}, "qParams": {},
                       "nodes": [{"node_id": "1_2_3", "feature": None, "layer": "1", "ctx_idx": 3,
                                  "feature_type": "cross layer transcoder", "jsNodeId": "1_2-0", "clerp": "",
                                  "qk_tracing_results": {"kept": True}}],
                       "links": [{"source": "1_2_3", "target": "1_2_3", "weight": 1, "note": "extra"}]})
    out = parse_graph_model(text, "g.json").to_json()
    assert out["nodes"] == json.loads(text)["nodes"] and out["links"] == json.loads(text)["links"]
    assert out["metadata"] == {"slug": "s", "scan": "m"}


@pytest.mark.parametrize(("layer", "feature", "pos"), [(0, 0, 0), (3, 1234, 7), (25, 16383, 40)])
def test_node_ids_are_the_ones_circuit_tracer_writes(layer: int, feature: int, pos: int) -> None:
    ct = ct_graph_models().Node
    assert Node.feature_id(layer, feature, pos) == ct.feature_node(layer, pos, feature).node_id
    assert Node.error_id(layer, pos) == ct.error_node(layer, pos).node_id
    assert Node.embedding_id(feature, pos) == ct.token_node(pos, feature).node_id
    assert Node.logit_id(layer, feature, pos) == ct.logit_node(pos, feature, "tok", num_layers=layer).node_id
    assert parse_feature_id(Node.feature_id(layer, feature, pos)) == (layer, feature, pos)


def test_only_feature_ids_parse_back_into_layer_index_and_position() -> None:
    assert parse_feature_id("6_-1_2") is None and parse_feature_id("E_651_0") is None
    assert parse_feature_id("1_2") is None and parse_feature_id("1_2_" + "9" * 19) is None


def test_circuit_tracers_own_model_dump_is_read_as_it_wrote_it() -> None:
    ct = ct_graph_models()
    model = ct.Model(metadata=ct.Metadata(slug="s", scan="m", transcoder_list=[], prompt_tokens=["a"], prompt="a"),
                     qParams=ct.QParams(pinnedIds=[], supernodes=[], linkType="both", clickedId="", sg_pos=""),
                     nodes=[ct.Node.feature_node(1, 0, 5, influence=0.5, activation=1.0),
                            ct.Node.token_node(0, 9), ct.Node.logit_node(0, 9, "a", 2, token_prob=0.5)],
                     links=[{"source": "E_9_0", "target": "1_5_0", "weight": 0.5}])
    text = model.model_dump_json()
    assert json.dumps(parse_graph_model(text, "g.json").to_json()) == json.dumps(json.loads(text))


@pytest.mark.parametrize(("change", "message"), [
    (lambda g: g["nodes"][1].update(node_id=5), "g.json: nodes[1].node_id: expected a non-empty string"),
    (lambda g: g["links"][0].update(weight="x"), "g.json: links[0].weight: expected a finite number"),
    (lambda g: g["metadata"].pop("slug"), "g.json: metadata.slug: missing"),
])
def test_a_bad_field_is_one_line_naming_it(change: Any, message: str) -> None:
    graph = json.loads(real_graph_text())
    change(graph)
    with pytest.raises(BadInputError) as e:
        parse_graph_model(json.dumps(graph), "g.json")
    assert str(e.value) == message
    with pytest.raises(BadInputError) as e:  # pydantic's own check says it in one line too
        Graph.from_json_dict(graph, "g.json")
    assert "\n" not in str(e.value) and str(e.value).startswith(message.rsplit(": ", 1)[0] + ": ")
