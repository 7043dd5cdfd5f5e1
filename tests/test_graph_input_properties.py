"""Generated graph JSON at the graph reader and `trace label`: a graph or one BadInputError, never a traceback.

Valid graphs are drawn in circuit-tracer 0.5.0's shape (its node kinds and ids, error ids that repeat a
layer-0 feature's, qParams as lists or as its frontend saves them); mutations put wrong types at any field,
NaN/Infinity, duplicate ids, missing fields, non-list nodes/links, dangling links, deep nesting and odd
Unicode into them.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import MODEL, SHARED, SOURCE
from featuredb import FeatureStore
from featuredb.cli.root import cli
from featuredb.errors import BadInputError
from featuredb.formats.graph_json import MAX_DEPTH, is_feature_node, parse_graph
from featuredb.formats.neuronpedia_import import import_neuronpedia
from featuredb.identity import cantor_pair
from featuredb.synthetic_export import generate_export

SCHEMA = json.loads((SHARED / "formats" / "neuronpedia" / "graph-schema.json").read_text())
SET = SOURCE.split("-", 1)[1]
N_LAYERS = 8
WHERE = "graph.json"
ONE_LINE = re.compile(rf"^{re.escape(WHERE)}(:\d+)?: [^\n]+$")
FAST = settings(max_examples=50, deadline=None, database=None, suppress_health_check=list(HealthCheck))
DEEP = "__deep__"

finite = st.floats(allow_nan=False, allow_infinity=False, width=32)
names = st.text(max_size=12)
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                          max_size=3),
                           max_leaves=6)
odd_text = st.text(st.characters(codec=None, categories=["Cs", "Cc", "Cf", "Mn", "So", "Zl"]), min_size=1,
                   max_size=6)


def ct_node(node_id: str, feature: int, layer: str, pos: int, kind: str, *, influence: float | None = None,
            activation: float | None = None, clerp: str = "", js: str | None = None) -> dict[str, Any]:
    """A node with every field circuit-tracer's Node model writes, in its order."""
    return {"node_id": node_id, "feature": feature, "layer": layer, "ctx_idx": pos, "feature_type": kind,
            "token_prob": 0.0, "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0,
            "jsNodeId": js or node_id, "clerp": clerp, "influence": influence, "activation": activation}


@st.composite
def graphs(draw: Any) -> dict[str, Any]:
    """A graph as circuit-tracer writes it, over the test store's model and source set."""
    n_pos = draw(st.integers(1, 4))
    nodes = [ct_node(f"E_{draw(st.integers(0, 50_000))}_{p}", p, "E", p, "embedding", js=f"E_x-{p}")
             for p in range(n_pos)]
    for layer, index, pos in sorted(draw(st.sets(st.tuples(st.integers(0, N_LAYERS - 1), st.integers(0, 45),
                                                          st.integers(0, n_pos - 1)), max_size=10))):
        nodes.append(ct_node(f"{layer}_{index}_{pos}", cantor_pair(layer, index), str(layer), pos,
                             "cross layer transcoder", influence=draw(finite), activation=draw(finite),
                             clerp=draw(st.sampled_from(["", "existing label"]) | names), js=f"{layer}_{index}-0"))
    for layer, pos in sorted(draw(st.sets(st.tuples(st.integers(0, N_LAYERS - 1), st.integers(0, n_pos - 1)),
                                          max_size=4))):  # old error ids: may equal a layer-0 feature's
        nodes.append(ct_node(f"0_{layer}_{pos}", -1, str(layer), pos, "mlp reconstruction error",
                             influence=draw(finite)))
    for tok in sorted(draw(st.sets(st.integers(0, 50_000), min_size=1, max_size=2))):
        nodes.append(ct_node(f"{N_LAYERS + 1}_{tok}_{n_pos - 1}", tok, str(N_LAYERS + 1), n_pos - 1, "logit",
                             clerp=f'Output "{tok}" (p=0.500)'))
    ids = [n["node_id"] for n in nodes]
    links = [{"source": ids[s], "target": ids[t], "weight": w} for s, t, w in
             draw(st.lists(st.tuples(st.integers(0, len(ids) - 1), st.integers(0, len(ids) - 1), finite),
                           max_size=30))]
    pinned = draw(st.lists(st.sampled_from(ids), max_size=4, unique=True))
    supernodes = draw(st.lists(st.lists(st.sampled_from(ids), min_size=1, max_size=3).map(lambda m: ["sn", *m]),
                               max_size=2))
    form = draw(st.sampled_from(["lists", "json strings", "frontend save", "nulls"]))
    qp: dict[str, Any] = {"pinnedIds": pinned, "supernodes": supernodes, "linkType": "both", "clickedId": "",
                          "sg_pos": ""}
    if form == "json strings":
        qp.update(pinnedIds=json.dumps(pinned), supernodes=json.dumps(supernodes), clerps="[]")
    elif form == "frontend save":  # URL parameters: pinnedIds comma-joined, the rest JSON, missing ones null
        qp = {"pinnedIds": ",".join(pinned), "supernodes": json.dumps(supernodes), "linkType": "both",
              "clickedId": None, "sg_pos": None, "pruningThreshold": "0.8", "clerps": None}
    elif form == "nulls":
        qp.update(pinnedIds=None, supernodes=None)
    meta = {"slug": draw(names.filter(bool)), "scan": MODEL, "transcoder_list": [],
            "prompt_tokens": draw(st.lists(names, min_size=n_pos, max_size=n_pos)), "prompt": draw(names),
            "node_threshold": draw(finite), "schema_version": 1,
            "feature_details": {"neuronpedia_source_set": SET}}
    return {"metadata": meta, "qParams": qp, "nodes": nodes, "links": links}


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a JSON value."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    out = []
    for k, v in items:
        out.append((*prefix, k))
        out += paths(v, (*prefix, k))
    return out


def put(graph: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    """Set the value at `path`."""
    target: Any = graph
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = value


@st.composite
def mutated(draw: Any) -> tuple[str, str]:
    """(what was done, graph JSON text) for one mutation of a valid graph; the text may be refused or accepted."""
    g = draw(graphs())
    where = draw(st.sampled_from(paths(g)))
    op = draw(st.sampled_from(["wrong value", "delete", "non-finite", "duplicate node", "dangling link", "deep",
                               "odd unicode", "huge number", "top-level type", "truncate"]))
    if op == "wrong value":
        put(g, where, draw(json_values))
    elif op == "huge number":
        put(g, where, draw(st.sampled_from([2**63, -(2**63) - 1, 10**400, 1e308, "9" * 5000 + "_1_1"])))
    elif op == "delete":
        parent = g
        for k in where[:-1]:
            parent = parent[k]
        del parent[where[-1]]
    elif op == "non-finite":
        put(g, where, draw(st.sampled_from([float("nan"), float("inf"), float("-inf")])))
    elif op == "duplicate node":
        g["nodes"].append(copy.deepcopy(draw(st.sampled_from(g["nodes"]))))
    elif op == "dangling link":
        g["links"].append({"source": g["nodes"][0]["node_id"], "target": "not_a_node", "weight": 1.0})
    elif op == "deep":
        put(g, where, DEEP)
    elif op == "odd unicode":
        put(g, where, draw(odd_text))
    elif op == "top-level type":
        g[draw(st.sampled_from(["metadata", "qParams", "nodes", "links"]))] = draw(json_values)
    text = json.dumps(g)  # NaN and Infinity become the bare tokens; lone surrogates \udXXX escapes
    if op == "deep":
        levels = draw(st.sampled_from([MAX_DEPTH + 1, 500, 5_000, 100_000]))
        text = text.replace(json.dumps(DEEP), "[" * levels + "]" * levels, 1)
    elif op == "truncate":
        text = text[:draw(st.integers(0, len(text) - 1))]
    return op, text


def read(text: str) -> dict[str, Any] | BadInputError:
    """The reader's answer; a BadInputError must name the file (and line or field) on one line."""
    try:
        return parse_graph(text.encode("utf-8", "surrogatepass"), WHERE)
    except BadInputError as e:
        assert ONE_LINE.match(str(e)), str(e)
        return e


@FAST
@given(graph=graphs())
def test_every_circuit_tracer_shaped_graph_is_accepted_as_is(graph: dict[str, Any]) -> None:
    got = read(json.dumps(graph))
    assert isinstance(got, dict), got
    assert got["nodes"] == graph["nodes"] and got["links"] == graph["links"] and got["metadata"] == graph["metadata"]
    assert isinstance(got["qParams"]["pinnedIds"] or [], list) and isinstance(got["qParams"]["supernodes"] or [], list)


@FAST
@given(case=mutated())
def test_a_mutated_graph_is_a_graph_or_one_line_error_with_the_field(case: tuple[str, str]) -> None:
    op, text = case
    got = read(text)
    if op in ("non-finite", "duplicate node", "dangling link", "deep", "truncate"):
        assert isinstance(got, BadInputError), f"{op} was accepted"
    if isinstance(got, BadInputError):
        return
    json.dumps(got, allow_nan=False)  # what is accepted can be written as JSON
    feature_ids = [n["node_id"] for n in got["nodes"] if is_feature_node(n)]
    assert len(feature_ids) == len(set(feature_ids))
    ids = {n["node_id"] for n in got["nodes"]}
    assert all(link["source"] in ids and link["target"] in ids for link in got["links"])


@pytest.mark.circuit_tracer
@FAST
@given(graph=graphs())
def test_what_circuit_tracers_own_models_write_is_accepted(graph: dict[str, Any]) -> None:
    models = pytest.importorskip("circuit_tracer.frontend.graph_models")
    graph["qParams"] = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}
    text = models.Model.model_validate(graph).model_dump_json(indent=2)
    assert isinstance(read(text), dict)


@pytest.fixture(scope="module")
def label_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 40-feature store of the graphs' model and source set (layer 6)."""
    work = tmp_path_factory.mktemp("graph-props")
    export = generate_export(work / "export", model=MODEL, source=SOURCE, n_features=40, n_activations=4,
                             ctx_len=8, n_top=3, progress=False)
    with FeatureStore(work / "store.duckdb") as store:
        import_neuronpedia(store, export, progress=False)
    return work / "store.duckdb"


@FAST
@given(case=st.one_of(graphs().map(lambda g: ("valid", json.dumps(g))), mutated()))
def test_trace_label_never_tracebacks_and_writes_strict_json_or_nothing(label_store: Path, tmp_path_factory: Any,
                                                                        case: tuple[str, str]) -> None:
    op, text = case
    folder = tmp_path_factory.mktemp("label")
    src, out = folder / "graph.json", folder / "out.json"
    src.write_bytes(text.encode("utf-8", "surrogatepass"))
    out.write_text("old output")
    res = CliRunner().invoke(cli, ["trace", "label", str(src), "-o", str(out), "--db", str(label_store)])
    event(f"{op}: exit {res.exit_code}")
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exc_info
    assert not list(folder.glob(".out.json.tmp-*"))
    if op == "valid":
        assert res.exit_code == 0, res.output
    if res.exit_code == 0:
        def refuse(token: str) -> None:
            raise AssertionError(f"{token} written")
        labelled = json.loads(out.read_text(), parse_constant=refuse)
        if op == "valid":
            jsonschema.validate(labelled, SCHEMA)
    else:
        assert res.exit_code == 1 and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert res.stderr.startswith(f"featuredb: error: {src}")
        assert out.read_text() == "old output"
