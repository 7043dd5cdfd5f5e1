"""`featuredb trace label`: node-id schemes, label preference, errors, supernodes on planted graphs, schema."""

from __future__ import annotations

import html
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from click.testing import CliRunner
from sklearn.metrics import adjusted_rand_score

from conftest import MODEL, SHARED
from featuredb import FeatureStore
from featuredb.cli.root import cli
from featuredb.identity import cantor_pair
from featuredb.neuronpedia import NeuronpediaClient
from featuredb.neuronpedia.client import RetryPolicy
from loopback import serve_in_thread
from tracer.graph_server import VIEWER, create_graph_app
from tracer.label_vectors import label_vectors
from tracer.planted_graph import plant_graph, predicted_groups
from tracer.supernodes import SupernodeOptions, propose_supernodes
from tracer.trace_label import trace_label

SCHEMA = json.loads((SHARED / "formats" / "neuronpedia" / "graph-schema.json").read_text())
SET = "demo-transcoder"


def node(node_id: str, feature: int | None, layer: str, pos: int, kind: str, clerp: str = "") -> dict[str, Any]:
    return {"node_id": node_id, "feature": feature, "layer": layer, "ctx_idx": pos, "feature_type": kind,
            "jsNodeId": node_id, "clerp": clerp, "influence": 0.5, "activation": 1.0, "token_prob": 0.0,
            "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0}


def graph_of(nodes: list[dict[str, Any]], links: list[dict[str, Any]], *, schema_version: int | None = 1,
             qparams_as_strings: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"slug": "g", "scan": MODEL, "prompt": "a b c", "prompt_tokens": ["a", " b", " c"],
                            "feature_details": {"neuronpedia_source_set": SET}}
    if schema_version is not None:
        meta["schema_version"] = schema_version
    qp: dict[str, Any] = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}
    if qparams_as_strings:
        qp["pinnedIds"], qp["supernodes"] = "[]", "[]"
    return {"metadata": meta, "qParams": qp, "nodes": nodes, "links": links}


def feat(i: int, pos: int = 1, clerp: str = "", cantor: bool = True) -> dict[str, Any]:
    return node(f"6_{i}_{pos}", cantor_pair(6, i) if cantor else 6 * 10**4 + i, "6", pos, "cross layer transcoder",
                clerp)


def test_every_node_id_scheme_maps_only_feature_nodes(store_db: Path) -> None:
    nodes = [
        node("E_651_0", 0, "E", 0, "embedding"),
        feat(5, pos=1), feat(7, pos=2, cantor=False),
        node("0_6_1", 6, "0", 1, "mlp reconstruction error"),  # old error id: looks like layer 0, feature 6
        node("6_-1_2", -1, "6", 2, "mlp reconstruction error"),  # new error id
        node("31_42_2", 42, "31", 2, "logit", 'Output " Austin"'),
        node("6_9999_1", cantor_pair(6, 9999), "6", 1, "cross layer transcoder"),  # not in the store
    ]
    for version in (1, None):  # Cantor `feature` and the legacy layer*10^k + i both read from node_id
        graph = graph_of([dict(n) for n in nodes], [], schema_version=version, qparams_as_strings=True)
        with FeatureStore(store_db, read_only=True) as store:
            res = trace_label(store, graph, options=SupernodeOptions(min_size=2))
        r = res.report
        assert (r.feature_nodes, r.mapped, r.labelled) == (3, 2, 2)
        assert r.unmapped == [("6_9999_1", f"{MODEL}/6-{SET}/9999 is not in the store")]
        by_id = {n["node_id"]: n for n in graph["nodes"]}
        assert by_id["6_5_1"]["clerp"] and by_id["6_7_2"]["clerp"]
        assert by_id["0_6_1"]["clerp"] == "" and by_id["31_42_2"]["clerp"] == 'Output " Austin"'


def test_labels_follow_neuronpedia_preference_and_keep_existing_clerps(store_db: Path) -> None:
    graph = graph_of([feat(1), feat(2), feat(3), feat(4, clerp="my own label")], [])
    with FeatureStore(store_db, read_only=True) as store:
        res = trace_label(store, graph)
        clerps = {n["node_id"]: n["clerp"] for n in graph["nodes"]}
        assert clerps == {"6_1_1": "max-act-logits label", "6_2_1": "other at 0.8",
                          "6_3_1": '"Texas" → says "Austin"', "6_4_1": "my own label"}
        assert res.report.kept == 1 and res.report.by_type == {"np_max-act-logits": 1, "oai_token-act-pair": 1,
                                                               "featuredb-baseline": 1}
        again = graph_of([feat(4, clerp="my own label")], [])
        trace_label(store, again, overwrite=True)
        assert again["nodes"][0]["clerp"] != "my own label"
        # clerps a person saved from circuit-tracer's frontend (a JSON string keyed by feature) stay
        saved = graph_of([feat(1)], [])
        saved["qParams"]["clerps"] = json.dumps([[str(cantor_pair(6, 1)), "edited in the frontend"]])
        trace_label(store, saved)
        assert json.loads(saved["qParams"]["clerps"]) == [[str(cantor_pair(6, 1)), "edited in the frontend"],
                                                          [f"6_{cantor_pair(6, 1)}_1", "max-act-logits label"]]


def test_online_fills_features_the_store_lacks_from_neuronpedia(store_db: Path) -> None:
    asked: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        asked.extend(body)
        return httpx.Response(200, json=[{
            "modelId": MODEL, "layer": b["layer"], "index": str(b["index"]), "activations": [],
            "explanations": [{"description": "from Neuronpedia (max-act)", "typeName": "np_max-act", "scoreV1": 0.2},
                             {"description": "other", "typeName": "oai_token-act-pair", "scoreV1": 0.9}]}
            for b in body])

    client = NeuronpediaClient("https://www.neuronpedia.org", api_key="k", transport=httpx.MockTransport(handler),
                               retry=RetryPolicy(max_retries=1, base_delay=0.01))
    graph = graph_of([feat(1), node("6_9999_1", cantor_pair(6, 9999), "6", 1, "cross layer transcoder")], [])
    with FeatureStore(store_db, read_only=True) as store:
        trace_label(store, graph, online=client)
    assert [(a["layer"], a["index"]) for a in asked] == [(f"6-{SET}", 9999)]  # only what the store lacks
    assert {n["node_id"]: n["clerp"] for n in graph["nodes"]}["6_9999_1"] == "from Neuronpedia (max-act)"


def test_cli_writes_a_schema_valid_labelled_graph_with_supernodes(store_db: Path, tmp_path: Path) -> None:
    # Features 10-12 and 20-22 at position 2: two groups with the same in/out links and label texts.
    nodes = [node("E_1_2", 2, "E", 2, "embedding"), node("31_5_2", 5, "31", 2, "logit")]
    links = []
    for i in (10, 11, 12):
        nodes.append(feat(i, pos=2, clerp="Texas state"))
        links += [{"source": "E_1_2", "target": f"6_{i}_2", "weight": 1.0},
                  {"source": f"6_{i}_2", "target": "31_5_2", "weight": 0.8}]
    for i in (20, 21, 22):
        nodes.append(feat(i, pos=2, clerp="football game"))
        links += [{"source": "E_1_2", "target": f"6_{i}_2", "weight": -1.0},
                  {"source": f"6_{i}_2", "target": "31_5_2", "weight": -0.6}]
    src = tmp_path / "graph.json"
    src.write_text(json.dumps(graph_of(nodes, links, qparams_as_strings=True)))
    out = tmp_path / "labelled.json"
    res = CliRunner().invoke(cli, ["trace", "label", str(src), "-o", str(out), "--db", str(store_db), "--json"])
    assert res.exit_code == 0, res.output
    labelled = json.loads(out.read_text())
    jsonschema.validate(labelled, SCHEMA)
    qp = labelled["qParams"]
    groups = sorted(sorted(s[1:]) for s in qp["supernodes"])
    assert groups == [["6_10_2", "6_11_2", "6_12_2"], ["6_20_2", "6_21_2", "6_22_2"]]
    assert sorted(s[0] for s in qp["supernodes"]) == ["Texas state", "football game"]
    assert sorted(qp["pinnedIds"]) == sorted(n for g in groups for n in g)
    assert isinstance(qp["clerps"], str)  # circuit-tracer's frontend runs JSON.parse on it
    assert [f"6_{cantor_pair(6, 10)}_2", "Texas state"] in json.loads(qp["clerps"])
    report = json.loads(res.stdout)
    assert report["mapped"] == 6 and len(report["supernodes"]) == 2


@pytest.mark.parametrize("content,message", [
    ('{"metadata": {"slug": "g", "scan": "demo-model"}, "nodes": [', "graph.json:1: malformed JSON"),
    ('{"metadata": {"slug": "g", "scan": "demo-model"}, "nodes": []}', "missing required key(s) qParams, links"),
    ('{"metadata": {"slug": "g", "scan": "gpt2-small"}, "qParams": {}, "nodes": [], "links": []}',
     "the graph is for model 'gpt2-small', which the store lacks"),
])
def test_bad_graphs_are_one_line_errors_and_write_nothing(store_db: Path, tmp_path: Path, content: str,
                                                          message: str) -> None:
    src = tmp_path / "graph.json"
    src.write_text(content)
    out = tmp_path / "out.json"
    res = CliRunner().invoke(cli, ["trace", "label", str(src), "-o", str(out), "--db", str(store_db)])
    assert res.exit_code == 1 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_supernodes_recover_planted_groups_at_moderate_noise() -> None:
    scores = []
    for seed in range(3):
        pg = plant_graph(noise=0.3, seed=seed)
        labels = {n["node_id"]: n["clerp"] for n in pg.graph["nodes"] if n["feature_type"] == "cross layer transcoder"}
        found = propose_supernodes(pg.graph, label_vectors(None, labels), pg.decoders,
                                   SupernodeOptions(threshold=0.35, max_supernodes=100))
        truth, pred = predicted_groups(pg.truth, [[s.label, *s.node_ids] for s in found])
        scores.append(adjusted_rand_score(truth, pred))
    assert min(scores) >= 0.8, scores
    # at heavy noise the groups are not recoverable: the score must be able to fall
    pg = plant_graph(noise=0.9, seed=0)
    labels = {n["node_id"]: n["clerp"] for n in pg.graph["nodes"] if n["feature_type"] == "cross layer transcoder"}
    found = propose_supernodes(pg.graph, label_vectors(None, labels), pg.decoders, SupernodeOptions(threshold=0.35))
    assert adjusted_rand_score(*predicted_groups(pg.truth, [[s.label, *s.node_ids] for s in found])) < 0.8


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "Chromium is missing: `make test` installs it (Debian package chromium)"
    return found


def test_trace_serve_shows_the_labels_in_headless_chromium(store_db: Path, tmp_path: Path) -> None:
    graphs = tmp_path / "graphs"
    graphs.mkdir()
    src = tmp_path / "in.json"
    nodes = [feat(1, pos=1), feat(2, pos=1), feat(3, pos=2)]
    src.write_text(json.dumps(graph_of(nodes, [], qparams_as_strings=True)))
    res = CliRunner().invoke(cli, ["trace", "label", str(src), "-o", str(graphs / "dallas.json"), "--db",
                                   str(store_db)])
    assert res.exit_code == 0, res.output
    with serve_in_thread(create_graph_app(graphs, str(store_db), frontend=VIEWER)) as url:
        meta = httpx.get(f"{url}/data/graph-metadata.json").json()
        assert [g["slug"] for g in meta["graphs"]] == ["dallas"]
        ff = httpx.get(f"{url}/features/{MODEL}/{cantor_pair(6, 1)}.json")
        assert ff.status_code == 200 and ff.json()["index"] == 1
        jsonschema.validate(ff.json(), json.loads((SHARED / "formats" / "neuronpedia" /
                                                   "feature-details-schema.json").read_text()))
        page = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                               "--virtual-time-budget=10000", f"{url}/index.html?slug=dallas"],
                              capture_output=True, text=True, timeout=120)
    dom = html.unescape(page.stdout)
    for label in ("max-act-logits label", "other at 0.8", '"Texas" → says "Austin"'):
        assert label in dom, page.stdout[:2000] + page.stderr[-2000:]
