"""The HTTP boundary under hostile input (issue 17), on live servers over loopback: `featuredb serve` and
`featuredb trace serve`, with real HTTP and, for the pages, headless Chromium."""

from __future__ import annotations

import html
import http.client
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from conftest import MODEL, SOURCE, imported_store
from featuredb import FeatureStore
from featuredb.server.app import create_app
from featuredb.server.errors import INTERNAL
from featuredb.server.limits import MAX_BODY_BYTES, MAX_FEATURES_PER_REQUEST
from loopback import serve_in_thread
from test_tracer import feat, graph_of, node
from tracer.graph_server import TOKEN_HEADER, VIEWER, create_graph_app
from tracer.offline_frontend import offline_frontend, prepare_offline_frontend

BUILT = Path(__file__).resolve().parents[1] / ".venv" / "circuit-tracer-frontend"
XSS = "<img src=x id=pwned onerror=\"document.title='pwned'\">"


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "Chromium is missing: `make test` installs it (Debian package chromium)"
    return found


def dump_dom(url: str, budget_ms: int = 10000) -> subprocess.CompletedProcess[str]:
    """The DOM of `url` after headless Chromium has run its scripts for `budget_ms` of virtual time."""
    return subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                           "--enable-logging=stderr", f"--virtual-time-budget={budget_ms}", url],
                          capture_output=True, text=True, timeout=180)


def raw(base: str, method: str, path: str, headers: dict[str, str] | None = None,
        body: bytes | None = None) -> tuple[int, bytes]:
    """One request with the path sent exactly as written (no normalising of `..` or escapes)."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def hard_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 features with 40 examples of 64 tokens each (heavy enough to keep a server busy)."""
    return imported_store(tmp_path_factory.mktemp("hardening"), n_features=40, n_activations=40, ctx_len=64,
                          n_top=30)


@pytest.fixture(scope="module")
def api(hard_store: Path) -> Iterator[str]:
    with serve_in_thread(create_app(str(hard_store))) as url:
        yield url


def no_server_path(body: bytes, *paths: Path) -> None:
    text = body.decode("utf-8", "replace")
    assert "Traceback" not in text and 'File "' not in text, text[:500]
    for p in (*paths, Path.cwd()):
        assert str(p) not in text and str(p.resolve()) not in text, (p, text[:500])


# --- featuredb serve -------------------------------------------------------------------------------------------

OUT_OF_RANGE = [
    ("/api/features", [{"modelId": MODEL, "layer": SOURCE, "index": 1, "maxActsToReturn": -5}], "maxActsToReturn"),
    ("/api/features", [{"modelId": MODEL, "layer": SOURCE, "index": 1, "maxActsToReturn": 10**23}], "maxActsToReturn"),
    ("/api/features", [{"modelId": MODEL, "layer": SOURCE, "index": 1, "maxActsToReturn": True}], "maxActsToReturn"),
    ("/api/features", [{"modelId": MODEL, "layer": SOURCE, "index": 2**64}], "index"),
    ("/api/features", [{"modelId": MODEL, "layer": SOURCE, "index": -1}], "index"),
    ("/api/features", [{"modelId": MODEL, "layer": SOURCE, "index": "3.7"}], "index"),
    ("/api/explanation/search-all", {"query": "token", "offset": 2**64}, "offset"),
    ("/api/explanation/search-all", {"query": "token", "offset": -1}, "offset"),
    ("/api/explanation/search-model", {"modelId": MODEL, "query": "token", "offset": 2**63}, "offset"),
    ("/api/explanation/search", {"modelId": MODEL, "layers": [SOURCE], "query": "token", "offset": 10**30}, "offset"),
    ("/api/search-all", {"modelId": MODEL, "sourceSet": "x", "text": "a", "sortIndexes": [2**70]}, "sortIndexes"),
    ("/api/search-topk-by-token", {"modelId": MODEL, "source": SOURCE, "text": "a", "densityThreshold": 1e400},
     "densityThreshold"),
]


def test_out_of_range_numbers_are_400_with_a_message_and_the_connection_stays_open(api: str) -> None:
    parts = urlsplit(api)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.request("GET", f"/api/feature/{MODEL}/{SOURCE}/1")
    first = conn.getresponse()
    assert first.status == 200 and first.read()
    sock = conn.sock
    for path, body, field in OUT_OF_RANGE:
        text = json.dumps(body).replace("Infinity", "1e400")
        conn.request("POST", path, body=text, headers={"content-type": "application/json"})
        response = conn.getresponse()
        answer = json.loads(response.read())
        assert response.status == 400, (path, body, answer)
        assert field in answer["message"] and answer["error"] == answer["message"], answer
        assert response.getheader("connection") != "close"
    conn.request("GET", f"/api/feature/{MODEL}/{SOURCE}/2")
    last = conn.getresponse()
    assert last.status == 200 and json.loads(last.read())["index"] == "2"
    assert conn.sock is sock, "the keep-alive connection was dropped"
    conn.close()


def test_a_huge_body_is_413_and_the_server_answers_the_next_request(api: str) -> None:
    entry = {"modelId": MODEL, "layer": SOURCE, "index": 1}
    huge = json.dumps([entry] * 200_000).encode()  # about 10 MB
    assert len(huge) > 5 * MAX_BODY_BYTES
    status, body = raw(api, "POST", "/api/features", {"content-type": "application/json"}, huge)  # no reset
    assert status == 413 and "larger than" in json.loads(body)["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server counts as the body arrives
        for i in range(0, len(huge), 65536):
            yield huge[i:i + 65536]

    got = httpx.post(f"{api}/api/features", content=chunks(), headers={"content-type": "application/json"},
                     timeout=60)
    assert got.status_code == 413 and "larger than" in got.json()["message"]
    too_many = httpx.post(f"{api}/api/features", json=[entry] * (MAX_FEATURES_PER_REQUEST + 1), timeout=60)
    assert too_many.status_code == 400 and f"at most {MAX_FEATURES_PER_REQUEST}" in too_many.json()["message"]
    fine = httpx.post(f"{api}/api/features", json=[entry] * 3, timeout=60)
    assert fine.status_code == 200 and [f["index"] for f in fine.json()] == ["1", "1", "1"]


def test_sigterm_stops_a_busy_server_within_seconds(hard_store: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "featuredb.cli", "serve", "--db", str(hard_store), "--port",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stop = threading.Event()
    body = [{"modelId": MODEL, "layer": SOURCE, "index": i % 40} for i in range(MAX_FEATURES_PER_REQUEST)]

    def hammer() -> None:
        while not stop.is_set():
            try:
                httpx.post(f"{url}/api/features", json=body, timeout=120)
            except httpx.HTTPError:
                time.sleep(0.05)

    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(f"{url}/openapi.json", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        workers = [threading.Thread(target=hammer, daemon=True) for _ in range(16)]
        for w in workers:
            w.start()
        time.sleep(3)  # 16 requests of 256 heavy features in flight: minutes of work on two cores
        assert proc.poll() is None
        start = time.time()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        assert time.time() - start < 10, f"took {time.time() - start:.1f} s to stop"
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_error_bodies_hold_no_path_and_an_unexpected_error_is_a_generic_500(
        hard_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with serve_in_thread(create_app(str(hard_store))) as url:
        missing = httpx.get(f"{url}/api/feature/{MODEL}/{SOURCE}/999")
        assert missing.status_code == 404 and "not in the store" in missing.json()["message"]
        no_server_path(missing.content, hard_store.parent)
        graph = httpx.get(f"{url}/api/graph/{MODEL}/nope")
        assert graph.status_code == 404
        no_server_path(graph.content, hard_store.parent)

        def broken(*_args: Any, **_kwargs: Any) -> None:
            raise RuntimeError(f"disk fault reading {hard_store}")

        monkeypatch.setattr(FeatureStore, "get_feature", broken)
        parts = urlsplit(url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        conn.request("POST", "/api/features", body=json.dumps([{"modelId": MODEL, "layer": SOURCE, "index": 1}]),
                     headers={"content-type": "application/json"})
        response = conn.getresponse()
        body = response.read()
        assert response.status == 500 and json.loads(body)["message"] == INTERNAL
        no_server_path(body, hard_store.parent)
        sock = conn.sock
        conn.request("GET", "/openapi.json")
        assert conn.getresponse().status == 200 and conn.sock is sock, "the connection survives a 500"
        conn.close()


# --- featuredb trace serve ------------------------------------------------------------------------------------

@pytest.fixture
def graphs(tmp_path: Path) -> Path:
    """A folder holding one graph, g.json, whose nodes carry script payloads in every text field."""
    folder = tmp_path / "graphs"
    folder.mkdir()
    nodes = [feat(1, pos=1, clerp=XSS.replace("pwned", "pwned-clerp")),
             node("6_2_2", 2, XSS.replace("pwned", "pwned-layer"), 2, "cross layer transcoder", "plain label"),
             node("E_5_0", 0, "E", 0, "embedding")]
    nodes[0]["ctx_idx"] = XSS.replace("pwned", "pwned-ctx")
    graph = graph_of(nodes, [{"source": "E_5_0", "target": "6_1_1", "weight": 1.0}])
    graph["metadata"]["prompt"] = XSS.replace("pwned", "pwned-prompt")
    graph["qParams"]["supernodes"] = [[XSS.replace("pwned", "pwned-supernode"), "6_1_1"]]
    (folder / "g.json").write_text(json.dumps(graph))
    return folder


def same_origin(url: str, token: str) -> dict[str, str]:
    """The headers the served page's own save sends."""
    return {"origin": url, "sec-fetch-site": "same-origin", TOKEN_HEADER: token, "content-type": "application/json"}


def test_cross_site_saves_are_refused_and_the_file_is_unchanged(graphs: Path) -> None:
    target = graphs / "g.json"
    before = target.read_bytes()
    app = create_graph_app(graphs, None, frontend=VIEWER)
    token = app.state.save_token
    saves: list[str] = []
    attacker = FastAPI()

    @attacker.get("/")
    def evil_page() -> HTMLResponse:
        save = f"{victim}/save_graph/g"
        return HTMLResponse(f"""<body><form id=f method=POST action="{save}" enctype="text/plain">
<input name='{{"qParams": {{"pinnedIds": "pwned", "x": "' value='"}}}}'></form><script>
fetch("{save}", {{method: "POST", mode: "no-cors", headers: {{"content-type": "text/plain"}},
                  body: JSON.stringify({{qParams: {{pinnedIds: "pwned"}}}})}});
fetch("{save}", {{method: "POST", mode: "no-cors", body: new Blob([JSON.stringify({{qParams: {{a: 1}}}})],
                  {{type: "application/json"}})}});
setTimeout(() => document.getElementById("f").submit(), 500);
</script></body>""")

    async def counting(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/save_graph/"):
            saves.append(scope["method"])
        await app(scope, receive, send)

    with serve_in_thread(counting) as victim, serve_in_thread(attacker) as evil:
        evil = evil.replace("127.0.0.1", "localhost")  # another origin (and another port)
        dump_dom(f"{evil}/", budget_ms=5000)
        hostile = [
            ({"content-type": "application/json"}, b'{"qParams": {}}', 403),  # no token
            ({**same_origin(victim, token), "origin": "http://evil.example"}, b'{"qParams": {}}', 403),
            ({**same_origin(victim, token), "sec-fetch-site": "cross-site"}, b'{"qParams": {}}', 403),
            ({**same_origin(victim, token), "host": "evil.example"}, b'{"qParams": {}}', 403),  # DNS rebinding
            ({**same_origin(victim, "wrong")}, b'{"qParams": {}}', 403),
            ({**same_origin(victim, token), "content-type": "text/plain"}, b'{"qParams": {}}', 415),
            (same_origin(victim, token), b"not json", 400),
            (same_origin(victim, token), b'{"qParams": "[]"}', 400),
            (same_origin(victim, token), b"[1, 2]", 400),
            (same_origin(victim, token), b'{"qParams": {"a": NaN}}', 400),
            (same_origin(victim, token), b'{"qParams": {"a": "' + b"x" * (2 * MAX_BODY_BYTES) + b'"}}', 413),
        ]
        for headers, body, status in hostile:
            got, answer = raw(victim, "POST", "/save_graph/g", headers, body)
            assert got == status, (headers, body[:40], answer)
            assert json.loads(answer)["message"]
            no_server_path(answer, graphs)
    assert saves.count("POST") >= 2, "the attacker page's requests reached the server"
    assert target.read_bytes() == before


def test_a_same_origin_save_with_the_token_rewrites_qparams_and_keeps_the_file_mode(graphs: Path) -> None:
    target = graphs / "g.json"
    target.chmod(0o644)
    app = create_graph_app(graphs, None, frontend=VIEWER)
    with serve_in_thread(app) as url:
        page = httpx.get(f"{url}/")
        assert app.state.save_token in page.text and page.headers["x-frame-options"] == "DENY"
        assert app.state.save_token not in httpx.get(f"{url}/", headers={"host": "evil.example"}).text
        got = httpx.post(f"{url}/save_graph/g", json={"qParams": {"pinnedIds": "6_1_1"}},
                         headers={"origin": url, TOKEN_HEADER: app.state.save_token})
        assert got.status_code == 200, got.text
    assert json.loads(target.read_text())["qParams"] == {"pinnedIds": "6_1_1"}
    assert target.stat().st_mode & 0o777 == 0o644 and not list(graphs.glob(".*tmp*"))


def test_circuit_tracers_page_saves_through_its_own_save_button(graphs: Path, hard_store: Path,
                                                                tmp_path: Path) -> None:
    from test_circuit_tracer_frontend import dallas_graph

    site = tmp_path / "site"
    shutil.copytree(offline_frontend(BUILT) or prepare_offline_frontend(BUILT), site)
    index = site / "index.html"  # the user clicks Save once the page has drawn the graph
    index.write_text(index.read_text() + "\n<script>setTimeout(() => document.querySelector('.save-button')"
                     ".click(), 4000)</script>\n")
    (graphs / "dallas.json").write_text(json.dumps(dallas_graph()))
    app = create_graph_app(graphs, str(hard_store), frontend=site)
    with serve_in_thread(app) as url:
        util = httpx.get(f"{url}/attribution_graph/util-cg.js").text
        assert "featuredbEscape(d.ppClerp" in util and "<b>${featuredbEscape(val)}</b>" in util
        page = dump_dom(f"{url}/index.html?slug=dallas&clickedId=6_1_1&pinnedIds=6_1_1,6_3_2", budget_ms=15000)
    saved = json.loads((graphs / "dallas.json").read_text())["qParams"]
    assert saved.get("pinnedIds") == "6_1_1,6_3_2", (saved, page.stderr[-2000:])


def test_circuit_tracers_page_shows_a_script_in_a_layer_name_as_text(hard_store: Path, tmp_path: Path) -> None:
    """circuit-tracer's page puts the clicked node's layer into HTML; trace serve serves it escaped."""
    folder = tmp_path / "ct-graphs"
    folder.mkdir()
    nodes = [feat(1, pos=1), node("6_2_2", 2, XSS, 2, "cross layer transcoder", "plain"),
             node("E_5_0", 0, "E", 0, "embedding")]
    links = [{"source": "E_5_0", "target": n, "weight": 1.0} for n in ("6_1_1", "6_2_2")]
    (folder / "g.json").write_text(json.dumps(graph_of(nodes, links, qparams_as_strings=True)))
    site = offline_frontend(BUILT) or prepare_offline_frontend(BUILT)
    with serve_in_thread(create_graph_app(folder, str(hard_store), frontend=site)) as url:
        page = dump_dom(f"{url}/index.html?slug=g&clickedId=6_2_2")
    assert "<img" not in page.stdout and "<title>pwned" not in page.stdout
    assert XSS in html.unescape(page.stdout), "the layer name is shown, as text"


def test_script_payloads_in_a_graph_render_as_text_in_the_viewer(graphs: Path) -> None:
    with serve_in_thread(create_graph_app(graphs, None, frontend=VIEWER)) as url:
        page = dump_dom(f"{url}/index.html?slug=g")
    dom = page.stdout
    assert "<img" not in dom and 'id="pwned' not in dom and "<title>pwned" not in dom, dom[:3000]
    text = html.unescape(dom)
    for where in ("ctx", "clerp", "layer", "prompt", "supernode"):
        assert XSS.replace("pwned", f"pwned-{where}") in text, (where, dom[:3000])


def test_the_evidence_page_shows_script_payloads_as_text_and_refuses_a_broken_file(graphs: Path) -> None:
    evidence = {"prompt": XSS.replace("pwned", "pwned-prompt"), "target": XSS.replace("pwned", "pwned-target"),
                "p_target": 0.4, "top5_before": [[XSS.replace("pwned", "pwned-top"), 0.4]], "n_random": 8, "sds": 2.0,
                "seconds": 1.0, "supernodes": [{"label": XSS.replace("pwned", "pwned-label"), "node_ids": ["6_1_1"],
                                                "delta_p": -0.1, "top5_after": [], "random_mean": 0.01,
                                                "random_sd": 0.005, "random_n": 8, "beyond_random": True,
                                                "margin_sds": 18.0},
                                               {"label": "alike", "node_ids": ["6_2_2"], "delta_p": -0.1,
                                                "top5_after": [], "random_mean": 0.01, "random_sd": 0.0,
                                                "random_n": 8, "beyond_random": True, "margin_sds": 9e7}]}
    (graphs / "g.evidence.json").write_text(json.dumps(evidence))
    with serve_in_thread(create_graph_app(graphs, None, frontend=VIEWER)) as url:
        got = httpx.get(f"{url}/evidence/g")
        assert got.status_code == 200 and got.headers["content-type"].startswith("text/html")
        assert "script-src" not in got.headers["content-security-policy"] and "default-src 'none'" in \
            got.headers["content-security-policy"], "no script runs on the evidence page"
        page = dump_dom(f"{url}/evidence/g")
        (graphs / "g.evidence.json").write_text('{"supernodes": [{"delta_p": "lots"}]}')
        broken = httpx.get(f"{url}/evidence/g")
        (graphs / "g.evidence.json").unlink()
        missing = httpx.get(f"{url}/evidence/g")
    assert "<img" not in page.stdout and "<title>pwned" not in page.stdout
    text = html.unescape(page.stdout)
    for where in ("prompt", "target", "top"):  # tokens are shown quoted, as Python writes them
        assert repr(XSS.replace("pwned", f"pwned-{where}")) in text, where
    assert XSS.replace("pwned", "pwned-label") in text
    assert "beyond random" in text and "+18.0" in text
    assert "random sd ≈ 0" in text and "90000000" not in text, "no margin from random sets that all moved p alike"
    assert broken.status_code == 400 and "g.evidence.json" in broken.json()["error"], broken.text
    assert missing.status_code == 404 and "no supernode evidence for graph g" in missing.json()["error"]


ODD_NAMES = ["..%2f..%2fetc%2fpasswd", "..", ".", "a%00b", "x" * 5000, "%C3%A9%E2%9C%93", "%C2%B2%C2%B3",
             "9" * 5000, "%ff%fe", "%2e%2e", "g%2f..%2fg", "con", "*", "%0d%0aSet-Cookie:%20a=b"]


def test_odd_names_are_4xx_on_every_trace_serve_route(graphs: Path, hard_store: Path) -> None:
    app = create_graph_app(graphs, str(hard_store), frontend=VIEWER)
    with serve_in_thread(app) as url:
        headers = same_origin(url, app.state.save_token)
        for name in ODD_NAMES:
            for method, path in (("GET", f"/data/{name}"), ("GET", f"/data/{name}.json"),
                                 ("GET", f"/graph_data/{name}.json"), ("GET", f"/features/{MODEL}/{name}"),
                                 ("GET", f"/features/{MODEL}/{name}.json"), ("GET", f"/features/{name}/1.json"),
                                 ("GET", f"/static-{name}"), ("GET", f"/evidence/{name}"), ("GET", f"/vendor/{name}x"),
                                 ("POST", f"/save_graph/{name}"), ("DELETE", f"/data/{name}.json"),
                                 ("PUT", f"/save_graph/{name}")):
                status, body = raw(url, method, path, headers, b'{"qParams": {}}' if method != "GET" else None)
                assert 400 <= status < 500, (method, path[:80], status, body[:200])
                no_server_path(body, graphs, hard_store.parent)
        for path in ("/../../../etc/passwd", "/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/..%2f..%2f..%2fetc%2fpasswd",
                     "/vendor/../../../../etc/passwd", "//etc/passwd"):
            status, body = raw(url, "GET", path)
            assert status == 404 and b"root:" not in body, (path, status)
        status, body = raw(url, "GET", "/data/nope.json")
        assert status == 404 and b"graph folder" in body
        no_server_path(body, graphs)
