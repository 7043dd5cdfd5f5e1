"""The server's inference routes (on a store ingested from a tiny Llama) and graph routes, over loopback HTTP."""

from __future__ import annotations

import asyncio
import html
import json
import re
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from click.testing import CliRunner

from featuredb import FeatureStore
from featuredb.cli.root import cli
from featuredb.neuronpedia import (AsyncNeuronpediaClient, NeuronpediaClient, NeuronpediaNotFoundError,
                                   UnauthorizedError)
from featuredb.search.inference import inference_search
from featuredb.server.app import create_app
from loopback import serve_in_thread
from tiny_model import ingest_tiny_store

TEXT = "the city of Texas was a state team"
TOKEN = "write-secret"


def small_graph(slug: str = "tiny-texas") -> dict[str, Any]:
    """A two-feature graph of the tiny model, as circuit-tracer writes it (qParams as JSON strings)."""
    nodes = [
        {"node_id": "E_1_0", "feature": None, "layer": "E", "ctx_idx": 0, "feature_type": "embedding",
         "token_prob": 0.0, "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0, "jsNodeId": "E_1-0",
         "clerp": "", "influence": None, "activation": None},
        {"node_id": "1_3_1", "feature": 3, "layer": "1", "ctx_idx": 1, "feature_type": "cross layer transcoder",
         "token_prob": 0.0, "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0, "jsNodeId": "1_3-0",
         "clerp": "", "influence": 0.5, "activation": 1.0},
    ]
    return {"metadata": {"slug": slug, "scan": "tiny", "prompt": "the city", "prompt_tokens": ["the", " city"],
                         "schema_version": 1},
            "qParams": {"pinnedIds": "[]", "supernodes": "[]", "linkType": "both", "clickedId": "", "sg_pos": ""},
            "nodes": nodes, "links": [{"source": "E_1_0", "target": "1_3_1", "weight": 0.7}]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return ingest_tiny_store(tmp_path_factory.mktemp("server-inference"))


@pytest.fixture(scope="module")
def server(tiny: dict[str, Path]) -> Iterator[str]:
    db = tiny["db"].with_name("served.duckdb")  # the writable server holds its file; tests read the original
    db.write_bytes(tiny["db"].read_bytes())
    with serve_in_thread(create_app(str(db), write_token=TOKEN)) as url:
        yield url


def test_topk_by_token_equals_inference_search(server: str, tiny: dict[str, Path]) -> None:
    with NeuronpediaClient(server) as np_:
        got = np_.search_topk_by_token("tiny", "1-tc16", TEXT, num_results=3, density_threshold=-1)
    with FeatureStore(tiny["db"], read_only=True) as store:
        want = inference_search(store, "tiny", TEXT, sources=["1-tc16"], top_k=3, ignore_bos=True)
    assert got["source"] == "1-tc16"
    assert [r["position"] for r in got["results"]] == [t.position for t in want.by_token]  # BOS left out
    for r, w in zip(got["results"], want.by_token):
        assert [f["featureIndex"] for f in r["topFeatures"]] == [f.index for f in w.top_features]
        assert [f["activationValue"] for f in r["topFeatures"]] == pytest.approx([f.activation for f in w.top_features])
        assert all(f["feature"]["index"] == str(f["featureIndex"]) and "frac_nonzero" in f["feature"]
                   for f in r["topFeatures"])


def test_search_page_runs_a_text_and_links_what_fires(server: str, tiny: dict[str, Path]) -> None:
    """The web UI's inference mode: the text's strongest features, linked to their pages, as inference_search."""
    page = httpx.get(server + "/search", params={"q": TEXT, "mode": "inference"}, timeout=120)
    assert page.status_code == 200, page.text[:500]
    with FeatureStore(tiny["db"], read_only=True) as store:
        want = inference_search(store, "tiny", TEXT, limit=30)
    assert want.overall
    strongest = page.text.split("Strongest features over the text", 1)[1].split("By token", 1)[0]
    linked = re.findall(r'href="/tiny/([^/"]+)/([0-9]+)"', strongest)
    assert linked == [(f.source, str(f.index)) for f in want.overall]
    assert all(f'<span class="chip">{html.escape(t.token)}</span>' in page.text for t in want.by_token)
    # the layer filter runs only those layers' transcoders
    layer = int(want.overall[0].source.split("-")[0])
    only = httpx.get(server + "/search", params={"q": TEXT, "mode": "inference", "layers": str(layer)}, timeout=120)
    shown = re.findall(r'href="/tiny/([^/"]+)/[0-9]+"', only.text)
    assert shown and all(s.startswith(f"{layer}-") for s in shown)
    none = httpx.get(server + "/search", params={"q": TEXT, "mode": "inference", "layers": "90-99"}, timeout=120)
    assert none.status_code == 404 and "no source in layers 90-99" in none.text


def test_topk_density_threshold_drops_dense_features(server: str) -> None:
    with NeuronpediaClient(server) as np_:
        every = np_.search_topk_by_token("tiny", "2-tc16", TEXT, num_results=10, density_threshold=-1)
        got = np_.search_topk_by_token("tiny", "2-tc16", TEXT, num_results=10, density_threshold=0.45)
        kept = [f["feature"]["frac_nonzero"] for r in got["results"] for f in r["topFeatures"]]
        assert 0 < len(kept) < sum(len(r["topFeatures"]) for r in every["results"]) and max(kept) <= 0.45
        with pytest.raises(Exception, match="densityThreshold must be between 0 and 1"):
            np_.search_topk_by_token("tiny", "2-tc16", TEXT, density_threshold=3)


def test_activation_new_gives_every_token_value_of_the_feature(server: str) -> None:
    with NeuronpediaClient(server) as np_:
        topk = np_.search_topk_by_token("tiny", "1-tc16", TEXT, num_results=1, ignore_bos=False,
                                        density_threshold=-1)
        pos, top = next((r["position"], r["topFeatures"][0]) for r in topk["results"] if r["topFeatures"])
        act = np_.activation_new("tiny", "1-tc16", top["featureIndex"], TEXT)
        assert act["layer"] == "1-tc16" and act["index"] == str(top["featureIndex"])
        assert len(act["values"]) == len(act["tokens"]) == len(topk["results"])
        assert act["values"][pos] == pytest.approx(top["activationValue"], rel=1e-5)
        assert act["maxValue"] == max(act["values"]) and act["values"][act["maxValueTokenIndex"]] == act["maxValue"]
        both = np_.activation_new("tiny", "1-tc16", top["featureIndex"], [TEXT, "a team"], ignore_bos=True)
        assert isinstance(both, list) and both[0]["values"] == pytest.approx(act["values"][1:])
        with pytest.raises(Exception, match="out of range"):
            np_.activation_new("tiny", "1-tc16", 999, TEXT)


def test_search_all_ranks_by_max_or_by_sort_indexes(server: str) -> None:
    with NeuronpediaClient(server) as np_:
        res = np_.search_all("tiny", "tc16", TEXT, num_results=8)
        maxes = [r["maxValue"] for r in res["result"]]
        assert res["result"] and maxes == sorted(maxes, reverse=True)
        assert all(r["values"][r["maxValueIndex"]] == r["maxValue"] and r["maxValueIndex"] != 0
                   for r in res["result"])
        assert {r["layer"] for r in res["result"]} <= {"1-tc16", "2-tc16"}
        assert all(r["neuron"]["index"] == r["index"] for r in res["result"])
        at3 = np_.search_all("tiny", "tc16", TEXT, layers=["2-tc16"], sort_indexes=[3], num_results=5)
        sums = [r["values"][3] for r in at3["result"]]
        assert sums == sorted(sums, reverse=True) and all(s > 0 for s in sums)
        assert {r["layer"] for r in at3["result"]} == {"2-tc16"}
        with pytest.raises(NeuronpediaNotFoundError, match="source set tiny/nope"):
            np_.search_all("tiny", "nope", TEXT)


def test_graph_upload_read_and_subgraphs_need_the_write_token(server: str) -> None:
    graph = small_graph()
    with NeuronpediaClient(server, api_key="wrong") as bad:
        with pytest.raises(UnauthorizedError):
            bad.upload_graph(graph)
    with NeuronpediaClient(server, api_key=TOKEN) as np_:
        rec = np_.upload_graph(graph)
        assert (rec["modelId"], rec["slug"]) == ("tiny", "tiny-texas")
        got = np_.get_graph("tiny", "tiny-texas")
        assert got["promptTokens"] == ["the", " city"] and got["url"].startswith(server)
        assert httpx.get(got["url"]).json() == graph
        assert [g["slug"] for g in np_.list_owned_graphs()] == ["tiny-texas"]
        saved = np_.save_subgraph("tiny", "tiny-texas", pinned_ids=["1_3_1"], supernodes=[["city", "1_3_1"]],
                                  clerps=[["1_3_1", "city of"]], display_name="labels")
        subs = np_.list_subgraphs("tiny", "tiny-texas")
        assert [(s["id"], s["supernodes"], s["clerps"]) for s in subs] == [
            (saved["subgraphId"], [["city", "1_3_1"]], [["1_3_1", "city of"]])]
        np_.delete_subgraph(saved["subgraphId"])
        assert np_.list_subgraphs("tiny", "tiny-texas") == []
        with pytest.raises(NeuronpediaNotFoundError):
            np_.get_graph("tiny", "no-such-graph")


def test_async_client_reaches_the_inference_and_graph_routes(server: str) -> None:
    async def run() -> tuple[dict, dict]:
        async with AsyncNeuronpediaClient(server, api_key=TOKEN) as np_:
            await np_.upload_graph(small_graph("async-graph"))
            return (await np_.get_graph("tiny", "async-graph"),
                    await np_.search_topk_by_token("tiny", "2-tc16", TEXT, num_results=2, density_threshold=-1))

    rec, topk = asyncio.run(run())
    assert rec["slug"] == "async-graph" and all(len(r["topFeatures"]) <= 2 for r in topk["results"])


def test_read_only_server_refuses_writes_with_403(tiny: dict[str, Path], tmp_path: Path) -> None:
    db = tmp_path / "ro.duckdb"
    db.write_bytes(tiny["db"].read_bytes())
    with serve_in_thread(create_app(str(db))) as url:
        r = httpx.post(f"{url}/api/graph/signed-put", json={"filename": "g.json", "contentLength": 2000},
                       headers={"x-api-key": TOKEN})
        assert r.status_code == 403 and "read-only" in r.json()["error"]


def test_cli_import_graph_then_the_server_serves_it(tiny: dict[str, Path], tmp_path: Path) -> None:
    db = tmp_path / "g.duckdb"
    db.write_bytes(tiny["db"].read_bytes())
    path = tmp_path / "graph.json"
    path.write_text(json.dumps(small_graph("cli-graph")))
    res = CliRunner().invoke(cli, ["import", "graph", str(path), "--db", str(db), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["slug"] == "cli-graph"
    bad = tmp_path / "bad.json"
    bad.write_text('{"metadata": {"slug": "x", "scan": "tiny"}, "nodes": []}')
    res = CliRunner().invoke(cli, ["import", "graph", str(bad), "--db", str(db)])
    assert res.exit_code == 1 and "missing required key(s) qParams, links" in res.stderr
    with serve_in_thread(create_app(str(db))) as url:
        rec = httpx.get(f"{url}/api/graph/tiny/cli-graph").json()
        assert rec["slug"] == "cli-graph" and httpx.get(rec["url"]).json()["metadata"]["slug"] == "cli-graph"
