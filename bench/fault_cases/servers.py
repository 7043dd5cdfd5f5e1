"""Hostile HTTP against live servers: `featuredb serve` and `featuredb trace serve`, each a real subprocess.

About sixty requests an attacker on loopback (or a page in the user's browser) could send: numbers out of
range, bodies too big or not JSON, odd names and paths, odd methods, cross-site and DNS-rebinding saves, script
payloads in a graph (rendered in headless Chromium when it is installed), SIGTERM while busy, then a short
load (2,000 requests at concurrency 16). Every answer is judged the same way: no answer or a 5xx is a server
error; a traceback, a server path, a cross-site write or an executed payload a security failure; a 4xx a clear
error.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from bench.fault_cases.outcome import ACCEPTED, CLEAR_ERROR, DATA_LOSS, SECURITY, SERVER_ERROR, TRACEBACK, Outcome

SERVE, TRACE, LOAD = "serve", "trace-serve", "serve-load"
MODEL, SOURCE, SET = "demo-model", "6-demo-transcoder", "demo-transcoder"
WRITE_TOKEN = "bench-write-token"
VIEWER = Path(__file__).resolve().parents[2] / "tracer" / "viewer"
TRACEBACK_TEXT = re.compile(r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+")
XSS = "<img src=x id=pwned onerror=\"document.title='pwned'\">"
LOAD_REQUESTS, LOAD_CONCURRENCY = 2000, 16


@dataclass
class Answer:
    """What came back: a status and body, or status None and why the connection failed."""

    status: int | None
    body: bytes = b""
    error: str = ""


def send(base: str, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
         timeout: float = 60) -> Answer:
    """One request on a new connection, with the path sent exactly as written."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    headers = headers or {}
    chunked = any(k.lower() == "transfer-encoding" for k in headers)
    try:
        conn.request(method, path, body=body, headers=headers, encode_chunked=chunked)
        response = conn.getresponse()
        return Answer(response.status, response.read())
    except (OSError, http.client.HTTPException) as e:
        return Answer(None, error=f"{type(e).__name__}: {e}")
    finally:
        conn.close()


def post_json(base: str, path: str, data: Any, headers: dict[str, str] | None = None) -> Answer:
    """POST `data` as JSON."""
    return send(base, "POST", path, json.dumps(data).encode(), {"content-type": "application/json", **(headers or {})})


def judge(area: str, case: str, answer: Answer, hidden: list[str], *, if_ok: str = ACCEPTED) -> Outcome:
    """Classify an answer; `if_ok` is the kind a 2xx/3xx counts as (SECURITY where the request must be refused)."""
    text = answer.body.decode("utf-8", "replace")
    if answer.status is None:
        return Outcome(area, case, SERVER_ERROR, f"no answer: {answer.error}"[:200])
    if TRACEBACK_TEXT.search(text):
        return Outcome(area, case, TRACEBACK, text[:200])
    leaked = next((p for p in hidden if p and p in text), None)
    if leaked:
        return Outcome(area, case, SECURITY, f"server path in the body: {text[:150]}")
    if answer.status >= 500:
        return Outcome(area, case, SERVER_ERROR, f"{answer.status}: {text[:150]}")
    if answer.status >= 400:
        return Outcome(area, case, CLEAR_ERROR, f"{answer.status}: {text[:150]}")
    return Outcome(area, case, if_ok, f"{answer.status}" + (": accepted" if if_ok != ACCEPTED else ""))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(args: list[str], ready_path: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`featuredb ARGS --port P` in a subprocess; yields its base URL and process once `ready_path` answers."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "featuredb.cli", *args, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while send(base, "GET", ready_path, timeout=5).status != 200:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"featuredb {' '.join(args)} did not start")
            time.sleep(0.2)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def build_store(work: Path) -> Path:
    """A 40-feature store with 40 examples of 64 tokens per feature."""
    from featuredb import FeatureStore
    from featuredb.formats.neuronpedia_import import import_neuronpedia
    from featuredb.synthetic_export import generate_export

    db = work / "servers-store.duckdb"
    if not db.exists():
        export = generate_export(work / "servers-export", model=MODEL, source=SOURCE, n_features=40,
                                 n_activations=40, ctx_len=64, n_top=30, progress=False)
        with FeatureStore(db) as store:
            import_neuronpedia(store, export, progress=False)
    return db


def hidden_paths(*paths: Path) -> list[str]:
    """Server paths no body may show."""
    out = [os.getcwd(), str(Path(sys.executable).resolve().parent.parent)]
    for p in paths:
        out += [str(p), str(p.resolve())]
    return [p for p in out if p.count(os.sep) >= 2]  # not "/" or "/tmp": bodies may name those innocently


def serve_cases(base: str, hidden: list[str]) -> Iterator[Outcome]:
    """Hostile requests to `featuredb serve` (started with the write token)."""
    feature = {"modelId": MODEL, "layer": SOURCE, "index": 1}
    numbers = {
        "maxActsToReturn -5": ("/api/features", [{**feature, "maxActsToReturn": -5}]),
        "maxActsToReturn 10^23": ("/api/features", [{**feature, "maxActsToReturn": 10**23}]),
        "maxActsToReturn true": ("/api/features", [{**feature, "maxActsToReturn": True}]),
        "index 2^64": ("/api/features", [{**feature, "index": 2**64}]),
        "index -1": ("/api/features", [{**feature, "index": -1}]),
        "index '3.7'": ("/api/features", [{**feature, "index": "3.7"}]),
        "offset 2^64": ("/api/explanation/search-all", {"query": "token", "offset": 2**64}),
        "offset -1": ("/api/explanation/search-model", {"modelId": MODEL, "query": "token", "offset": -1}),
        "offset 10^30": ("/api/explanation/search", {"modelId": MODEL, "layers": [SOURCE], "query": "tok",
                                                     "offset": 10**30}),
        "sortIndexes 2^70": ("/api/search-all", {"modelId": MODEL, "sourceSet": SET, "text": "a b",
                                                 "sortIndexes": [2**70]}),
        "numResults 2^63": ("/api/search-topk-by-token", {"modelId": MODEL, "source": SOURCE, "text": "a",
                                                          "numResults": 2**63}),
        "contentLength -1": ("/api/graph/signed-put", {"filename": "g.json", "contentLength": -1}),
    }
    for case, (path, data) in numbers.items():
        yield judge(SERVE, case, post_json(base, path, data, {"x-api-key": WRITE_TOKEN}), hidden)
    raw_bodies = {
        "NaN in JSON": ("/api/explanation/search-all", b'{"query": "token", "offset": NaN}'),
        "Infinity densityThreshold": ("/api/search-topk-by-token",
                                      b'{"modelId": "m", "source": "s", "text": "a", "densityThreshold": Infinity}'),
        "malformed JSON": ("/api/features", b'[{"modelId": '),
        "JSON nested 100,000 deep": ("/api/features", b"[" * 100_000 + b"]" * 100_000),
        "body is a string": ("/api/features", b'"features"'),
        "invalid UTF-8": ("/api/explanation/search-all", b'{"query": "\xff\xfe\xfd"}'),
        "NUL in a name": ("/api/features", b'[{"modelId": "a\\u0000b", "layer": "s", "index": 1}]'),
    }
    for case, (path, body) in raw_bodies.items():
        yield judge(SERVE, case, send(base, "POST", path, body, {"content-type": "application/json"}), hidden)
    yield judge(SERVE, "JSON sent as text/plain", send(base, "POST", "/api/features", json.dumps([feature]).encode(),
                                                       {"content-type": "text/plain"}), hidden)
    huge = json.dumps([feature] * 200_000).encode()
    yield judge(SERVE, "10 MB list (Content-Length)", send(base, "POST", "/api/features", huge,
                                                           {"content-type": "application/json"}), hidden,
                if_ok=SECURITY)
    yield judge(SERVE, "10 MB list (chunked)", send(base, "POST", "/api/features", iter([huge[i:i + 65536] for i in
                                                    range(0, len(huge), 65536)]),
                                                    {"content-type": "application/json",
                                                     "transfer-encoding": "chunked"}), hidden, if_ok=SECURITY)
    yield judge(SERVE, "Content-Length 10^12 and no body", send(base, "POST", "/api/features", None,
                                                                {"content-length": str(10**12)}, timeout=10),
                hidden, if_ok=SECURITY)
    yield judge(SERVE, "257 features", post_json(base, "/api/features", [feature] * 257), hidden, if_ok=SECURITY)
    yield judge(SERVE, "a server is up after the big bodies", post_json(base, "/api/features", [feature]), hidden)
    paths = {
        "missing feature (path in message?)": f"/api/feature/{MODEL}/{SOURCE}/999",
        "index of 23 digits": f"/api/feature/{MODEL}/{SOURCE}/99999999999999999999999",
        "index 'abc'": f"/api/feature/{MODEL}/{SOURCE}/abc",
        "model id of 5,000 chars": f"/api/feature/{'m' * 5000}/{SOURCE}/1",
        "NUL in model id": f"/api/feature/a%00b/{SOURCE}/1",
        "invalid percent-encoding": "/api/feature/%ff%fe/s/1",
        "traversal in the path": "/api/feature/..%2f..%2f..%2fetc/passwd/1",
        "raw traversal": "/../../../../etc/passwd",
        "missing graph": f"/api/graph/{MODEL}/nope",
        "missing graph file": f"/graphs/{MODEL}/nope.json",
        "unknown route": "/api/nope",
    }
    for case, path in paths.items():
        yield judge(SERVE, case, send(base, "GET", path), hidden)
    for method, path in (("DELETE", "/api/features"), ("PUT", f"/api/feature/{MODEL}/{SOURCE}/1"),
                         ("TRACE", "/"), ("PATCH", "/api/explanation/search-all"), ("BREW", "/api/features")):
        yield judge(SERVE, f"method {method}", send(base, method, path), hidden)
    yield judge(SERVE, "100 KB header", send(base, "GET", "/openapi.json", headers={"x-big": "a" * 100_000}), hidden)
    yield judge(SERVE, "graph upload without the token", post_json(base, "/api/graph/signed-put",
                                                                   {"filename": "g.json", "contentLength": 10}),
                hidden, if_ok=SECURITY)
    yield from upload_cases(base, hidden)
    yield from feature_upload_cases(base, hidden)
    for case, path, data in (("inference without a model", "/api/search-topk-by-token",
                              {"modelId": MODEL, "source": SOURCE, "text": "hello"}),
                             ("activation/new without a model", "/api/activation/new",
                              {"feature": {"modelId": MODEL, "source": SOURCE, "index": 1}, "customText": "hi"}),
                             ("search-all of an unknown set", "/api/search-all",
                              {"modelId": MODEL, "sourceSet": "nope", "text": "hello"}),
                             ("subgraph with 2 MB of ids", "/api/graph/subgraph/save",
                              {"modelId": MODEL, "slug": "g", "pinnedIds": ["x" * 200] * 10_000})):
        yield judge(SERVE, case, post_json(base, path, data, {"x-api-key": WRITE_TOKEN}), hidden)


def upload_cases(base: str, hidden: list[str]) -> Iterator[Outcome]:
    """Graph uploads with the token: a traversal file name, a body that is not JSON, a JSON list."""
    auth = {"x-api-key": WRITE_TOKEN}
    for case, filename, content in (("upload named ../../x.json, not JSON", "../../x.json", b"not json"),
                                    ("upload of a JSON list", "g.json", b"[1, 2, 3]"),
                                    ("upload of deep JSON", "g.json", b"[" * 50_000 + b"]" * 50_000)):
        answer = post_json(base, "/api/graph/signed-put", {"filename": filename, "contentLength": len(content)}, auth)
        if answer.status != 200:
            yield judge(SERVE, case, answer, hidden)
            continue
        put = json.loads(answer.body)
        key_path = "/" + put["url"].split("/", 3)[3]
        stored = send(base, "PUT", key_path, content, auth)
        if stored.status != 200:
            yield judge(SERVE, case, stored, hidden)
            continue
        yield judge(SERVE, case, post_json(base, "/api/graph/save-to-db", {"putRequestId": put["putRequestId"]},
                                           auth), hidden, if_ok=SECURITY)


def feature_upload_cases(base: str, hidden: list[str]) -> Iterator[Outcome]:
    """Neuronpedia's upload routes: without the token, bad shapes, and a gzip bomb on the graph PUT."""
    auth = {"x-api-key": WRITE_TOKEN}
    act = {"tokens": ["a", "b"], "values": [0.0, 1.0]}
    good = {"modelId": MODEL, "source": SOURCE, "features": [{"index": 7, "activations": [act]}]}
    yield judge(SERVE, "feature upload without the token", post_json(base, "/api/feature/upload-batch", good),
                hidden, if_ok=SECURITY)
    bad = {
        "upload: tokens and values of different lengths": {**good, "features": [
            {"index": 7, "activations": [{"tokens": ["a"], "values": [1.0, 2.0]}]}]},
        "upload: the same index twice": {**good, "features": [good["features"][0]] * 2},
        "upload: 129 features": {**good, "features": [{"index": i, "activations": [act]} for i in range(129)]},
        "upload: density 2": {**good, "features": [{"index": 7, "density": 2, "activations": [act]}]},
        "upload: into a source that is not there": {**good, "source": "99-nope"},
        "upload: model id with ../": {**good, "modelId": "../../etc"},
    }
    for case, body in bad.items():
        yield judge(SERVE, case, post_json(base, "/api/feature/upload-batch", body, auth), hidden)
    yield judge(SERVE, "new model named ../x", post_json(base, "/api/model/new", {"id": "../x", "layers": 2}, auth),
                hidden)
    yield judge(SERVE, "new source set of an unknown model",
                post_json(base, "/api/source-set/new", {"name": "x", "modelId": "nope"}, auth), hidden)
    answer = post_json(base, "/api/graph/signed-put", {"filename": "b.json", "contentLength": 1000}, auth)
    if answer.status == 200:
        bomb = gzip.compress(b" " * (300 * 1024 * 1024))
        key_path = "/" + json.loads(answer.body)["url"].split("/", 3)[3]
        yield judge(SERVE, "graph PUT of a 300 MB gzip bomb", send(base, "PUT", key_path, bomb,
                                                                  {"content-encoding": "gzip"}), hidden,
                    if_ok=SECURITY)


def sigterm_case(db: Path) -> Outcome:
    """SIGTERM while 16 clients keep 256-feature requests in flight: the server must be gone within 10 s."""
    body = json.dumps([{"modelId": MODEL, "layer": SOURCE, "index": i % 40} for i in range(256)]).encode()
    with running(["serve", "--db", str(db)], "/openapi.json") as (base, proc):
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                send(base, "POST", "/api/features", body, {"content-type": "application/json"}, timeout=120)

        threads = [threading.Thread(target=hammer, daemon=True) for _ in range(16)]
        for t in threads:
            t.start()
        time.sleep(3)
        start = time.time()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
            took = time.time() - start
        except subprocess.TimeoutExpired:
            took = None
        stop.set()
    if took is None:
        return Outcome(SERVE, "SIGTERM while busy", SERVER_ERROR, "still running 10 s after SIGTERM")
    return Outcome(SERVE, "SIGTERM while busy", ACCEPTED, f"stopped in {took:.1f} s")


def write_graphs(folder: Path) -> Path:
    """A graph, g.json, with script payloads in its labels, positions, layer names, prompt and supernodes."""
    def node(node_id: str, layer: str, pos: Any, clerp: str, kind: str = "cross layer transcoder") -> dict[str, Any]:
        return {"node_id": node_id, "feature": 1, "layer": layer, "ctx_idx": pos, "feature_type": kind,
                "jsNodeId": node_id, "clerp": clerp, "influence": 0.5, "activation": 1.0, "token_prob": 0.0,
                "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0}

    folder.mkdir(parents=True, exist_ok=True)
    nodes = [node("6_1_1", "6", XSS.replace("pwned", "pwned-ctx"), XSS.replace("pwned", "pwned-clerp")),
             node("6_2_2", XSS.replace("pwned", "pwned-layer"), 2, "plain"), node("E_5_0", "E", 0, "", "embedding")]
    graph = {"metadata": {"slug": "g", "scan": MODEL, "prompt": XSS.replace("pwned", "pwned-prompt"),
                          "prompt_tokens": ["a"], "schema_version": 1,
                          "feature_details": {"neuronpedia_source_set": SET}},
             "qParams": {"pinnedIds": [], "supernodes": [[XSS.replace("pwned", "pwned-sn"), "6_1_1"]]},
             "nodes": nodes, "links": [{"source": "E_5_0", "target": "6_1_1", "weight": 1.0}]}
    path = folder / "g.json"
    path.write_text(json.dumps(graph))
    return path


def trace_cases(base: str, graph: Path, hidden: list[str]) -> Iterator[Outcome]:
    """Hostile requests to `featuredb trace serve`: saves from elsewhere, bad save bodies, odd names."""
    page = send(base, "GET", "/index.html").body.decode()
    token = (re.search(r"const token = \"([^\"]*)\"", page) or [None, ""])[1]
    yield Outcome(TRACE, "the served page carries a save token", ACCEPTED if token else SECURITY,
                  "" if token else "no token in the page: the page cannot save, or saves need none")
    rebound = send(base, "GET", "/index.html", headers={"host": "attacker.example:80"}).body.decode()
    yield Outcome(TRACE, "page for a DNS-rebinding Host", SECURITY if token and token in rebound else ACCEPTED)
    own = {"origin": base, "sec-fetch-site": "same-origin", "x-featuredb-token": token,
           "content-type": "application/json"}
    before = graph.read_bytes()
    hostile = {
        "cross-site save, no token": {"origin": "http://attacker.example", "content-type": "text/plain"},
        "same-origin save, no token": {**own, "x-featuredb-token": ""},
        "save with a wrong token": {**own, "x-featuredb-token": "guess"},
        "save from another origin, with the token": {**own, "origin": "http://localhost:1"},
        "save marked cross-site, with the token": {**own, "sec-fetch-site": "cross-site"},
        "save via a rebinding Host, with the token": {**own, "host": "attacker.example"},
        "save as text/plain, with the token": {**own, "content-type": "text/plain"},
    }
    for case, headers in hostile.items():
        answer = send(base, "POST", "/save_graph/g", b'{"qParams": {"pinnedIds": "pwned"}}', headers)
        yield judge(TRACE, case, answer, hidden, if_ok=SECURITY)
    for case, body in (("save body not JSON", b"pinnedIds=pwned"), ("save body a JSON list", b"[1]"),
                       ("save qParams a string", b'{"qParams": "x"}'),
                       ("save body of 2 MB", b'{"qParams": {"a": "' + b"x" * 2_000_000 + b'"}}')):
        yield judge(TRACE, case, send(base, "POST", "/save_graph/g", body, own), hidden, if_ok=SECURITY)
    yield Outcome(TRACE, "graph file after the hostile saves", ACCEPTED if graph.read_bytes() == before else SECURITY,
                  "" if graph.read_bytes() == before else "a refused save changed the file")
    for name in ("..%2f..%2fetc%2fpasswd", "a%00b", "x" * 5000, "%C3%A9%E2%9C%93", "%C2%B2%C2%B3", "9" * 5000):
        for route in (f"/data/{name}.json", f"/features/{MODEL}/{name}.json", f"/features/{name}/1.json"):
            yield judge(TRACE, f"GET {route.split('/')[1]} named {name[:12]}", send(base, "GET", route), hidden)
        yield judge(TRACE, f"save named {name[:12]}", send(base, "POST", f"/save_graph/{name}",
                                                           b'{"qParams": {}}', own), hidden, if_ok=SECURITY)
    for path in ("/../../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/vendor/../../../../etc/passwd"):
        answer = send(base, "GET", path)
        leaked = b"root:" in answer.body
        yield Outcome(TRACE, f"static {path}", SECURITY, "served /etc/passwd") if leaked else judge(
            TRACE, f"static {path}", answer, hidden)
    yield judge(TRACE, "method DELETE on a graph", send(base, "DELETE", "/data/g.json"), hidden)
    answer = send(base, "POST", "/save_graph/g", b'{"qParams": {"pinnedIds": "6_1_1"}}', own)
    saved = answer.status == 200 and json.loads(graph.read_text()).get("qParams") == {"pinnedIds": "6_1_1"}
    yield Outcome(TRACE, "the page's own save", ACCEPTED if saved else DATA_LOSS, f"{answer.status}")
    yield xss_case(base)


def xss_case(base: str) -> Outcome:
    """The viewer's page for the payload graph, in headless Chromium: no injected element may exist."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        return Outcome(TRACE, "script payloads in the viewer", CLEAR_ERROR, "not run: Chromium is not installed")
    page = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                           "--virtual-time-budget=8000", f"{base}/index.html?slug=g"],
                          capture_output=True, text=True, timeout=120)
    injected = "<img" in page.stdout or "<title>pwned" in page.stdout
    return Outcome(TRACE, "script payloads in the viewer", SECURITY if injected else ACCEPTED,
                   "an injected element ran" if injected else "shown as text")


def load_case(base: str) -> Iterator[Outcome]:
    """LOAD_REQUESTS mixed requests at LOAD_CONCURRENCY; one outcome per 5xx or dropped connection (at most 20)."""
    feature = {"modelId": MODEL, "layer": SOURCE, "index": 1}
    mix = [("GET", f"/api/feature/{MODEL}/{SOURCE}/{{i}}", None),
           ("GET", f"/api/feature/{MODEL}/{SOURCE}/9{{i}}9", None),
           ("POST", "/api/features", json.dumps([feature] * 5).encode()),
           ("POST", "/api/explanation/search-all", b'{"query": "token"}'),
           ("POST", "/api/features", b'[{"modelId": "m", "layer": "s", "index": -1, "maxActsToReturn": -5}]')]

    def one(i: int) -> tuple[int, Answer]:
        method, path, body = mix[i % len(mix)]
        return i, send(base, method, path.replace("{i}", str(i % 40)), body, {"content-type": "application/json"})

    start = time.time()
    with ThreadPoolExecutor(LOAD_CONCURRENCY) as pool:
        answers = list(pool.map(one, range(LOAD_REQUESTS)))
    took = time.time() - start
    bad = [(i, a) for i, a in answers if a.status is None or a.status >= 500]
    for i, a in bad[:20]:
        yield Outcome(LOAD, f"request {i}", SERVER_ERROR, f"{a.status or a.error}"[:200])
    if not bad:
        yield Outcome(LOAD, f"{LOAD_REQUESTS} requests at concurrency {LOAD_CONCURRENCY}", ACCEPTED,
                      f"no 5xx, {LOAD_REQUESTS / took:.0f} requests/s")


def cases(work: Path) -> Iterator[Outcome]:
    """Every server case: hostile requests to both servers, SIGTERM while busy, and the load."""
    work.mkdir(parents=True, exist_ok=True)
    db = build_store(work)
    trace_db = work / "servers-trace-store.duckdb"
    shutil.copyfile(db, trace_db)  # the writable server holds its file; trace serve reads its own copy
    graph = write_graphs(work / "servers-graphs")
    hidden = hidden_paths(work, db.parent)
    with running(["serve", "--db", str(db), "--write-token", WRITE_TOKEN], "/openapi.json") as (base, _):
        yield from serve_cases(base, hidden)
        yield from load_case(base)
    with running(["trace", "serve", str(graph.parent), "--db", str(trace_db), "--frontend", str(VIEWER)],
                 "/data/graph-metadata.json") as (base, _):
        yield from trace_cases(base, graph, hidden)
    yield sigterm_case(trace_db)


if __name__ == "__main__":  # a quick look: python -m bench.fault_cases.servers WORK_DIR
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for outcome in cases(Path(sys.argv[1] if len(sys.argv) > 1 else tmp)):
            print(f"{outcome.kind:16} {outcome.area:12} {outcome.case[:50]:50} {outcome.detail[:80]}")
