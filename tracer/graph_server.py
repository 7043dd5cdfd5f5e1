"""`trace serve`: labelled graphs in a folder, circuit-tracer's frontend, and feature files built from the store.

The routes are circuit-tracer's local server's: /data/graph-metadata.json, /data/{slug}.json (also
/graph_data/), /features/{scan}/{cantor}.json and POST /save_graph/{slug}; the frontend is the offline
copy of circuit-tracer's that `trace frontend` builds, else circuit-tracer's installed assets, else
featuredb's small viewer.
"""

from __future__ import annotations

import json
import threading
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from featuredb.errors import NotFoundError
from featuredb.formats.circuit_tracer_export import feature_file
from featuredb.formats.graph_json import graph_model, graph_source_set
from featuredb.graph_identity import resolve_model, resolve_source_set
from featuredb.identity import cantor_unpair, source_id
from featuredb.schema import feature_key
from featuredb.store import FeatureStore
from tracer.offline_frontend import offline_frontend

VIEWER = Path(__file__).resolve().parent / "viewer"
METADATA_KEYS = ("slug", "scan", "prompt_tokens", "prompt", "title_prefix", "node_threshold", "schema_version")


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
    site = offline_frontend()
    if site is not None:
        return site, f"circuit-tracer's frontend, offline copy in {site}"
    installed = circuit_tracer_frontend()
    if installed is not None:
        return installed, "circuit-tracer's frontend (installed; its libraries load from CDNs)"
    return VIEWER, "featuredb's viewer (run `featuredb trace frontend` for circuit-tracer's)"


_CACHE: dict[Path, tuple[float, dict[str, Any], str, str | None]] = {}
_CACHE_LOCK = threading.Lock()


def _graphs(folder: Path) -> dict[str, tuple[Path, dict[str, Any], str, str | None]]:
    """slug -> (file, metadata, model, source set) for each graph JSON in the folder; parsed once per change."""
    out = {}
    for p in sorted(folder.glob("*.json")):
        if p.name == "graph-metadata.json":
            continue
        mtime = p.stat().st_mtime
        with _CACHE_LOCK:
            hit = _CACHE.get(p)
        if hit is None or hit[0] != mtime:
            try:
                g = json.loads(p.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if not (isinstance(g, dict) and isinstance(g.get("metadata"), dict) and "nodes" in g):
                continue
            hit = (mtime, g["metadata"], graph_model(g), graph_source_set(g))
            with _CACHE_LOCK:
                _CACHE[p] = hit
        out[p.stem] = (p, hit[1], hit[2], hit[3])
    return out


def create_graph_app(folder: str | Path, db: str | None, *, frontend: Path | None = None) -> FastAPI:
    """The app over a folder of graphs and (for feature files) a store."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotFoundError(f"{folder}: no such folder of graphs")
    store = FeatureStore(db, read_only=True) if db else None
    local = threading.local()
    app = FastAPI(title="featuredb trace serve")

    def view() -> FeatureStore:
        if store is None:
            raise NotFoundError("no store: start with --db to serve feature files")
        if getattr(local, "store", None) is None:
            local.store = store.thread_view()
        return local.store

    def scan_identity(scan: str) -> tuple[str, str | None] | None:
        """(model, source set) of the graphs named `scan`, resolved against the store when there is one."""
        for _, meta, model, sset in _graphs(folder).values():
            if str(meta.get("scan")) == scan:
                if store is not None:
                    model = resolve_model(view().con, {"metadata": meta})
                    sset = resolve_source_set(view().con, {"metadata": meta}, model)
                return model, sset
        return None

    @app.exception_handler(NotFoundError)
    async def not_found(_request: Request, exc: NotFoundError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=404)

    @app.get("/data/graph-metadata.json")
    def graph_metadata() -> dict[str, Any]:
        """Every graph in the folder, as circuit-tracer's graph-metadata.json lists them."""
        return {"graphs": [{k: meta[k] for k in METADATA_KEYS if k in meta} | {"slug": slug}
                           for slug, (_, meta, _, _) in _graphs(folder).items()]}

    def graph_file(name: str) -> Response:
        slug = name[:-5] if name.endswith(".json") else name
        graphs = _graphs(folder)
        if slug not in graphs:
            raise NotFoundError(f"no graph {slug} in {folder}")
        return FileResponse(graphs[slug][0], media_type="application/json")

    app.get("/data/{name}")(graph_file)
    app.get("/graph_data/{name}")(graph_file)

    @app.get("/features/{scan:path}/{name}")
    def feature(scan: str, name: str) -> Response:
        """A circuit-tracer feature file, built from the store for the graph's model and source set."""
        identity = scan_identity(scan)
        if identity is None or not name.endswith(".json") or not name[:-5].isdigit():
            raise NotFoundError(f"no feature file {scan}/{name}")
        model, source_set = identity
        layer, index = cantor_unpair(int(name[:-5]))
        source = source_id(layer, source_set or "")
        con = view().con
        cur = con.execute("SELECT * FROM features WHERE feature_key = ?", [feature_key(model, source, index)])
        row = cur.fetchone()
        if row is None:
            raise NotFoundError(f"feature {model}/{source}/{index} is not in the store")
        feat = dict(zip([d[0] for d in cur.description], row))
        cur = con.execute('SELECT "index", "tokens", "values", "maxValue", "minValue", "maxValueTokenIndex", '
                          '"binMin", "binMax", "binContains" FROM activations WHERE feature_key = ?',
                          [feature_key(model, source, index)])
        acts = [dict(zip([d[0] for d in cur.description], r)) for r in cur.fetchall()]
        return Response(json.dumps(feature_file(model, source, feat, acts)), media_type="application/json")

    @app.post("/save_graph/{slug}")
    async def save_graph(slug: str, request: Request) -> dict[str, Any]:
        """Save the frontend's qParams (pinned nodes, supernodes) into the graph file, as circuit-tracer does."""
        graphs = _graphs(folder)
        if slug not in graphs:
            raise NotFoundError(f"no graph {slug} in {folder}")
        body = json.loads(await request.body())
        path = graphs[slug][0]
        graph = json.loads(path.read_text(encoding="utf-8"))
        graph["qParams"] = body["qParams"]
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(graph), encoding="utf-8")
        tmp.replace(path)
        return {"success": True}

    app.mount("/", StaticFiles(directory=str(frontend or default_frontend()[0]), html=True), name="frontend")
    return app
