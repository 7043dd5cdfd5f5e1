"""`trace serve`: labelled graphs in a folder, circuit-tracer's frontend, and feature files built from the store.

The routes are circuit-tracer's local server's: /data/graph-metadata.json, /data/{slug}.json (also
/graph_data/), /evidence/{slug}.json (the supernode evidence beside a graph), /features/{scan}/{cantor}.json
and POST /save_graph/{slug}; the frontend is the offline
copy of circuit-tracer's that `trace frontend` builds, else circuit-tracer's installed assets, else
featuredb's small viewer.

Saving rewrites a file, so POST /save_graph/{slug} takes only same-origin requests (Host a loopback name
or an IP address, Origin and Sec-Fetch-Site, when sent, naming this server) that carry the per-server
token the served page sends (`x-featuredb-token`, added by a script put into the page), with a JSON body
of at most MAX_SAVE_BYTES holding a `qParams` object. The page is served with `frame-ancestors 'none'`.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import re
import secrets
import threading
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.types import Scope

from featuredb.atomic_write import write_json_atomically
from featuredb.errors import BadInputError, FeatureDBError, NotFoundError
from featuredb.formats.circuit_tracer_export import feature_file
from featuredb.formats.graph_json import graph_model, graph_source_set
from featuredb.store.graph_identity import resolve_model, resolve_source_set
from featuredb.store.graph_usage import GraphUse
from featuredb.identity import cantor_unpair, source_id
from featuredb.server.errors import hidden_paths, install_error_handlers
from featuredb.server.limits import MAX_NAME_CHARS, MAX_SAVE_BYTES, BodyLimit
from featuredb.server.web_routes import web_router
from featuredb.store.feature_store import FeatureStore
from featuredb.store.reads import activation_rows, feature_row
from tracer.evidence_page import evidence_page
from tracer.graph_feature_links import FolderGraphs, store_identity
from tracer.offline_frontend import CHECKOUT_DIR, ESCAPED_FILES, escaped_asset, offline_frontend

VIEWER = Path(__file__).resolve().parent / "viewer"
METADATA_KEYS = ("slug", "scan", "prompt_tokens", "prompt", "title_prefix", "node_threshold", "schema_version")
TOKEN_HEADER = "x-featuredb-token"
FEATURE_FILE_ACTIVATION_COLUMNS = ["index", "tokens", "values", "maxValue", "minValue", "maxValueTokenIndex",
                                   "binMin", "binMax", "binContains"]  # what a feature file shows of each example
FEATURE_FILE = re.compile(r"[0-9]{1,30}\.json", re.ASCII)
PAGE_HEADERS = {"cache-control": "no-store", "content-security-policy": "frame-ancestors 'none'",
                "x-frame-options": "DENY", "x-content-type-options": "nosniff"}
EVIDENCE_CSP = {"content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"}
# Put into the served page: the page's own save requests (circuit-tracer's fetch of /save_graph/...) carry the token.
SAVE_TOKEN_SCRIPT = """<script>
(() => {
  const token = %s, send = window.fetch.bind(window);
  window.fetch = (input, init) => {
    const url = new URL(input instanceof Request ? input.url : String(input), location.href);
    if (token && url.origin === location.origin && url.pathname.startsWith('/save_graph/')) {
      init = {...(init || {}), headers: new Headers((init && init.headers) || {})};
      init.headers.set('%s', token);
    }
    return send(input, init);
  };
  // A corner link to the graph's supernode evidence page, when trace label wrote one.
  let shown = null;
  const check = () => {
    const slug = new URLSearchParams(location.search).get('slug');
    if (slug === shown) return;
    shown = slug;
    document.getElementById('featuredb-evidence')?.remove();
    if (!slug) return;
    send('/evidence/' + encodeURIComponent(slug) + '.json').then((r) => {
      if (!r.ok || shown !== slug || !document.body) return;
      const a = document.createElement('a');
      a.id = 'featuredb-evidence';
      a.href = '/evidence/' + encodeURIComponent(slug);
      a.target = '_blank';
      a.textContent = 'supernode evidence';
      a.style.cssText = 'position:fixed;right:12px;bottom:12px;z-index:9999;padding:4px 8px;background:#fff;'
        + 'border:1px solid #999;border-radius:4px;font:13px system-ui,sans-serif;color:#1a4fb4';
      document.body.appendChild(a);
    }).catch(() => {});
  };
  window.addEventListener('load', check);
  setInterval(check, 2000);
})();
</script>
"""


class SaveRefused(FeatureDBError):
    """A save from another origin, a foreign Host, or without the page's token (403), or not JSON (415)."""

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.status = status


def trusted_host(host: str) -> bool:
    """True for a Host header naming localhost or an IP address (a DNS-rebinding page has another name)."""
    try:
        name = urlsplit("//" + host).hostname or ""
    except ValueError:
        return False
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def check_same_origin(request: Request, token: str) -> None:
    """Refuse a save that is not from this server's own page (SaveRefused)."""
    host = request.headers.get("host", "")
    if not trusted_host(host):
        raise SaveRefused("saving needs the server's address (localhost or an IP) as Host")
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{host}":
        raise SaveRefused("cross-origin save refused")
    site = request.headers.get("sec-fetch-site")
    if site is not None and site != "same-origin":
        raise SaveRefused("cross-site save refused")
    if not hmac.compare_digest(request.headers.get(TOKEN_HEADER, "").encode(), token.encode()):
        raise SaveRefused(f"missing or wrong {TOKEN_HEADER} (saves come from the page this server serves)")
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise SaveRefused("a save body must be application/json", 415)


def check_name(name: str, what: str) -> str:
    """`name` when it can name a graph or scan (short, printable); otherwise NotFoundError without echoing it."""
    if not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise NotFoundError(f"no such {what}")
    return name


def page_with_token(page: str, token: str) -> str:
    """The HTML page with SAVE_TOKEN_SCRIPT before its first script (an empty token: the page cannot save)."""
    script = SAVE_TOKEN_SCRIPT % (json.dumps(token), TOKEN_HEADER)
    at = page.find("<script")
    return page + script if at < 0 else page[:at] + script + page[at:]


class PageFiles(StaticFiles):
    """The frontend's files; index pages carry the save token (for a trusted Host), circuit-tracer's HTML escaped."""

    def __init__(self, directory: Path, token: str) -> None:
        super().__init__(directory=str(directory), html=True)
        self.folder, self.token = directory, token

    async def get_response(self, path: str, scope: Scope) -> Response:
        """A file's answer; an odd path (too long, NUL, a loop) is a 404, never a 500."""
        rel = path.replace(os.sep, "/")
        try:
            if scope["method"] in ("GET", "HEAD") and (rel in (".", "index.html") or rel in ESCAPED_FILES):
                return self.changed(rel, scope)
            return await super().get_response(path, scope)
        except (OSError, ValueError, UnicodeDecodeError):
            raise HTTPException(404) from None

    def changed(self, rel: str, scope: Scope) -> Response:
        """The index page with the token (for a trusted Host), or one of circuit-tracer's files escaped."""
        if rel in ESCAPED_FILES:
            text = (self.folder / rel).read_text(encoding="utf-8")
            return Response(escaped_asset(text, rel), media_type="text/javascript")
        host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
        page = (self.folder / "index.html").read_text(encoding="utf-8")
        body = page_with_token(page, self.token if trusted_host(host) else "")
        return Response(body, media_type="text/html", headers=PAGE_HEADERS)


def circuit_tracer_frontend() -> Path | None:
    """circuit-tracer's frontend assets folder, when circuit-tracer is installed."""
    try:
        path = Path(str(resources.files("circuit_tracer") / "frontend" / "assets"))
    except (ModuleNotFoundError, TypeError):
        return None
    return path if (path / "index.html").exists() else None


def default_frontend() -> tuple[Path, str]:
    """The page to serve and its name: the offline copy `trace frontend` built, else circuit-tracer's
    installed assets (which load their libraries from CDNs), else featuredb's viewer."""
    site = offline_frontend() or offline_frontend(CHECKOUT_DIR)  # the working directory's, else the checkout's
    if site is not None:
        return site, f"circuit-tracer's frontend, offline copy in {site}"
    installed = circuit_tracer_frontend()
    if installed is not None:
        return installed, ("circuit-tracer's frontend (installed; its libraries load from CDNs, so offline the page "
                           "stays blank: run `featuredb trace frontend` once)")
    return VIEWER, "featuredb's viewer (run `featuredb trace frontend` for circuit-tracer's)"


class GraphFolderIndex:
    """slug -> (file, metadata, model, source set) of each graph JSON in one folder, parsed once per change;
    one per app, so two servers (or tests) never share what they have read."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._parsed: dict[Path, tuple[float, dict[str, Any], str, str | None]] = {}
        self._lock = threading.Lock()

    def graphs(self) -> dict[str, tuple[Path, dict[str, Any], str, str | None]]:
        """slug -> (file, metadata, model, source set) for each graph JSON in the folder now."""
        out = {}
        for p in sorted(self.folder.glob("*.json")):
            if p.name == "graph-metadata.json":
                continue
            mtime = p.stat().st_mtime
            with self._lock:
                hit = self._parsed.get(p)
            if hit is None or hit[0] != mtime:
                try:
                    g = json.loads(p.read_text(encoding="utf-8"))
                except (json.JSONDecodeError, UnicodeDecodeError):
                    continue
                if not (isinstance(g, dict) and isinstance(g.get("metadata"), dict) and "nodes" in g):
                    continue
                hit = (mtime, g["metadata"], graph_model(g), graph_source_set(g))
                with self._lock:
                    self._parsed[p] = hit
            out[p.stem] = (p, hit[1], hit[2], hit[3])
        return out


def create_graph_app(folder: str | Path, db: str | None, *, frontend: Path | None = None) -> FastAPI:
    """The app over a folder of graphs and (for feature files) a store."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotFoundError(f"{folder}: no such folder of graphs")
    store = FeatureStore(db, read_only=True) if db else None
    local = threading.local()
    save_lock = threading.Lock()
    token = secrets.token_urlsafe(24)
    app = FastAPI(title="featuredb trace serve")
    app.state.save_token = token
    hidden = hidden_paths(the_graph_folder=folder, the_store=db)
    install_error_handlers(app, hidden)
    app.add_middleware(BodyLimit, limit_for=lambda _path: MAX_SAVE_BYTES)
    graph_index = GraphFolderIndex(folder)

    def view() -> FeatureStore:
        if store is None:
            raise NotFoundError("no store: start with --db to serve feature files")
        if getattr(local, "store", None) is None:
            local.store = store.thread_view()
        return local.store

    def scan_identity(scan: str) -> tuple[str, str | None] | None:
        """(model, source set) of the graphs named `scan`, resolved against the store when there is one."""
        for _, meta, model, sset in graph_index.graphs().values():
            if str(meta.get("scan")) == scan:
                if store is not None:
                    model = resolve_model(view().con, {"metadata": meta})
                    sset = resolve_source_set(view().con, {"metadata": meta}, model)
                return model, sset
        return None

    @app.get("/data/graph-metadata.json")
    def graph_metadata() -> dict[str, Any]:
        """Every graph in the folder, as circuit-tracer's graph-metadata.json lists them."""
        return {"graphs": [{k: meta[k] for k in METADATA_KEYS if k in meta} | {"slug": slug}
                           for slug, (_, meta, _, _) in graph_index.graphs().items()]}

    linked = FolderGraphs(store_identity(view)) if store is not None else None

    def graph_file(name: str) -> Response:
        slug = check_name(name[:-5] if name.endswith(".json") else name, "graph")
        graphs = graph_index.graphs()
        if slug not in graphs:
            raise NotFoundError(f"no graph {slug} in the graph folder")
        if linked is not None:  # each feature node's title links to its feature page
            return Response(linked.linked_bytes(graphs[slug][0]), media_type="application/json")
        return FileResponse(graphs[slug][0], media_type="application/json")

    @app.get("/evidence/{name}")
    def evidence_file(name: str) -> Response:
        """A graph's supernode evidence (GRAPH.evidence.json, written by trace label with the transcoders):
        /evidence/SLUG.json the file, /evidence/SLUG the page that draws it."""
        as_json = name.endswith(".json")
        slug = check_name(name[:-5] if as_json else name, "graph")
        graphs = graph_index.graphs()
        path = graphs[slug][0].with_name(f"{graphs[slug][0].stem}.evidence.json") if slug in graphs else None
        if path is None or not path.is_file():
            raise NotFoundError(f"no supernode evidence for graph {slug} (trace label computes it with the "
                                "transcoders at hand)")
        if as_json:
            return FileResponse(path, media_type="application/json")
        try:
            evidence = json.loads(path.read_text(encoding="utf-8"))
            page = evidence_page(slug, evidence if isinstance(evidence, dict) else {})
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError, AttributeError):
            raise BadInputError(f"{path.name}: not a supernode evidence file") from None
        return Response(page, media_type="text/html", headers=PAGE_HEADERS | EVIDENCE_CSP)

    app.get("/data/{name}")(graph_file)
    app.get("/graph_data/{name}")(graph_file)

    @app.get("/features/{scan:path}/{name}")
    def feature(scan: str, name: str) -> Response:
        """A circuit-tracer feature file, built from the store for the graph's model and source set."""
        identity = scan_identity(check_name(scan, "scan"))
        if identity is None or not FEATURE_FILE.fullmatch(name):
            raise NotFoundError(f"no feature file {scan}/{check_name(name, 'feature file')}")
        model, source_set = identity
        layer, index = cantor_unpair(int(name[:-5]))
        source = source_id(layer, source_set or "")
        feat = feature_row(view(), model, source, index)
        if feat is None:
            raise NotFoundError(f"feature {model}/{source}/{index} is not in the store")
        acts = activation_rows(view(), model, source, index, FEATURE_FILE_ACTIVATION_COLUMNS)
        return Response(json.dumps(feature_file(model, source, feat, acts)), media_type="application/json")

    @app.post("/save_graph/{slug}")
    async def save_graph(slug: str, request: Request) -> dict[str, Any]:
        """Save the frontend's qParams (pinned nodes, supernodes) into the graph file, as circuit-tracer does."""
        check_same_origin(request, token)
        check_name(slug, "graph")
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise BadInputError("the save body is not JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("qParams"), dict):
            raise BadInputError("the save body must be a JSON object with a qParams object")
        graphs = graph_index.graphs()
        if slug not in graphs:
            raise NotFoundError(f"no graph {slug} in the graph folder")
        write_qparams(graphs[slug][0], body["qParams"], save_lock)
        return {"success": True}

    if linked is not None:  # feature pages (/{model}/{source}/{index}, /search), listing the folder's graphs
        def folder_uses(_store: FeatureStore, model: str, source: str, index: int) -> list[GraphUse]:
            return linked.uses({slug: g[0] for slug, g in graph_index.graphs().items()}, model, source, index)
        app.include_router(web_router(view, folder_uses, site=False, hidden=hidden))
    app.mount("/", PageFiles(frontend or default_frontend()[0], token), name="frontend")
    return app


def write_qparams(path: Path, qparams: dict[str, Any], lock: threading.Lock) -> None:
    """Replace the graph file's qParams, atomically (a temporary file renamed over it) and keeping its mode."""
    with lock:
        try:
            graph = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise BadInputError(f"{path.name}: not a graph (malformed JSON)") from None
        if not isinstance(graph, dict):
            raise BadInputError(f"{path.name}: not a graph (a JSON object)")
        graph["qParams"] = qparams
        write_json_atomically(path, graph)  # NaN in qParams: a FeatureDBError (400), the file untouched
