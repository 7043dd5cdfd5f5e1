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
from tracer.example_vectors import example_windows, window_rows
from tracer.graph_server import VIEWER, create_graph_app
from tracer.node_mapping import map_nodes
from tracer.label_vectors import label_vectors
from tracer.planted_graph import plant_graph, predicted_groups
from tracer.supernodes import SupernodeOptions, propose, propose_supernodes
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
            "explanations": [{"description": "other", "typeName": "oai_token-act-pair", "scoreV1": 0.9},
                             {"description": "from Neuronpedia (max-act)", "typeName": "np_max-act", "scoreV1": 0.9}]}
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
                                   SupernodeOptions(max_supernodes=100))
        truth, pred = predicted_groups(pg.truth, [[s.label, *s.node_ids] for s in found])
        scores.append(adjusted_rand_score(truth, pred))
    assert sum(scores) / len(scores) >= 0.9 and min(scores) >= 0.8, scores
    # at heavy noise the groups are not recoverable: the score must be able to fall
    pg = plant_graph(noise=0.9, seed=0)
    labels = {n["node_id"]: n["clerp"] for n in pg.graph["nodes"] if n["feature_type"] == "cross layer transcoder"}
    found = propose_supernodes(pg.graph, label_vectors(None, labels), pg.decoders, SupernodeOptions())
    assert adjusted_rand_score(*predicted_groups(pg.truth, [[s.label, *s.node_ids] for s in found])) < 0.8


def _node(layer: int, index: int, pos: int, clerp: str, influence: float = 0.05) -> dict:
    """A feature node; `influence` is its own share, turned into circuit-tracer's cumulative value by _graph."""
    return {"node_id": f"{layer}_{index}_{pos}", "feature": index, "layer": str(layer), "ctx_idx": pos,
            "feature_type": "cross layer transcoder", "jsNodeId": f"{layer}_{index}-0", "clerp": clerp,
            "influence": influence, "activation": 1.0}


def _graph(nodes: list[dict], scan: str = "elsewhere-model") -> dict:
    """A graph of the nodes, their own influence shares made cumulative (most influential first), as
    circuit-tracer writes `influence`."""
    total = sum(n["influence"] for n in nodes)
    acc = 0.0
    for n in sorted(nodes, key=lambda n: -n["influence"]):
        acc += n["influence"]
        n["influence"] = acc / total
    return {"metadata": {"slug": "g", "scan": scan, "prompt_tokens": ["<bos>", "a", "b", "c", "d"]},
            "qParams": {"pinnedIds": [], "supernodes": []}, "nodes": nodes, "links": []}


def test_groups_are_capped_and_leave_out_the_sink_and_uninfluential_nodes() -> None:
    nodes = [_node(5, k, 2, '"Texas" after "the"', 0.05 - 0.001 * k) for k in range(1, 13)]  # 12 alike, one layer
    nodes += [_node(layer, 2, 0, '"Texas" after "the"', 0.2) for layer in range(3)]  # the sink position
    nodes += [_node(layer, 3, 2, '"Texas" after "the"', 0.0005) for layer in range(2)]  # next to no influence
    nodes += [_node(layer, 4, pos, f'punctuation "{ch}"', 0.1) for layer, (pos, ch) in enumerate([(3, ","), (3, ".")])]
    graph = _graph(nodes)
    labels = {n["node_id"]: n["clerp"] for n in nodes}
    g = propose(graph, label_vectors(None, labels), None, SupernodeOptions(max_size=8, influence=0.99))
    grouped = [m for s in g.supernodes for m in s.node_ids]
    assert all(len(s.node_ids) <= 8 for s in g.supernodes)
    assert not any(m.endswith("_0") for m in grouped)  # nothing at the sink position
    assert not any(m.startswith(("0_3_", "1_3_")) for m in grouped)
    texas = next(s for s in g.supernodes if s.label == '"Texas"')
    assert texas.node_ids == [f"5_{k}_2" for k in range(1, 9)]  # the 8 most influential
    assert g.ungrouped == {"at the sink position 0": 3, "outside the top 99% of feature influence": 2,
                           "over the group size cap 8": 4}
    punct = next(s for s in g.supernodes if s.kind != "content")
    assert punct.label == "punctuation" and punct.positions == [3]
    assert g.supernodes == [texas, punct]  # by summed influence: 8 x ~0.046 against 2 x 0.1


def test_one_concept_at_two_depths_is_two_named_groups_and_takes_no_unrelated_neighbour() -> None:
    nodes = [_node(layer, 1, 2, '"Texas" after "the"', 0.05 - 0.001 * layer) for layer in range(12)]
    nodes += [_node(layer, 4, 3, f'punctuation "{ch}"', 0.1) for layer, ch in enumerate(",.")]
    g = propose(_graph(nodes), label_vectors(None, {n["node_id"]: n["clerp"] for n in nodes}), None,
                SupernodeOptions(max_size=8, influence=1.0))
    groups = {s.label: s.node_ids for s in g.supernodes}
    assert groups == {'"Texas" @ "b" L0-7': [f"{layer}_1_2" for layer in range(8)],
                      '"Texas" @ "b" L8-11': [f"{layer}_1_2" for layer in range(8, 12)],
                      "punctuation": ["0_4_3", "1_4_3"]}, groups


@pytest.mark.parametrize("corpus_rows", [True, False], ids=["ingested", "imported-without-corpus-rows"])
def test_features_that_share_their_top_examples_are_grouped(store_db: Path, corpus_rows: bool) -> None:
    """Features 5 and 7 peak on the same examples (7's are a copy of 5's), 9 on others; their labels, edges and
    layer say nothing either way. Only the shared examples can put 5 and 7 together."""
    with FeatureStore(store_db) as store:
        key5, key7 = (store.con.execute('SELECT DISTINCT feature_key FROM activations WHERE "index" = ?',
                                        [i]).fetchone()[0] for i in (5, 7))
        # edit whole rows: move ingest's compact examples (schema v7) into activation_rows first
        store.con.execute("CREATE TEMP TABLE _all AS SELECT * FROM activations")
        store.con.execute("DELETE FROM activation_examples")
        store.con.execute("DELETE FROM feature_packs")
        store.con.execute("DELETE FROM activation_rows")
        store.con.execute("INSERT INTO activation_rows SELECT * FROM _all")
        store.con.execute("DELETE FROM activation_rows WHERE feature_key = ?", [key7])
        store.con.execute(f"""INSERT INTO activation_rows SELECT * REPLACE ('copy-' || id AS id, 7 AS "index",
                              ? AS feature_key{', NULL AS "dataIndex"' if not corpus_rows else ''})
                              FROM activation_rows WHERE feature_key = ?""", [key7, key5])
        if not corpus_rows:
            store.con.execute('UPDATE activation_rows SET "dataIndex" = NULL')
        else:
            store.con.execute("""UPDATE activation_rows SET "dataIndex" = coalesce("dataIndex", id)""")
        nodes = [feat(5, clerp="alpha particles"), feat(7, clerp="tax law"), feat(9, clerp="guitar chords")]
        graph = graph_of(nodes, [])
        mapping = map_nodes(store, graph)
        windows = example_windows(store, mapping)
        g = propose(graph, label_vectors(None, {n["node_id"]: n["clerp"] for n in nodes}), None,
                    SupernodeOptions(influence=1.0), windows=windows)
    rows = window_rows(windows, ["6_5_1", "6_7_1", "6_9_1"])
    sim = (rows @ rows.T).toarray()
    assert sim[0, 1] == pytest.approx(1.0, abs=1e-5) and sim[0, 2] < 0.5, sim
    assert [s.node_ids for s in g.supernodes] == [["6_5_1", "6_7_1"]] or \
        [sorted(s.node_ids) for s in g.supernodes] == [["6_5_1", "6_7_1"]], g.supernodes
    assert g.signals["top examples"] == 3


def test_every_proposed_name_is_unique() -> None:
    from tracer.supernodes import Supernode, _tell_apart

    groups = [Supernode('"the"', ids, 1.0) for ids in (["0_1_6", "0_2_6"], ["0_3_6", "0_4_6"], ["2_5_6", "2_6_6"],
                                                          ["0_7_1", "0_8_1"])]
    layers = {m: int(m.split("_")[0]) for g in groups for m in g.node_ids}
    _tell_apart(groups, {"metadata": {"prompt_tokens": ["<bos>", "The", "a", "b", "c", "d", " the"]}},
                {m: int(m.split("_")[2]) for m in layers}, layers)
    assert [g.label for g in groups] == ['"the" @ " the" L0 #1', '"the" @ " the" L0 #2', '"the" @ " the" L2',
                                         '"the" @ "The"']


def test_groups_span_nearby_positions_where_they_agree() -> None:
    nodes = [_node(layer, 1, 1 + layer % 2, '"Dallas" (context: texas)', 0.05 + 0.01 * layer) for layer in range(4)]
    nodes += [_node(layer, 2, 4, '"Dallas" (context: texas)', 0.05 + 0.01 * layer) for layer in range(2)]
    g = propose(_graph(nodes), label_vectors(None, {n["node_id"]: n["clerp"] for n in nodes}), None,
                SupernodeOptions(near=1, influence=1.0))
    spans = sorted(s.positions for s in g.supernodes)
    assert spans == [[1, 2], [4]], spans
    names = sorted(s.label for s in g.supernodes)  # the same name twice: told apart by the token they sit at
    assert names[1] == '"Dallas" @ "d"' and names[0] in ('"Dallas" @ "a"', '"Dallas" @ "b"'), names


def test_a_graph_of_another_model_is_grouped_from_its_own_signals(store_db: Path, tmp_path: Path) -> None:
    pg = plant_graph(noise=0.0, seed=1)
    src = tmp_path / "elsewhere.json"
    src.write_text(json.dumps(pg.graph))
    for db in (store_db, tmp_path / "no-store.duckdb"):
        out = tmp_path / "out.json"
        res = CliRunner().invoke(cli, ["trace", "label", str(src), "-o", str(out), "--db", str(db), "--json"])
        assert res.exit_code == 0, res.output
        report = json.loads(res.stdout)
        assert report["store_note"] in ("the store has no features of model 'planted-model'", "no store")
        assert report["grouping"]["signals"]["labels"] > 0 and len(report["supernodes"]) >= 10
        assert report["evidence"].startswith("not computed: the graph names no transcoders")
        assert json.loads(out.read_text())["qParams"]["supernodes"]
    text = CliRunner().invoke(cli, ["trace", "label", str(src), "-o", str(out), "--db", str(store_db)]).output
    assert "groups come from the graph's own clerps, edges and influence" in text


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


# --- graph JSON at the door (issue 17): one-line errors naming the field, and outputs written whole ---

@pytest.fixture(scope="module")
def module_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 40-feature export in a store, built once for the tests below."""
    from featuredb.formats.neuronpedia_import import import_neuronpedia
    from featuredb.synthetic_export import generate_export

    work = tmp_path_factory.mktemp("trace-label-input")
    export = generate_export(work / "export", model=MODEL, source=f"6-{SET}", n_features=40, n_activations=4,
                             ctx_len=8, n_top=3, progress=False)
    with FeatureStore(work / "store.duckdb") as store:
        import_neuronpedia(store, export, progress=False)
    return work / "store.duckdb"


def base_graph() -> dict[str, Any]:
    """An embedding, three layer-6 features and a logit at position 1, linked in a chain."""
    nodes = [node("E_1_1", 1, "E", 1, "embedding"), feat(1), feat(2), feat(3), node("31_5_1", 5, "31", 1, "logit")]
    links = [{"source": "E_1_1", "target": f"6_{i}_1", "weight": 1.0} for i in (1, 2, 3)]
    links += [{"source": f"6_{i}_1", "target": "31_5_1", "weight": 0.5} for i in (1, 2, 3)]
    return graph_of(nodes, links)


def changed(path: tuple[Any, ...], value: Any) -> str:
    """base_graph() as JSON with the value at `path` replaced (KeyError: deleted)."""
    g = base_graph()
    target: Any = g
    for k in path[:-1]:
        target = target[k]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return json.dumps(g)


def deep(levels: int) -> str:
    """base_graph() as JSON with a key holding `levels` nested lists."""
    return json.dumps(base_graph())[:-1] + ', "extra": ' + "[" * levels + "]" * levels + "}"


def huge_legacy_id() -> str:
    """Without schema_version 1 the node id is the feature's only name; 5,000 digits cannot be one."""
    g = base_graph()
    del g["metadata"]["schema_version"]
    g["nodes"][1]["node_id"] = "9" * 5000 + "_1_1"
    return json.dumps(g)


def duplicated() -> str:
    """base_graph() as JSON with its first feature node twice."""
    g = base_graph()
    g["nodes"].append(dict(g["nodes"][1]))
    return json.dumps(g)


REPORTED = [  # (the graph file's text, what the one-line error must say)
    (changed(("qParams",), json.dumps({"pinnedIds": []})), "qParams: expected an object"),
    (changed(("qParams",), None), "qParams: expected an object"),
    (changed(("qParams",), []), "qParams: expected an object"),
    (changed(("links", 0, "weight"), float("nan")), "links[0].weight: expected a finite number"),
    (changed(("links", 4, "weight"), float("-inf")), "links[4].weight: expected a finite number"),
    (changed(("nodes", 2, "influence"), float("nan")), "nodes[2].influence: expected a finite number"),
    (changed(("nodes", 1, "activation"), float("inf")), "nodes[1].activation: expected a finite number"),
    (duplicated(), 'nodes[5].node_id: "6_1_1" repeats nodes[1]'),
    (changed(("nodes", 1, "node_id"), KeyError), "nodes[1].node_id: missing"),
    (changed(("nodes", 1, "node_id"), 611), "nodes[1].node_id: expected a non-empty string"),
    (changed(("nodes", 1, "feature"), "abc"), "nodes[1].feature: expected an integer or null"),
    (changed(("nodes",), {"0": {}}), "nodes: expected a list"),
    (changed(("nodes",), "[]"), "nodes: expected a list"),
    (changed(("links",), {}), "links: expected a list"),
    (changed(("links",), None), "links: expected a list"),
    (changed(("qParams", "supernodes"), 5), "qParams.supernodes: expected a list or a JSON string of one"),
    (changed(("qParams", "supernodes"), ["a", "b"]), "qParams.supernodes[0]: expected [label, node_id, ...]"),
    (changed(("qParams", "supernodes"), [["label", 7]]), "qParams.supernodes[0]: expected [label, node_id, ...]"),
    (changed(("qParams", "supernodes"), '[["a", '), "qParams.supernodes: expected a list or a JSON string of one"),
    (deep(100_000), "graph.json: nested too deeply to be a graph"),
    (deep(200), "extra[0][0]: nested more than 64 levels deep"),
    (changed(("links", 0, "target"), "6_39_9"), 'links[0].target: no node has the id "6_39_9"'),
    (changed(("nodes", 0, "clerp"), "\ud800"), "nodes[0].clerp: not valid Unicode (a lone surrogate)"),
    (huge_legacy_id(), "nodes[1].node_id: a feature node needs node_id '{layer}_{feature}_{pos}'"),
]


@pytest.mark.parametrize("text,message", REPORTED, ids=[m.split(":")[0] + f"-{i}" for i, (_, m) in
                                                           enumerate(REPORTED)])
def test_each_reported_bad_graph_is_one_line_naming_file_and_field(module_store: Path, tmp_path: Path, text: str,
                                                                    message: str) -> None:
    src, out = tmp_path / "graph.json", tmp_path / "out.json"
    src.write_text(text)
    out.write_text("old")
    res = CliRunner().invoke(cli, ["trace", "label", str(src), "-o", str(out), "--db", str(module_store)])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exc_info
    assert res.exit_code == 1 and res.stderr.startswith(f"featuredb: error: {src}") and message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert out.read_text() == "old" and not list(tmp_path.glob(".out.json.tmp-*"))


def test_import_graph_refuses_a_bad_graph_with_the_field(module_store: Path, tmp_path: Path) -> None:
    src = tmp_path / "graph.json"
    src.write_text(changed(("links", 0, "weight"), float("nan")))
    db = tmp_path / "copy.duckdb"
    db.write_bytes(module_store.read_bytes())
    res = CliRunner().invoke(cli, ["import", "graph", str(src), "--db", str(db)])
    assert res.exit_code == 1 and f"{src}: links[0].weight: expected a finite number" in res.stderr


def test_a_graph_saved_by_circuit_tracers_frontend_is_labelled(module_store: Path, tmp_path: Path) -> None:
    g = base_graph()
    # its save posts URL parameters: pinnedIds comma-joined, supernodes and clerps JSON, absent ones null
    g["qParams"] = {"pinnedIds": "6_1_1,6_2_1", "supernodes": json.dumps([["mine", "6_1_1", "6_2_1"]]),
                    "clerps": None, "linkType": "both", "clickedId": None, "sg_pos": None, "pruningThreshold": "0.8"}
    g["metadata"]["node_threshold"] = None  # circuit-tracer's Metadata default
    g["nodes"].append(node("0_1_1", -1, "1", 1, "mlp reconstruction error"))  # an old error id ...
    g["nodes"].append(node("0_1_1", cantor_pair(0, 1), "0", 1, "cross layer transcoder"))  # ... = a feature's
    src, out = tmp_path / "graph.json", tmp_path / "out.json"
    src.write_text(json.dumps(g))
    res = CliRunner().invoke(cli, ["trace", "label", str(src), "-o", str(out), "--db", str(module_store)])
    assert res.exit_code == 0, res.output
    qp = json.loads(out.read_text())["qParams"]
    assert qp["supernodes"][0] == ["mine", "6_1_1", "6_2_1"] and qp["pinnedIds"][:2] == ["6_1_1", "6_2_1"]
    assert "sg_pos" not in qp and "clickedId" not in qp  # nulls go, as the frontend drops them
    jsonschema.validate(qp, SCHEMA["properties"]["qParams"])


def _label(store: Path, tmp_path: Path, out: Path) -> Any:
    """`trace label` of base_graph() into `out`."""
    src = tmp_path / "graph.json"
    src.write_text(json.dumps(base_graph()))
    return CliRunner().invoke(cli, ["trace", "label", str(src), "-o", str(out), "--db", str(store)])


def test_output_mode_follows_the_umask_or_the_replaced_file(module_store: Path, tmp_path: Path) -> None:
    import os
    import stat

    old = os.umask(0o022)
    try:
        assert _label(module_store, tmp_path, tmp_path / "new.json").exit_code == 0
        assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o644
        os.umask(0o002)
        assert _label(module_store, tmp_path, tmp_path / "group.json").exit_code == 0
        assert stat.S_IMODE((tmp_path / "group.json").stat().st_mode) == 0o664
        (tmp_path / "kept.json").write_text("old")
        (tmp_path / "kept.json").chmod(0o640)
        assert _label(module_store, tmp_path, tmp_path / "kept.json").exit_code == 0
        assert stat.S_IMODE((tmp_path / "kept.json").stat().st_mode) == 0o640
        assert json.loads((tmp_path / "kept.json").read_text())["nodes"]
    finally:
        os.umask(old)


def _failing_in(folder: Path, real: Any, error: BaseException) -> Any:
    """`real` (os.write or os.fsync) that raises `error` for files in `folder` (after writing half, for write)."""
    import os

    def fake(fd: int, *args: Any) -> Any:
        if not os.readlink(f"/proc/self/fd/{fd}").startswith(str(folder)):
            return real(fd, *args)
        if args and len(args[0]) > 1:
            return real(fd, bytes(args[0])[: len(args[0]) // 2])
        raise error
    return fake


@pytest.mark.parametrize("call", ["write", "fsync"])
def test_a_full_disk_is_one_line_naming_the_output_and_leaves_it_untouched(module_store: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          call: str) -> None:
    import errno
    import os

    out = tmp_path / "out" / "labelled.json"
    out.parent.mkdir()
    out.write_text("old")
    monkeypatch.setattr(os, call, _failing_in(out.parent, getattr(os, call),
                                              OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))
    res = _label(module_store, tmp_path, out)
    assert res.exit_code == 1 and res.stderr.strip() == (f"featuredb: error: {out}: cannot write the output file "
                                                         "(No space left on device)")
    assert out.read_text() == "old" and [p.name for p in out.parent.iterdir()] == ["labelled.json"]


def test_a_read_only_output_folder_is_one_line_and_leaves_the_output_untouched(module_store: Path, tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os

    out = tmp_path / "ro" / "labelled.json"
    out.parent.mkdir()
    out.write_text("old")
    real_open = os.open

    def read_only(path: Any, flags: int, *args: Any, **kw: Any) -> int:
        if str(path).startswith(str(out.parent)) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kw)
    monkeypatch.setattr(os, "open", read_only)
    res = _label(module_store, tmp_path, out)
    assert res.exit_code == 1 and res.stderr.strip() == (f"featuredb: error: {out}: cannot write the output file "
                                                         "(Read-only file system)")
    assert out.read_text() == "old" and [p.name for p in out.parent.iterdir()] == ["labelled.json"]


def test_a_chmod_read_only_output_folder_is_one_line(module_store: Path, tmp_path: Path) -> None:
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes into a chmod 555 folder; the monkeypatched test above covers this")
    out = tmp_path / "ro" / "labelled.json"
    out.parent.mkdir()
    out.write_text("old")
    out.parent.chmod(0o555)
    try:
        res = _label(module_store, tmp_path, out)
    finally:
        out.parent.chmod(0o755)
    assert res.exit_code == 1 and "cannot write the output file (Permission denied)" in res.stderr
    assert out.read_text() == "old"


def test_ctrl_c_while_writing_leaves_no_temp_and_the_old_output(module_store: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    out = tmp_path / "out" / "labelled.json"
    out.parent.mkdir()
    out.write_text("old")
    monkeypatch.setattr(os, "fsync", _failing_in(out.parent, os.fsync, KeyboardInterrupt()))
    res = _label(module_store, tmp_path, out)
    assert res.exit_code == 130
    assert out.read_text() == "old" and [p.name for p in out.parent.iterdir()] == ["labelled.json"]


KILL_BEFORE_RENAME = """
import os, signal, sys
real = os.replace
os.replace = lambda src, dst: os.kill(os.getpid(), signal.SIGKILL) if ".tmp-" in str(src) else real(src, dst)
sys.argv = ["featuredb", *sys.argv[1:]]
from featuredb.cli.root import main
main()
"""


def test_a_temp_left_by_sigkill_is_removed_by_the_next_run(module_store: Path, tmp_path: Path) -> None:
    import sys

    out = tmp_path / "labelled.json"
    out.write_text("old")
    src = tmp_path / "graph.json"
    src.write_text(json.dumps(base_graph()))
    args = ["trace", "label", str(src), "-o", str(out), "--db", str(module_store)]
    killed = subprocess.run([sys.executable, "-c", KILL_BEFORE_RENAME, *args], capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -9, killed.stderr
    orphans = list(tmp_path.glob(".labelled.json.tmp-*"))
    assert len(orphans) == 1 and out.read_text() == "old"
    with subprocess.Popen(["sleep", "60"]) as live:  # a temp of a process still running is not touched
        busy = tmp_path / f".labelled.json.tmp-{live.pid}-0000"
        busy.write_text("being written")
        res = CliRunner().invoke(cli, args)
        live.kill()
    assert res.exit_code == 0, res.output
    assert sorted(tmp_path.glob(".labelled.json.tmp-*")) == [busy]
    assert json.loads(out.read_text())["qParams"]["clerps"]


def test_nan_is_never_written(tmp_path: Path) -> None:
    from featuredb.atomic_write import write_json_atomically
    from featuredb.errors import FeatureDBError

    out = tmp_path / "out.json"
    out.write_text("old")
    with pytest.raises(FeatureDBError, match="NaN or Infinity"):
        write_json_atomically(out, {"weight": float("nan")})
    assert out.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_intervene_finds_a_supernode_by_label_and_names_the_choices_when_it_cannot() -> None:
    from featuredb.errors import BadInputError
    from tracer.supernode_intervention import find_supernode

    graph = {"qParams": {"supernodes": [['"of"', "1_2_3"], ['"of" → says "x"', "4_5_6"], ["Texas", "7_8_9"]]}}
    assert find_supernode(graph, '"of"') == ('"of"', ["1_2_3"])  # exact beats the longer name it prefixes
    assert find_supernode(graph, "texas") == ("Texas", ["7_8_9"])
    with pytest.raises(BadInputError, match=r"--supernode 'nope': the graph has no such supernode; it has: .*Texas"):
        find_supernode(graph, "nope")
    with pytest.raises(BadInputError, match="2 supernodes match"):
        find_supernode(graph, '"o')


class ZeroingModel:
    """A stand-in for circuit-tracer's ReplacementModel: the target token's logit falls by a fixed amount per
    zeroed feature (features 0-2 by 2.0 each, every other active feature by 0.05). It counts the calls."""

    class Tokenizer:
        def decode(self, ids: list[int]) -> str:
            return f"t{ids[0]}"

    def __init__(self) -> None:
        import torch

        self.tokenizer = self.Tokenizer()
        self.calls = 0
        self.base = torch.zeros(1, 3, 10)
        self.base[0, -1, 7] = 3.0  # the target, token 7
        self.acts = torch.ones(4, 3, 40)  # 4 layers, 3 positions, 40 active features each

    def get_activations(self, prompt: str) -> tuple[Any, Any]:
        return self.base.clone(), self.acts

    def feature_intervention(self, prompt: str, interventions: list[Any], return_activations: bool = False
                             ) -> tuple[Any, None]:
        self.calls += 1
        out = self.base.clone()
        out[0, -1, 7] -= sum(2.0 if f < 3 else 0.05 for _, _, f, _ in interventions)
        return out, None


def test_evidence_runs_every_random_set_unless_the_first_half_already_rules_a_proposal_out() -> None:
    from tracer.supernode_evidence import supernode_evidence
    from tracer.supernodes import Supernode

    graph = {"metadata": {"prompt": "x"}, "nodes": [{"node_id": "9_7_2", "feature": 7, "feature_type": "logit",
                                                     "clerp": 'Output "t7"', "is_target_logit": True}]}
    strong = Supernode("strong", ["1_0_2", "2_1_2", "3_2_2"], 1.0)  # the features that matter
    weak = Supernode("weak", ["1_30_2"], 1.0)  # one feature like any random one: never beyond
    model = ZeroingModel()
    report = supernode_evidence(model, graph, [strong, weak], n_random=8)
    got = {e.label: e for e in report.supernodes}
    assert got["strong"].beyond_random and got["strong"].random_n == 8
    assert not got["weak"].beyond_random and got["weak"].random_n == 4
    assert model.calls == 2 + 8 + 4
    assert report.target == "t7" and report.top5_before[0][0] == "t7"


def test_random_sets_are_as_large_as_the_proposal_even_where_few_features_are_active() -> None:
    """Four members at (layer 1, position 2), where only five features are active: each random set still zeroes
    four distinct non-members, the one left there and three from the nearest layers at that position."""
    import numpy as np

    from tracer.supernode_evidence import _random_sets

    active = np.zeros((4, 3, 40))
    active[1, 2, :5] = 1.0
    active[0, 2, 10:20] = 1.0
    active[2, 2, 20:30] = 1.0
    members = [(1, f, 2) for f in range(4)]
    sets = _random_sets(members, active, 8, np.random.default_rng(0))
    assert len(sets) == 8
    for chosen in sets:
        assert len(chosen) == len(set(chosen)) == 4 and not set(chosen) & set(members)
        assert (1, 4, 2) in chosen and all(pos == 2 and layer in (0, 2) for layer, _, pos in chosen
                                           if (layer, pos) != (1, 2))
    assert len({tuple(sorted(c)) for c in sets}) > 1, "the sets differ"


def test_trace_label_option_defaults_are_the_supernode_defaults() -> None:
    """The CLI writes the defaults out (it imports the grouping lazily); they must not drift from SupernodeOptions."""
    from tracer.cli import label_command

    defaults = {p.name: p.default for p in label_command.params}
    opt = SupernodeOptions()
    assert (defaults["threshold"], defaults["max_size"], defaults["max_per_position"], defaults["influence"],
            defaults["min_size"], defaults["max_supernodes"]) == \
        (opt.threshold, opt.max_size, opt.max_per_position, opt.influence, opt.min_size, opt.max_supernodes)


def test_trace_serve_finds_the_checkouts_offline_frontend_from_any_directory(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Started outside the checkout, trace serve still serves the offline page `make demo` built there (the CDN
    copy stays blank offline)."""
    import tracer.graph_server as graph_server
    from tracer.offline_frontend import COMPAT

    built = tmp_path / "checkout" / "data" / "circuit-tracer-frontend"
    (built / "site" / "vendor").mkdir(parents=True)
    (built / "site" / "index.html").write_text("<html></html>")
    (built / "site" / "vendor" / COMPAT.name).write_text("")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr(graph_server, "CHECKOUT_DIR", built)
    site, which = graph_server.default_frontend()
    assert site == built / "site" and "offline copy" in which
