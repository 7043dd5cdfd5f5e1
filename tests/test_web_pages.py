"""The web UI: search page and feature pages of `featuredb serve` (and of `trace serve`), over real HTTP, with
headless Chromium for what a person does (type, press Enter, click a hit) and sees."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, Iterator

import httpx
import polars as pl
import pytest

from chromium_page import chromium_tab
from conftest import MODEL, SOURCE
from featuredb import FeatureStore
from featuredb.store.graph_store import save_graph
from featuredb.server.app import create_app
from featuredb.server.page_charts import shown_token
from loopback import serve_in_thread
from tracer.graph_server import create_graph_app

HOSTILE = '<img src=x onerror="document.title=\'pwned\'"><b>Texas</b> capital & "quotes"'


def graph_with(index: int, slug: str, source_set: str | None = None) -> dict[str, Any]:
    """A small graph of MODEL with one node of feature `index` at layer 6, position 1."""
    meta: dict[str, Any] = {"slug": slug, "scan": MODEL, "prompt": "the capital of Texas",
                            "prompt_tokens": ["the", " capital", " of", " Texas"]}
    if source_set:
        meta["feature_details"] = {"neuronpedia_source_set": source_set}
    nodes = [
        {"node_id": "E_1_0", "feature": None, "layer": "E", "ctx_idx": 0, "feature_type": "embedding",
         "jsNodeId": "E_1-0", "clerp": "", "influence": None, "activation": None},
        {"node_id": f"6_{index}_1", "feature": index, "layer": "6", "ctx_idx": 1,
         "feature_type": "cross layer transcoder", "jsNodeId": f"6_{index}-0", "clerp": "", "influence": 0.4,
         "activation": 2.5},
    ]
    return {"metadata": meta, "qParams": {"pinnedIds": [], "supernodes": []}, "nodes": nodes,
            "links": [{"source": "E_1_0", "target": f"6_{index}_1", "weight": 0.5}]}


@pytest.fixture
def web_db(store_db: Path) -> Path:
    """The conftest store, feature 5 explained with HTML, and two stored graphs (one of another source set)."""
    with FeatureStore(store_db) as store:
        store.upsert({"explanations": pl.DataFrame({
            "id": ["hostile"], "modelId": [MODEL], "layer": [SOURCE], "index": [5],
            "typeName": ["np_max-act"], "scoreV1": [0.9], "description": [HOSTILE]})})
        save_graph(store, graph_with(5, "texas-graph"))
        save_graph(store, graph_with(5, "other-set-graph", source_set="another-set"))
    return store_db


@pytest.fixture
def served(web_db: Path) -> Iterator[str]:
    with serve_in_thread(create_app(str(web_db))) as url:
        yield url


def top_examples(db: Path, index: int) -> list[dict[str, Any]]:
    """The feature's top examples (not interval samples) as the API returns them, strongest first."""
    with FeatureStore(db, read_only=True) as store:
        acts = store.get_feature(MODEL, SOURCE, index).model_dump(mode="json")["activations"]
    return [a for a in acts if a["binMin"] is None or a["binMin"] < 0]


def test_search_type_enter_click_a_hit_then_the_feature_page_in_chromium(served: str, web_db: Path,
                                                                          tmp_path: Path) -> None:
    with chromium_tab(tmp_path) as page:
        page.call("Page.enable")
        page.call("Runtime.enable")
        page.call("Page.navigate", url=served + "/")
        page.wait_for("document.readyState === 'complete' && !!document.getElementById('q')")
        page.js("document.activeElement && document.activeElement.blur()")
        # "/" jumps to the search box, typing fills it, Enter searches: no mouse needed
        for kind in ("keyDown", "keyUp"):
            page.call("Input.dispatchKeyEvent", type=kind, key="/", code="Slash", text="/" if kind == "keyDown" else "",
                      windowsVirtualKeyCode=191)
        assert page.js("document.activeElement.id") == "q"
        page.call("Input.insertText", text="Texas capital")
        page.call("Input.dispatchKeyEvent", type="keyDown", key="Enter", code="Enter", text="\r",
                  windowsVirtualKeyCode=13)
        page.call("Input.dispatchKeyEvent", type="keyUp", key="Enter", code="Enter", windowsVirtualKeyCode=13)
        page.wait_for(f"location.pathname === '/search' && !!document.querySelector('a[href$=\"/{SOURCE}/5\"]')")
        assert page.js("new URLSearchParams(location.search).get('q')") == "Texas capital"
        # the hostile explanation is a label in the hit list, shown as text
        assert HOSTILE in page.js("document.getElementById('hits').innerText")
        assert page.js("document.querySelectorAll('#hits img, #hits .label b').length") == 0
        box = page.js(f"(() => {{ const r = document.querySelector('a[href$=\"/{SOURCE}/5\"]')"
                      ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            page.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)
        page.wait_for(f"location.pathname === '/{MODEL}/{SOURCE}/5' && document.readyState === 'complete'")

        tops = top_examples(web_db, 5)
        assert page.js("document.querySelectorAll('#top-activations .example').length") == len(tops)
        peaks = page.js("[...document.querySelectorAll('#top-activations .example .t.peak')].map(e => e.textContent)")
        assert peaks == [shown_token(a["tokens"][a["maxValueTokenIndex"]]) for a in tops]
        assert page.js("document.querySelectorAll('#density svg.hist rect').length") > 0
        expl = page.js("document.querySelector('#explanations .expl').textContent")
        assert expl.startswith(HOSTILE)  # the best-scored explanation comes first, as text
        assert page.js("document.querySelectorAll('#explanations img, #explanations .expl b').length") == 0
        assert page.js("document.title") != "pwned"
        assert "texas-graph" in page.js("document.getElementById('graphs').innerText")
        assert not page.errors
        shot = base64.b64decode(page.call("Page.captureScreenshot", format="png")["data"])
    (tmp_path / "feature-page.png").write_bytes(shot)
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 30_000  # a drawn page, not a blank one


def test_every_search_mode_links_to_feature_pages(served: str, web_db: Path) -> None:
    tops = top_examples(web_db, 7)
    peak = tops[0]["tokens"][tops[0]["maxValueTokenIndex"]]
    with FeatureStore(web_db, read_only=True) as store:
        logit = store.get_feature(MODEL, SOURCE, 7).pos_str[0]
    for mode, query in (("text", "max-act label"), ("auto", "max-act label"), ("semantic", "max-act label"),
                        ("token", peak), ("logit", logit)):
        r = httpx.get(served + "/search", params={"q": query, "mode": mode})
        assert r.status_code == 200, (mode, r.text[:300])
        assert "text/html" in r.headers["content-type"]
        assert f'href="/{MODEL}/{SOURCE}/' in r.text, mode
    assert f'href="/{MODEL}/{SOURCE}/1"' in httpx.get(served + "/search",
                                                     params={"q": "max-act label", "mode": "text"}).text
    # Neuronpedia's explanation-search URL works too
    r = httpx.get(served + "/search-explanations/", params={"q": "max-act label", "modelId": MODEL})
    assert r.status_code == 200 and f'href="/{MODEL}/{SOURCE}/1"' in r.text


def test_pages_say_what_is_wrong_as_html(served: str) -> None:
    r = httpx.get(served + f"/{MODEL}/{SOURCE}/999999")
    assert r.status_code == 404 and "is not in the store" in r.text and "text/html" in r.headers["content-type"]
    r = httpx.get(served + "/search", params={"q": "x", "mode": "nonsense"})
    assert r.status_code == 400 and "unknown search mode" in r.text
    r = httpx.get(served + "/search", params={"q": "Texas", "model": "<script>alert(1)</script>"})
    assert r.status_code == 404 and "<script>alert(1)</script>" not in r.text and "&lt;script&gt;" in r.text
    r = httpx.get(served + "/search", params={"q": "Texas", "mode": "inference"})  # no model runs on this store
    assert r.status_code in (400, 404) and 'class="error"' in r.text
    for path in ("/%00/x/1", f"/{MODEL}/{SOURCE}/99999999999999999999999999", "/" + "x" * 5000 + "/y/1"):
        r = httpx.get(served + path)
        assert r.status_code == 404 and "no such feature" in r.text and "\x00" not in r.text, path
    for params in ({"q": "x", "mode": "m" * 5000}, {"q": "x" * 20_000}):
        r = httpx.get(served + "/search", params=params)
        assert r.status_code == 400 and 'class="error"' in r.text and len(r.text) < 20_000
    assert httpx.head(served + f"/{MODEL}/{SOURCE}/5").status_code == 200
    for path in (f"/{MODEL}/{SOURCE}/-1", f"/{MODEL}/{SOURCE}/1e3", f"/{MODEL}/{SOURCE}/abc"):  # mistyped index
        r = httpx.get(served + path)
        assert r.status_code == 404 and "text/html" in r.headers["content-type"] and "whole number" in r.text
    assert httpx.get(served + "/api/nothing/here").headers["content-type"] == "application/json"
    # the API's own routes are untouched by the page routes
    assert httpx.get(served + f"/api/feature/{MODEL}/{SOURCE}/5").json()["index"] == "5"


def test_pages_forbid_scripts_but_the_search_key_and_framing(served: str) -> None:
    for path in ("/", "/search?q=Texas", f"/{MODEL}/{SOURCE}/5"):
        r = httpx.get(served + path)
        csp = r.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'sha256-" in csp and "frame-ancestors 'none'" in csp
        assert r.headers["x-frame-options"] == "DENY"


def test_feature_page_lists_the_stored_graphs_that_use_it(served: str) -> None:
    page5 = httpx.get(served + f"/{MODEL}/{SOURCE}/5").text
    assert f'href="/graphs/{MODEL}/texas-graph.json"' in page5
    assert "other-set-graph" not in page5  # a graph of another source set uses another feature 5
    assert 'title="prompt token"> capital</span>' in page5  # the prompt token its node sits at
    assert "No graph in the store has this feature" in httpx.get(served + f"/{MODEL}/{SOURCE}/4").text


def test_trace_serve_links_graph_nodes_to_feature_pages_and_back(web_db: Path, tmp_path: Path) -> None:
    folder = tmp_path / "graphs"
    folder.mkdir()
    (folder / "folder-graph.json").write_text(json.dumps(graph_with(9, "folder-graph")))
    with serve_in_thread(create_graph_app(folder, str(web_db))) as url:
        graph = httpx.get(url + "/data/folder-graph.json").json()
        node = next(n for n in graph["nodes"] if n["node_id"] == "6_9_1")
        assert node["vis_link"] == f"/{MODEL}/{SOURCE}/9"  # the feature panel's title links here
        assert next(n for n in graph["nodes"] if n["node_id"] == "E_1_0").get("vis_link") is None
        page = httpx.get(url + node["vis_link"])
        assert page.status_code == 200 and 'href="/?slug=folder-graph"' in page.text
        assert httpx.get(url + f"/{MODEL}/{SOURCE}/8").status_code == 200
        assert "folder-graph" not in httpx.get(url + f"/{MODEL}/{SOURCE}/8").text
        assert httpx.get(url + "/search", params={"q": "max-act label", "mode": "text"}).status_code == 200
        assert 'value="inference"' not in httpx.get(url + "/search").text  # trace serve runs no model
        assert httpx.get(url + f"/{MODEL}/{SOURCE}/9").text.count("/api/feature") == 0  # no API here to link
        home = httpx.get(url + "/")  # `/` stays the graph view
        assert home.headers["content-type"].startswith("text/html") and "Search features" not in home.text


def test_model_and_source_pages_and_the_last_features_next_link(served: str) -> None:
    model = httpx.get(served + f"/{MODEL}")
    assert model.status_code == 200 and f'href="/{MODEL}/{SOURCE}"' in model.text
    source = httpx.get(served + f"/{MODEL}/{SOURCE}")
    assert source.status_code == 200 and "40 features" in source.text and f'href="/{MODEL}/{SOURCE}/39"' in source.text
    last = httpx.get(served + f"/{MODEL}/{SOURCE}/39").text
    assert 'rel="prev"' in last and 'rel="next"' not in last  # no link to a feature that is not there
    assert 'rel="next"' in httpx.get(served + f"/{MODEL}/{SOURCE}/38").text
    assert httpx.get(served + "/no-such-model").status_code == 404


def test_search_filters_and_more_results(served: str, web_db: Path) -> None:
    with FeatureStore(web_db, read_only=True) as store:
        dense = store.con.execute('SELECT "index" FROM features ORDER BY frac_nonzero DESC LIMIT 1').fetchone()[0]
        sparse_limit = store.con.execute("SELECT median(frac_nonzero) FROM features").fetchone()[0]
    common = {"q": "label", "mode": "text"}
    everything = httpx.get(served + "/search", params={**common, "limit": 200}).text
    filtered = httpx.get(served + "/search", params={**common, "max_density": sparse_limit, "limit": 200}).text
    assert filtered.count('class="hit"') < everything.count('class="hit"')
    assert f'/{SOURCE}/{dense}"' not in filtered
    assert httpx.get(served + "/search", params={**common, "layers": "7-9"}).text.count('class="hit"') == 0
    assert httpx.get(served + "/search", params={**common, "layers": "6"}).text.count('class="hit"') > 0
    bad = httpx.get(served + "/search", params={**common, "max_density": "lots"})
    assert bad.status_code == 400 and "max density" in bad.text
    one = httpx.get(served + "/search", params={**common, "limit": 1}).text
    assert one.count('class="hit"') == 1 and "the first 1 feature<" in one and "limit=2" in one
