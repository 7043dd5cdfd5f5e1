"""`featuredb np ...`: pulling from a Neuronpedia-compatible server, resuming, graph labels and dry runs."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from conftest import MODEL, SOURCE, table_snapshot
from featuredb import FeatureStore
from featuredb.cli.root import cli
from featuredb.neuronpedia import NeuronpediaClient, NeuronpediaError
from featuredb.neuronpedia.client import RetryPolicy
from featuredb.neuronpedia.sync import pull_features, subgraph_body, upload_payload
from test_neuronpedia_client import server  # noqa: F401  (the loopback server fixture)

SET = SOURCE.split("-", 1)[1]


def _wanted(n: int = 60) -> list[tuple[str, str, int]]:
    return [(MODEL, SOURCE, i) for i in range(n)]


def test_pull_copies_features_from_the_server_into_a_store(server: str, tmp_path: Path) -> None:  # noqa: F811
    with NeuronpediaClient(server) as client, FeatureStore(tmp_path / "b.duckdb") as store:
        report = pull_features(client, store, _wanted() + [(MODEL, SOURCE, 5000)], batch=16, progress=False)
        assert report.fetched == 60 and report.missing == [f"{MODEL}/{SOURCE}/5000"]
        f = store.get_feature(MODEL, SOURCE, 11)
        remote = client.get_feature(MODEL, SOURCE, 11)
    assert f.model_dump() == remote.model_dump()
    with NeuronpediaClient(server) as client, FeatureStore(tmp_path / "b.duckdb") as store:
        again = pull_features(client, store, _wanted(), progress=False)
    assert again.skipped == 60 and again.fetched == 0  # incremental


def test_an_interrupted_pull_resumes_without_losing_or_duplicating(server: str, tmp_path: Path) -> None:  # noqa: F811
    with NeuronpediaClient(server) as client, FeatureStore(tmp_path / "whole.duckdb") as store:
        pull_features(client, store, _wanted(), batch=8, progress=False)
        whole = {t: table_snapshot(store.con, t) for t in ("features", "activations", "explanations")}
    forward = httpx.Client()
    calls = []

    def flaky(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 4:
            return httpx.Response(400, json={"message": "connection dropped"})
        r = forward.request(request.method, str(request.url), content=request.content, headers=request.headers)
        return httpx.Response(r.status_code, content=r.content, headers={"content-type": "application/json"})

    broken = NeuronpediaClient(server, transport=httpx.MockTransport(flaky), concurrency=1,
                               retry=RetryPolicy(max_retries=0))
    with FeatureStore(tmp_path / "resumed.duckdb") as store:
        with pytest.raises(NeuronpediaError):
            pull_features(broken, store, _wanted(), batch=8, progress=False)
        assert store.con.execute("SELECT count(*) FROM features").fetchone()[0] == 24  # three whole batches
        with NeuronpediaClient(server) as client:
            report = pull_features(client, store, _wanted(), batch=8, progress=False)
        assert report.skipped == 24 and report.fetched == 36
        resumed = {t: table_snapshot(store.con, t) for t in ("features", "activations", "explanations")}
    assert resumed == whole


def _graph(tmp_path: Path) -> Path:
    nodes = [
        {"node_id": "E_651_0", "feature": None, "layer": "E", "ctx_idx": 0, "feature_type": "embedding",
         "jsNodeId": "E_651-0", "clerp": ""},
        {"node_id": "6_3_1", "feature": 3, "layer": "6", "ctx_idx": 1, "feature_type": "cross layer transcoder",
         "jsNodeId": "6_3-0", "clerp": "Texas"},
        {"node_id": "6_5_2", "feature": 5, "layer": "6", "ctx_idx": 2, "feature_type": "cross layer transcoder",
         "jsNodeId": "6_5-0", "clerp": ""},
        {"node_id": "6_3_2", "feature": 3, "layer": "6", "ctx_idx": 2, "feature_type": "cross layer transcoder",
         "jsNodeId": "6_3-1", "clerp": "Texas"},
        {"node_id": "0_6_2", "feature": None, "layer": "6", "ctx_idx": 2, "feature_type": "mlp reconstruction error",
         "jsNodeId": "0_6-0", "clerp": ""},
        {"node_id": "31_3_2", "feature": 3, "layer": "31", "ctx_idx": 2, "feature_type": "logit",
         "jsNodeId": "L_3-0", "clerp": "Output \" Austin\""},
    ]
    graph = {"metadata": {"slug": "austin", "scan": MODEL, "prompt_tokens": ["a", "b", "c"], "prompt": "abc",
                          "feature_details": {"neuronpedia_source_set": SET}},
             "qParams": {"pinnedIds": json.dumps(["6_3_1"]), "supernodes": json.dumps([["Texas", "6_3_1", "6_3_2"]])},
             "nodes": nodes, "links": [{"source": "6_3_1", "target": "31_3_2", "weight": 1.0}]}
    path = tmp_path / "graph.json"
    path.write_text(json.dumps(graph))
    return path


def test_pull_graph_labels_fetches_exactly_the_graph_features(server: str, tmp_path: Path) -> None:  # noqa: F811
    db = str(tmp_path / "g.duckdb")
    res = CliRunner().invoke(cli, ["np", "pull-graph-labels", str(_graph(tmp_path)), "--base-url", server,
                                   "--db", db, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["fetched"] == 2
    with FeatureStore(db, read_only=True) as store:
        got = store.con.execute('SELECT "index" FROM features ORDER BY 1').fetchall()
        assert got == [(3,), (5,)]
        assert store.get_feature(MODEL, SOURCE, 3).explanations


def test_push_labels_dry_run_prints_the_subgraph_request_without_the_key(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["np", "push-labels", str(_graph(tmp_path)), "--dry-run", "--api-key", "s3cret"])
    assert res.exit_code == 0, res.output
    line = next(l for l in res.output.splitlines() if l.startswith("DRY-RUN"))
    assert line.startswith("DRY-RUN POST https://www.neuronpedia.org/api/graph/subgraph/save ")
    body = json.loads(line.split(" ", 3)[3])
    assert body["clerps"] == [["6_3_1", "Texas"], ["6_3_2", "Texas"]]
    assert body["supernodes"] == [["Texas", "6_3_1", "6_3_2"]] and body["pinnedIds"] == ["6_3_1"]
    assert "s3cret" not in res.output


def test_upload_features_sends_neuronpedia_upload_batches(small_export: Path, db_path: Path) -> None:
    from featuredb.formats.neuronpedia_import import import_neuronpedia

    with FeatureStore(db_path) as store:
        import_neuronpedia(store, small_export, progress=False)
        payload = upload_payload(store, MODEL, SOURCE)
    assert len(payload) == 40
    first = payload[0]
    assert first["index"] == 0 and 0 <= first["density"] <= 1 and first["explanations"][0]["text"]
    assert all(len(a["tokens"]) == len(a["values"]) for a in first["activations"])
    assert {a["quantileMin"] is None for a in first["activations"]} == {True, False}  # top and interval examples
    res = CliRunner().invoke(cli, ["np", "upload-features", MODEL, SOURCE, "--db", str(db_path), "--dry-run"])
    assert res.exit_code == 0 and res.output.count("DRY-RUN POST") == 1 and "/api/feature/upload-batch" in res.output


def test_subgraph_body_reads_string_qparams(tmp_path: Path) -> None:
    from featuredb.formats.graph_json import load_graph

    body = subgraph_body(load_graph(_graph(tmp_path)))
    assert body["slug"] == "austin" and body["modelId"] == MODEL


def test_np_indices_take_the_shared_range_grammar(tmp_path) -> None:
    """`np pull --indices` reads ranges as every other command does (a mix like '0-2,7' failed before)."""
    from featuredb.errors import FeatureDBError
    from featuredb.neuronpedia.sync import parse_indices

    assert parse_indices("0-2,7") == [0, 1, 2, 7] and parse_indices("5,5,3") == [5, 3]
    listed = tmp_path / "indices.txt"
    listed.write_text("4\n\n9\n")
    assert parse_indices(str(listed)) == [4, 9]
    for bad in ("3-1", "a", "1,,2"):
        with pytest.raises(FeatureDBError, match="--indices"):
            parse_indices(bad)
