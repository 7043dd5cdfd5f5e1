"""A Neuronpedia-compatible HTTP API over a local store: same routes, same response shapes."""

from __future__ import annotations

import gzip
import threading
from typing import Annotated, Any

from fastapi import FastAPI, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, Field

from featuredb.errors import FeatureDBError, NotFoundError
from featuredb.search.explanation_search import search_explanations
from featuredb.store.feature_docs import FeatureDocs
from featuredb.store.graph_usage import StoreGraphUses
from featuredb.identity import parse_index
from featuredb.models import Feature
from featuredb.search.inference import InferenceBackend
from featuredb.server.errors import hidden_paths, install_error_handlers
from featuredb.server.fields import Index, Name, int_in
from featuredb.server.graph_routes import UPLOAD_PREFIX, graph_router
from featuredb.server.inference_routes import LazyBackend, inference_router
from featuredb.server.limits import (MAX_ACTS_TO_RETURN, MAX_BODY_BYTES, MAX_FEATURES_PER_REQUEST, MAX_GRAPH_BYTES,
                                     MAX_INDEX, MAX_NAME_CHARS, MAX_OFFSET, MAX_QUERY_CHARS, MAX_SOURCES, BodyLimit,
                                     openapi_error_responses)
from featuredb.server.page_layout import path_part
from featuredb.server.upload_routes import upload_router
from featuredb.server.web_routes import web_router
from featuredb.store.feature_store import FeatureStore

MAX_SEARCH_RESULTS = 20  # Neuronpedia's MAX_EXPLANATION_SEARCH_RESULTS
SEARCH_ACTS = 3  # activations attached to each search result's neuron, as on Neuronpedia
CHUNK = 32  # features of POST /api/features looked up between checks that the client is still there

Query = Annotated[str, Field(min_length=3, max_length=MAX_QUERY_CHARS)]
Offset = int_in(0, MAX_OFFSET)


class FeatureRequest(BaseModel):
    """One entry of POST /api/features."""

    modelId: Name
    layer: Name
    index: Index
    maxActsToReturn: int_in(0, MAX_ACTS_TO_RETURN) | None = None  # type: ignore[valid-type]


class ExplanationSearch(BaseModel):
    """POST /api/explanation/search: features of some sources of one model."""

    modelId: Name
    layers: list[Name] = Field(max_length=MAX_SOURCES)
    query: Query
    offset: Offset = 0


class ExplanationSearchModel(BaseModel):
    """POST /api/explanation/search-model."""

    modelId: Name
    query: Query
    offset: Offset = 0


class ExplanationSearchRelease(BaseModel):
    """POST /api/explanation/search-release."""

    releaseName: Name
    query: Query
    offset: Offset = 0


class ExplanationSearchAll(BaseModel):
    """POST /api/explanation/search-all."""

    query: Query
    offset: Offset = 0


class SearchResults(BaseModel):
    """The answer of the explanation searches: explanation rows, each with its feature as `neuron`."""

    request: dict[str, Any]
    results: list[dict[str, Any]]
    resultsCount: int
    hasMore: bool
    nextOffset: int | None = None


def body_limit(path: str) -> int:
    """The largest body a route takes: graph files on the upload route, 1 MiB anywhere else."""
    return MAX_GRAPH_BYTES if path.startswith(UPLOAD_PREFIX) else MAX_BODY_BYTES


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
                  description="Neuronpedia's API routes over a local featuredb store. Limits: see the README.")
    app.state.store = store
    app.state.write_token = write_token
    hidden = hidden_paths(the_store=db)
    install_error_handlers(app, hidden)
    app.add_middleware(BodyLimit, limit_for=body_limit)

    def feature_json(model: str, layer: str, index: int | str, max_acts: int | None = None) -> dict[str, Any]:
        return view().get_feature(model, layer, index, max_acts=max_acts).model_dump(mode="json")

    def json_response(body: str) -> Response:
        # pydantic serialises; FastAPI's generic encoder would walk every token of every example again
        return Response(content=body, media_type="application/json")

    @app.get("/api/feature/{modelId}/{layer}/{index}", tags=["Features"], summary="Get Feature",
             responses={200: {"model": Feature}})
    def get_feature(modelId: Annotated[str, Path(max_length=MAX_NAME_CHARS)],
                    layer: Annotated[str, Path(max_length=MAX_NAME_CHARS)],
                    index: Annotated[str, Path(pattern=r"^-?[0-9]{1,19}$")], request: Request) -> Response:
        """One feature: its columns, activations (by maxValue, descending) and explanations."""
        try:
            idx = parse_index(index)
        except ValueError as e:
            raise FeatureDBError(str(e)) from None
        if not 0 <= idx <= MAX_INDEX:
            raise NotFoundError(f"feature {modelId}/{layer}/{idx} is not in the store")
        doc = docs().gzipped(modelId, layer, idx)  # pre-serialised by `featuredb reindex --feature-docs`
        if doc is not None:
            if "gzip" in request.headers.get("accept-encoding", ""):
                return Response(doc, media_type="application/json",
                                headers={"content-encoding": "gzip", "vary": "accept-encoding"})
            return Response(gzip.decompress(doc), media_type="application/json", headers={"vary": "accept-encoding"})
        return json_response(view().get_feature(modelId, layer, idx).model_dump_json())

    def features_json(batch: list[FeatureRequest]) -> list[str]:
        out = []
        for f in batch:
            try:
                out.append(view().get_feature(f.modelId, f.layer, f.index, max_acts=f.maxActsToReturn)
                           .model_dump_json())
            except NotFoundError:
                continue
        return out

    @app.post("/api/features", tags=["Features"], summary="Get Features", responses={200: {"model": list[Feature]}})
    async def get_features(body: Annotated[list[FeatureRequest], Field(max_length=MAX_FEATURES_PER_REQUEST)],
                           request: Request) -> Response:
        """Many features at once, in request order; features not in the store are left out."""
        out: list[str] = []
        for start in range(0, len(body), CHUNK):
            if start and await request.is_disconnected():
                return Response(status_code=499)  # nobody is listening: stop working
            out += await run_in_threadpool(features_json, body[start:start + CHUNK])
        return json_response("[" + ",".join(out) + "]")

    def explanation_results(body: Any, **scope: Any) -> dict[str, Any]:
        """One page of search_explanations for the request's query in `scope`, each row with its neuron."""
        offset = body.offset
        rows = search_explanations(view(), body.query, offset=offset, limit=MAX_SEARCH_RESULTS, **scope)
        for r in rows:
            try:
                r["neuron"] = feature_json(r["modelId"], r["layer"], r["index"], SEARCH_ACTS)
            except NotFoundError:
                r["neuron"] = None
        has_more = len(rows) == MAX_SEARCH_RESULTS
        resp: dict[str, Any] = {"request": body.model_dump(), "results": rows, "resultsCount": len(rows),
                                "hasMore": has_more}
        if has_more:
            resp["nextOffset"] = offset + len(rows)
        return resp

    @app.post("/api/explanation/search", tags=["Explanations"], summary="Search by SAEs/Sources",
              response_model=SearchResults, response_model_exclude_none=True)
    def explanation_search(body: ExplanationSearch) -> dict[str, Any]:
        """Explanations of features in some sources of a model matching the query, 20 at a time."""
        return explanation_results(body, model=body.modelId, sources=body.layers)

    @app.post("/api/explanation/search-model", tags=["Explanations"], summary="Search by Model",
              response_model=SearchResults, response_model_exclude_none=True)
    def explanation_search_model(body: ExplanationSearchModel) -> dict[str, Any]:
        """Explanations of any feature of a model matching the query."""
        return explanation_results(body, model=body.modelId)

    @app.post("/api/explanation/search-release", tags=["Explanations"], summary="Search by Release",
              response_model=SearchResults, response_model_exclude_none=True)
    def explanation_search_release(body: ExplanationSearchRelease) -> dict[str, Any]:
        """Explanations of features in a release's source sets matching the query."""
        return explanation_results(body, release=body.releaseName)

    @app.post("/api/explanation/search-all", tags=["Explanations"], summary="Search All Features",
              response_model=SearchResults, response_model_exclude_none=True)
    def explanation_search_all(body: ExplanationSearchAll) -> dict[str, Any]:
        """Explanations of any feature in the store matching the query."""
        return explanation_results(body)

    runner = LazyBackend(store, backend)
    app.include_router(inference_router(view, runner))
    app.include_router(graph_router(view, write_token))
    app.include_router(upload_router(view, write_token))
    graph_uses = StoreGraphUses(lambda model, slug: f"/graphs/{path_part(model)}/{path_part(slug)}.json")
    # last: the pages' /{modelId}/{layer}/{index} takes what the API leaves
    app.include_router(web_router(view, graph_uses, runner, hidden=hidden))

    def openapi() -> dict[str, Any]:
        return openapi_error_responses(FastAPI.openapi(app))

    app.openapi = openapi  # type: ignore[method-assign]
    return app
