"""A Neuronpedia-compatible HTTP API over a local store: same routes, same response shapes."""

from __future__ import annotations

import gzip
import threading
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from featuredb.errors import FeatureDBError, NotFoundError
from featuredb.explanation_search import search_explanations
from featuredb.feature_docs import FeatureDocs
from featuredb.identity import parse_index
from featuredb.search.inference import InferenceBackend
from featuredb.server.graph_routes import WriteDenied, graph_router
from featuredb.server.inference_routes import inference_router
from featuredb.store import FeatureStore

MAX_SEARCH_RESULTS = 20  # Neuronpedia's MAX_EXPLANATION_SEARCH_RESULTS
SEARCH_ACTS = 3  # activations attached to each search result's neuron, as on Neuronpedia


class FeatureRequest(BaseModel):
    """One entry of POST /api/features."""

    modelId: str
    layer: str
    index: int
    maxActsToReturn: int | None = None


class ExplanationSearch(BaseModel):
    """POST /api/explanation/search: features of some sources of one model."""

    modelId: str
    layers: list[str]
    query: str = Field(min_length=3)
    offset: int = 0


class ExplanationSearchModel(BaseModel):
    """POST /api/explanation/search-model."""

    modelId: str
    query: str = Field(min_length=3)
    offset: int = 0


class ExplanationSearchRelease(BaseModel):
    """POST /api/explanation/search-release."""

    releaseName: str
    query: str = Field(min_length=3)
    offset: int = 0


class ExplanationSearchAll(BaseModel):
    """POST /api/explanation/search-all."""

    query: str = Field(min_length=3)
    offset: int = 0


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "message": message}, status_code=status)


DB_ENV_FOR_WORKERS = "FEATUREDB_SERVE_DB"


def app_from_env() -> FastAPI:
    """App factory for `featuredb serve --workers N` (each worker process opens the store read-only)."""
    import os

    return create_app(os.environ[DB_ENV_FOR_WORKERS])


def create_app(db: str, *, write_token: str | None = None, backend: InferenceBackend | None = None) -> FastAPI:
    """The app over the store at `db`: read-only, unless `write_token` is given (writes must present it)."""
    store = FeatureStore(db, read_only=not write_token)
    local = threading.local()

    def view() -> FeatureStore:
        if getattr(local, "store", None) is None:
            local.store = store.thread_view()
        return local.store

    def docs() -> FeatureDocs:
        if getattr(local, "docs", None) is None:
            local.docs = FeatureDocs(view())
        return local.docs

    app = FastAPI(title="featuredb (Neuronpedia-compatible API)", version="1.0",
                  description="Neuronpedia's API routes over a local featuredb store.")
    app.state.store = store
    app.state.write_token = write_token

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", []) if p != "body")
        return _error(400, f"{where}: {first.get('msg')}" if where else str(first.get("msg")))

    @app.exception_handler(WriteDenied)
    async def denied(_request: Request, exc: WriteDenied) -> JSONResponse:
        return _error(exc.status, str(exc))

    @app.exception_handler(NotFoundError)
    async def not_found(_request: Request, exc: NotFoundError) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(FeatureDBError)
    async def bad(_request: Request, exc: FeatureDBError) -> JSONResponse:
        return _error(400, str(exc))

    def feature_json(model: str, layer: str, index: int | str, max_acts: int | None = None) -> dict[str, Any]:
        return view().get_feature(model, layer, index, max_acts=max_acts).model_dump(mode="json")

    def json_response(body: str) -> Response:
        # pydantic serialises; FastAPI's generic encoder would walk every token of every example again
        return Response(content=body, media_type="application/json")

    @app.get("/api/feature/{modelId}/{layer}/{index}", tags=["Features"], summary="Get Feature")
    def get_feature(modelId: str, layer: str, index: str, request: Request) -> Response:
        """One feature: its columns, activations (by maxValue, descending) and explanations."""
        try:
            idx = parse_index(index)
        except ValueError as e:
            raise FeatureDBError(str(e)) from None
        doc = docs().gzipped(modelId, layer, idx)  # pre-serialised by `featuredb reindex --feature-docs`
        if doc is not None:
            if "gzip" in request.headers.get("accept-encoding", ""):
                return Response(doc, media_type="application/json",
                                headers={"content-encoding": "gzip", "vary": "accept-encoding"})
            return Response(gzip.decompress(doc), media_type="application/json", headers={"vary": "accept-encoding"})
        return json_response(view().get_feature(modelId, layer, idx).model_dump_json())

    @app.post("/api/features", tags=["Features"], summary="Get Features")
    def get_features(body: list[FeatureRequest]) -> Response:
        """Many features at once, in request order; features not in the store are left out."""
        out = []
        for f in body:
            try:
                out.append(view().get_feature(f.modelId, f.layer, f.index, max_acts=f.maxActsToReturn)
                           .model_dump_json())
            except NotFoundError:
                continue
        return json_response("[" + ",".join(out) + "]")

    def search_response(request: dict[str, Any], rows: list[dict[str, Any]], offset: int) -> dict[str, Any]:
        for r in rows:
            try:
                r["neuron"] = feature_json(r["modelId"], r["layer"], r["index"], SEARCH_ACTS)
            except NotFoundError:
                r["neuron"] = None
        has_more = len(rows) == MAX_SEARCH_RESULTS
        resp: dict[str, Any] = {"request": request, "results": rows, "resultsCount": len(rows), "hasMore": has_more}
        if has_more:
            resp["nextOffset"] = offset + len(rows)
        return resp

    @app.post("/api/explanation/search", tags=["Explanations"], summary="Search by SAEs/Sources")
    def explanation_search(body: ExplanationSearch) -> dict[str, Any]:
        """Explanations of features in some sources of a model matching the query, 20 at a time."""
        rows = search_explanations(view(), body.query, model=body.modelId, sources=body.layers, offset=body.offset,
                                   limit=MAX_SEARCH_RESULTS)
        return search_response(body.model_dump(), rows, body.offset)

    @app.post("/api/explanation/search-model", tags=["Explanations"], summary="Search by Model")
    def explanation_search_model(body: ExplanationSearchModel) -> dict[str, Any]:
        """Explanations of any feature of a model matching the query."""
        rows = search_explanations(view(), body.query, model=body.modelId, offset=body.offset,
                                   limit=MAX_SEARCH_RESULTS)
        return search_response(body.model_dump(), rows, body.offset)

    @app.post("/api/explanation/search-release", tags=["Explanations"], summary="Search by Release")
    def explanation_search_release(body: ExplanationSearchRelease) -> dict[str, Any]:
        """Explanations of features in a release's source sets matching the query."""
        rows = search_explanations(view(), body.query, release=body.releaseName, offset=body.offset,
                                   limit=MAX_SEARCH_RESULTS)
        return search_response(body.model_dump(), rows, body.offset)

    @app.post("/api/explanation/search-all", tags=["Explanations"], summary="Search All Features")
    def explanation_search_all(body: ExplanationSearchAll) -> dict[str, Any]:
        """Explanations of any feature in the store matching the query."""
        rows = search_explanations(view(), body.query, offset=body.offset, limit=MAX_SEARCH_RESULTS)
        return search_response(body.model_dump(), rows, body.offset)

    app.include_router(inference_router(view, store, backend))
    app.include_router(graph_router(view, write_token))
    return app
