"""`featuredb trace attribute` with circuit-tracer on the real default model and transcoders trained in the test:
the graph is valid for circuit-tracer's own models and Neuronpedia's schema, and `trace label` and `trace serve`
find every feature node with no flags, also when circuit-tracer itself named the scan."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from click.testing import CliRunner

from conftest import SHARED
from featuredb.cli.root import cli
from loopback import serve_in_thread
from test_circuit_tracer_frontend import ct_frontend  # noqa: F401 (the session fixture)
from tracer.graph_server import create_graph_app

pytestmark = [pytest.mark.slow, pytest.mark.circuit_tracer]
PROMPT = "Fact: Dallas is in the state of"


@pytest.fixture(scope="module")
def attributed(default_transcoders: Path, default_store: Path, tmp_path_factory: pytest.TempPathFactory
               ) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("graphs") / "dallas.json"
    res = subprocess.run([sys.executable, "-m", "featuredb.cli", "trace", "attribute", PROMPT, "--transcoders",
                          str(default_transcoders), "-o", str(out), "--max-feature-nodes", "120", "--node-threshold", "0.99", "--label",
                          "--db", str(default_store), "--json"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return out, json.loads(res.stdout)


def _feature_nodes(graph: dict[str, Any]) -> list[dict[str, Any]]:
    return [n for n in graph["nodes"] if n["feature_type"] == "cross layer transcoder"]


def test_graph_is_valid_for_circuit_tracer_and_neuronpedia(attributed: tuple[Path, dict[str, Any]]) -> None:
    from circuit_tracer.frontend.graph_models import Model

    out, summary = attributed
    graph = json.loads(out.read_text())
    jsonschema.validate(graph, json.loads((SHARED / "formats/neuronpedia/graph-schema.json").read_text()))
    model = Model.model_validate(graph)
    assert model.metadata.scan == "smollm2-135m-instruct/featuredb-skip-256"
    assert graph["metadata"]["feature_details"]["neuronpedia_source_set"] == "featuredb-skip-256"
    assert 0 < summary["replacement_score"] <= 1 and 0 < summary["completeness_score"] <= 1
    assert graph["metadata"]["completeness_score"] == pytest.approx(summary["completeness_score"], abs=1e-4)
    assert summary["top_predictions"][0][0] == " Texas", "the default model answers ' Texas'"
    assert graph["metadata"]["prompt_tokens"][0] == "<|im_start|>", "circuit-tracer puts a special token first"
    assert graph["metadata"]["slug"] == out.stem == "dallas", "the slug trace serve lists the file by"
    assert summary["feature_nodes"] == len(_feature_nodes(graph)) > 0
    assert all(n["ctx_idx"] > 0 for n in _feature_nodes(graph)), "position 0 is zeroed by circuit-tracer"


def test_label_maps_every_feature_node_with_no_flags(attributed: tuple[Path, dict[str, Any]]) -> None:
    out, summary = attributed
    labels = summary["labels"]
    assert labels["unmapped"] == [] and labels["mapped"] == labels["feature_nodes"] == summary["feature_nodes"]
    graph = json.loads(out.read_text())
    # every feature node that has examples in the store carries its label (the rest never fired while indexing)
    without = {n["node_id"] for n in _feature_nodes(graph) if not n["clerp"]}
    assert without == set(labels["unlabelled"]) and len(without) < len(_feature_nodes(graph)) / 2
    assert json.loads(graph["qParams"]["clerps"]), "labels go to qParams.clerps as circuit-tracer's page reads them"


def test_every_kept_supernode_has_evidence_beyond_random(attributed: tuple[Path, dict[str, Any]]) -> None:
    out, summary = attributed
    evidence = json.loads(out.with_name("dallas.evidence.json").read_text())
    assert summary["labels"]["evidence"] == evidence
    graph = json.loads(out.read_text())
    ours = graph["qParams"]["supernodes"]
    tested = {tuple(e["node_ids"]): e for e in evidence["supernodes"]}
    assert evidence["target"] == " Texas" and evidence["n_random"] == 8
    assert len(tested) == len(ours) + len(summary["labels"]["dropped_without_evidence"]) > 0
    for s in ours:
        e = tested[tuple(s[1:])]
        assert e["beyond_random"] and abs(e["delta_p"]) > e["random_mean"] + 2 * e["random_sd"], e
        assert 2 <= len(s) - 1 <= 8 and e["random_n"] >= 2
    assert any(e["margin_sds"] >= 3 for e in evidence["supernodes"]), evidence["supernodes"]
    pos = {n["node_id"]: n["ctx_idx"] for n in graph["nodes"]}
    assert all(pos[m] > 0 for s in ours for m in s[1:]), "nothing at the sink position"
    with serve_in_thread(create_graph_app(out.parent, None)) as url:  # trace serve shows it beside the graph
        assert httpx.get(f"{url}/evidence/dallas.json").json() == evidence
        page = httpx.get(f"{url}/evidence/dallas").text  # and draws it
    assert all(e["label"] in html.unescape(page) for e in evidence["supernodes"])
    kept = sum(e["beyond_random"] for e in evidence["supernodes"])
    assert page.count("<td class=yes>beyond random</td>") == kept
    assert page.count("<td class=no>not beyond</td>") == len(evidence["supernodes"]) - kept


def test_intervene_moves_the_answer_as_the_evidence_measured(attributed: tuple[Path, dict[str, Any]]) -> None:
    out, _ = attributed
    graph = json.loads(out.read_text())
    evidence = {tuple(e["node_ids"]): e for e in json.loads(out.with_name("dallas.evidence.json").read_text())[
        "supernodes"]}
    label, *members = max(graph["qParams"]["supernodes"], key=lambda s: abs(evidence[tuple(s[1:])]["delta_p"]))
    shifts = {}
    for scale in ("0", "-2", "2"):
        res = subprocess.run([sys.executable, "-m", "featuredb.cli", "trace", "intervene", str(out), "--supernode",
                              label, "--scale", scale, "--json"], capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        got = json.loads(res.stdout)
        assert got["node_ids"] == members and got["before"][0][0] == " Texas"
        shifts[scale] = got["p_target_after"] - got["p_target_before"]
    assert shifts["0"] == pytest.approx(evidence[tuple(members)]["delta_p"], abs=2e-3)
    assert shifts["-2"] * shifts["2"] < 0, shifts  # inhibiting and amplifying push the answer opposite ways


def test_serve_finds_every_feature_file(attributed: tuple[Path, dict[str, Any]], default_store: Path) -> None:
    from circuit_tracer.frontend.feature_models import Model as FeatureModel

    out, _ = attributed
    graph = json.loads(out.read_text())
    scan = graph["metadata"]["scan"]
    with serve_in_thread(create_graph_app(out.parent, str(default_store))) as url:
        with httpx.Client() as client:
            for n in _feature_nodes(graph):
                got = client.get(f"{url}/features/{scan}/{n['feature']}.json")
                assert got.status_code == 200, (n["node_id"], got.text)
                assert FeatureModel.model_validate(got.json()).examples_quantiles
    assert len(graph["nodes"]) > 0


@pytest.mark.parametrize("scan", ["featuredb-skip-256", "someone/smollm2-transcoders@main", "HuggingFaceTB/SmolLM2"])
def test_a_graph_with_circuit_tracers_own_scan_naming_maps_without_flags(
        attributed: tuple[Path, dict[str, Any]], default_store: Path, tmp_path: Path, scan: str) -> None:
    """circuit-tracer names a graph by its transcoders' scan (often a hub path) and sets no source set."""
    out, _ = attributed
    graph = json.loads(out.read_text())
    graph["metadata"]["scan"] = scan
    graph["metadata"].pop("feature_details")
    src, dst = tmp_path / "raw.json", tmp_path / "labelled.json"
    src.write_text(json.dumps(graph))
    res = CliRunner().invoke(cli, ["trace", "label", str(src), "-o", str(dst), "--db", str(default_store), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["model"] == "smollm2-135m-instruct" and report["source_set"] == "featuredb-skip-256"
    assert report["unmapped"] == [] and report["mapped"] == len(_feature_nodes(graph))


def test_circuit_tracers_frontend_shows_a_real_graphs_feature_panel(
        attributed: tuple[Path, dict[str, Any]], default_store: Path, ct_frontend: Path) -> None:  # noqa: F811
    """In Chromium, circuit-tracer's own page opens the attributed graph; clicking a labelled feature node shows
    its label and the top activations that `trace serve` reads from the store."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Chromium is missing: `make test` installs it (Debian package chromium)"
    out, _ = attributed
    graph = json.loads(out.read_text())
    plain = re.compile(r'^"\w+"(/"\w+")*( → says "\w+"(, "\w+")*)?$')  # no label the page may re-space
    # circuit-tracer's influence is cumulative: the smallest is the most important node, shown at any pruning
    labelled = [n for n in _feature_nodes(graph) if n["clerp"]]
    node = min([n for n in labelled if plain.match(n["clerp"])] or labelled, key=lambda n: n["influence"])
    scan = graph["metadata"]["scan"]
    with serve_in_thread(create_graph_app(out.parent, str(default_store), frontend=ct_frontend)) as url:
        feature = httpx.get(f"{url}/features/{scan}/{node['feature']}.json").json()
        page = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                               "--enable-logging=stderr", "--virtual-time-budget=20000",
                               f"{url}/index.html?slug={out.stem}&clickedId={node['node_id']}"],
                              capture_output=True, text=True, timeout=180)
    errors = [line for line in page.stderr.splitlines() if "CONSOLE" in line and "Uncaught" in line]
    assert not errors, errors
    dom = html.unescape(page.stdout)
    text = " ".join(re.sub(r"<[^>]+>", " ", re.sub(r"<script.*?</script>", "", dom, flags=re.S)).split())
    assert "".join(node["clerp"].split()) in "".join(dom.split()), ("the clicked node's label", node["clerp"])
    panel = text[text.index("Token Predictions"):]
    top = "".join(feature["examples_quantiles"][0]["examples"][0]["tokens"])
    squeezed = "".join(panel.split())  # the page joins tokens as they are; compare without whitespace
    # the longest stretch of the top example without markup the page renders as tags (<|im_end|>) or escapes;
    # text inside <...> (an HTML README's <img src=...>) is dropped, as `text` above drops it from the page
    stretch = max(re.split(r"[<>&\ufffd]", "".join(re.sub(r"<[^>]+>", " ", top).split())), key=len)[:60]
    assert len(stretch) >= 5 and "Topactivations" in squeezed and stretch in squeezed, panel[:2000]
