"""A labelled graph in circuit-tracer's own frontend (the offline copy `trace frontend` builds) and models."""

from __future__ import annotations

import html
import importlib.util
import json
import re
import shutil
from html.parser import HTMLParser
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from conftest import MODEL, SOURCE
from featuredb.cli.root import cli
from featuredb.errors import BadInputError
from featuredb.identity import cantor_pair
from loopback import serve_in_thread
from test_tracer import feat, graph_of, node
from tracer.graph_server import create_graph_app
from tracer.offline_frontend import apply_patches, offline_frontend, prepare_offline_frontend

BUILT = Path(__file__).resolve().parents[1] / ".venv" / "circuit-tracer-frontend"


@pytest.fixture(scope="session")
def ct_frontend() -> Path:
    """circuit-tracer 0.5.0's frontend with its libraries from npm; built once (pip and npm registries)."""
    return offline_frontend(BUILT) or prepare_offline_frontend(BUILT)


def ct_module(ct_frontend: Path, name: str) -> ModuleType:
    """One of circuit-tracer's pydantic model modules, loaded from its wheel's files (they import only pydantic)."""
    path = ct_frontend.parent / "circuit_tracer" / "frontend" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"ct_{name}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dallas_graph() -> dict[str, Any]:
    """Store-labelled features 1-3, two planted groups at position 2, an embedding and a logit."""
    nodes = [feat(1, pos=1), feat(2, pos=1), feat(3, pos=2), node("E_5_0", 0, "E", 0, "embedding"),
             node("8_7_2", 7, "8", 2, "logit", 'Output " Austin" (p=0.500)')]
    links = [{"source": "E_5_0", "target": "6_1_1", "weight": 1.0},
             {"source": "6_1_1", "target": "8_7_2", "weight": 0.5}]
    for ids, label, sign in (((10, 11, 12), "Texas state", 1.0), ((20, 21, 22), "football game", -1.0)):
        for i in ids:
            nodes.append(feat(i, pos=2, clerp=label))
            links += [{"source": "E_5_0", "target": f"6_{i}_2", "weight": sign},
                      {"source": f"6_{i}_2", "target": "8_7_2", "weight": 0.7 * sign}]
    graph = graph_of(nodes, links, qparams_as_strings=True)
    graph["metadata"]["transcoder_list"] = []
    return graph


def label_into(folder: Path, store: Path, tmp_path: Path) -> Path:
    src = tmp_path / "in.json"
    src.write_text(json.dumps(dallas_graph()))
    out = folder / "dallas.json"
    res = CliRunner().invoke(cli, ["trace", "label", str(src), "-o", str(out), "--db", str(store)])
    assert res.exit_code == 0, res.output
    return out


def test_labelled_graph_and_feature_files_load_in_circuit_tracers_models(store_db: Path, tmp_path: Path,
                                                                         ct_frontend: Path) -> None:
    graphs = tmp_path / "graphs"
    graphs.mkdir()
    out = label_into(graphs, store_db, tmp_path)
    graph = ct_module(ct_frontend, "graph_models").Model.model_validate_json(out.read_text())
    assert {n.node_id: n.clerp for n in graph.nodes}["6_1_1"] == "max-act-logits label"
    assert sorted(s[0] for s in graph.qParams.supernodes) == ["Texas state", "football game"]
    with serve_in_thread(create_graph_app(graphs, str(store_db))) as url:
        got = httpx.get(f"{url}/features/{MODEL}/{cantor_pair(6, 1)}.json")
    assert got.status_code == 200
    ff = ct_module(ct_frontend, "feature_models").Model.model_validate(got.json())
    assert ff.index == 1 and ff.examples_quantiles[0].examples


class SubgraphNodes(HTMLParser):
    """The subgraph panel's nodes in a page's DOM: {label: number of member circles}."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes: dict[str, int] = {}
        self.members = 0
        self.in_label = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = (dict(attrs).get("class") or "").split()
        if "member-circles" in classes:
            self.members = 0
        elif "member-circle" in classes:
            self.members += 1
        self.in_label = self.in_label or "node-text-container" in classes

    def handle_data(self, data: str) -> None:
        if self.in_label and data.strip():
            self.nodes[data.strip()] = self.members
            self.in_label = False


def subgraph_nodes(dom: str) -> dict[str, int]:
    """{label: member count} of the nodes the subgraph panel drew."""
    parser = SubgraphNodes()
    parser.feed(dom)
    return parser.nodes


def test_circuit_tracers_frontend_shows_labels_and_examples_offline(store_db: Path, tmp_path: Path,
                                                                     ct_frontend: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Chromium is missing: `make test` installs it (Debian package chromium)"
    graphs = tmp_path / "graphs"
    graphs.mkdir()
    label_into(graphs, store_db, tmp_path)
    with serve_in_thread(create_graph_app(graphs, str(store_db), frontend=ct_frontend)) as url:
        example = httpx.get(f"{url}/features/{MODEL}/{cantor_pair(6, 1)}.json").json()
        page = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                               "--enable-logging=stderr", "--virtual-time-budget=15000",
                               f"{url}/index.html?slug=dallas&clickedId=6_1_1"],
                              capture_output=True, text=True, timeout=120)
    dom = html.unescape(page.stdout)
    errors = [line for line in page.stderr.splitlines() if "CONSOLE" in line and "Uncaught" in line]
    assert not errors, errors
    for label in ("max-act-logits label", "Texas state", "football game"):  # clicked node; supernodes
        assert label in dom, page.stdout[:3000]
    # the clicked node's title in the feature panel links to its feature page on the same server
    title = re.search(r'<div class="feature-title[^"]*">Feature&nbsp;<a [^>]*>', page.stdout)
    assert title and f'href="/{MODEL}/{SOURCE}/1"' in title.group(0), title
    # the graph file's supernodes are drawn as supernodes in the subgraph panel (circuit-tracer's own page drops
    # qParams.supernodes unless the URL has ?supernodes=; trace serve mends that)
    proposed = json.loads((graphs / "dallas.json").read_text())["qParams"]["supernodes"]
    assert subgraph_nodes(page.stdout) == {name: len(members) for name, *members in proposed}
    # the feature panel drew the feature file served from the store: logits, histogram, examples
    text = " ".join(re.sub(r"<[^>]+>", " ", re.sub(r"<script.*?</script>", "", dom, flags=re.S)).split())
    panel = text[text.index("Token Predictions"):]
    assert panel.split()[:3] == ["Token", "Predictions", "Top"] and example["top_logits"][0].strip() in panel
    assert "Activation Distribution" in text
    top = " ".join(t.strip() for t in example["examples_quantiles"][0]["examples"][0]["tokens"] if t.strip())
    assert f"Top activations {top}" in panel
    assert example["examples_quantiles"][1]["quantile_name"] in panel


def test_a_frontend_of_another_version_is_a_one_line_error(ct_frontend: Path, tmp_path: Path) -> None:
    """Patching text that is not there (another circuit-tracer version) names the file and stops."""
    site = tmp_path / "site"
    shutil.copytree(ct_frontend, site)
    with pytest.raises(BadInputError, match=r"index\.html: expected text not found once") as err:
        apply_patches(site)  # already patched: the CDN tags are gone
    assert "\n" not in str(err.value)
