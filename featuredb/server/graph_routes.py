"""Neuronpedia's graph routes over the store: read stored graphs; upload graphs and save subgraphs with the write token."""

from __future__ import annotations

import hmac
import json
import threading
import uuid
from typing import Any, Callable

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from featuredb.errors import BadInputError, FeatureDBError, NotFoundError
from featuredb.graph_store import (delete_subgraph, graph_data, graph_record, list_graphs, list_subgraphs,
                                   save_graph, save_subgraph)
from featuredb.store import FeatureStore

MAX_GRAPH_BYTES = 209_715_200  # Neuronpedia's MAX_GRAPH_UPLOAD_SIZE_BYTES
LOCAL_USER = "local"


class WriteDenied(FeatureDBError):
    """A write without the server's write token (status 401) or on a read-only server (403)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class SignedPutRequest(BaseModel):
    """POST /api/graph/signed-put."""

    filename: str
    contentLength: int = Field(ge=1, le=MAX_GRAPH_BYTES)
    contentType: str = "application/json"


class SaveToDbRequest(BaseModel):
    """POST /api/graph/save-to-db (after the PUT)."""

    putRequestId: str


class SubgraphSaveRequest(BaseModel):
    """POST /api/graph/subgraph/save."""

    modelId: str
    slug: str
    displayName: str | None = None
    pinnedIds: list[str]
    supernodes: list[list[str]] = Field(default_factory=list)
    clerps: list[list[str]] = Field(default_factory=list)
    pruningThreshold: float | None = None
    densityThreshold: float | None = None
    overwriteId: str | None = None


class SubgraphListRequest(BaseModel):
    """POST /api/graph/subgraph/list."""

    modelId: str
    slug: str


class SubgraphDeleteRequest(BaseModel):
    """POST /api/graph/subgraph/delete."""

    subgraphId: str


def graph_router(view: Callable[[], FeatureStore], write_token: str | None) -> APIRouter:
    """GET /api/graph/{modelId}/{slug} and the graph file; uploads and subgraphs need `x-api-key: write_token`."""
    router = APIRouter(tags=["Attribution Graphs"])
    pending: dict[str, dict[str, Any]] = {}  # putRequestId -> {"key", "filename", "data"}
    lock = threading.Lock()

    def require_writer(request: Request) -> None:
        if not write_token:
            raise WriteDenied("this server is read-only; start it with --write-token to allow writes", 403)
        given = request.headers.get("x-api-key", "")
        if not hmac.compare_digest(given.encode(), write_token.encode()):
            raise WriteDenied("missing or wrong x-api-key for writes", 401)

    def with_url(request: Request, rec: dict[str, Any]) -> dict[str, Any]:
        rec["url"] = str(request.url_for("graph_file", modelId=rec["modelId"], slug=rec["slug"]))
        return rec

    @router.get("/api/graph/{modelId}/{slug}", summary="Get Graph Metadata")
    def get_graph(modelId: str, slug: str, request: Request) -> dict[str, Any]:
        """A stored graph's record; its `url` serves the graph JSON."""
        return with_url(request, graph_record(view(), modelId, slug))

    @router.get("/graphs/{modelId}/{slug}.json", name="graph_file", summary="Graph JSON")
    def graph_file(modelId: str, slug: str) -> Response:
        """The stored attribution graph itself."""
        return Response(content=graph_data(view(), modelId, slug), media_type="application/json")

    @router.post("/api/graph/list-owned", summary="List Graphs")
    def list_owned(request: Request) -> list[dict[str, Any]]:
        """Every stored graph (the local server has one owner: whoever holds the write token)."""
        require_writer(request)
        return [with_url(request, r) for r in list_graphs(view())]

    @router.post("/api/graph/signed-put", summary="Upload Graph 1/2 - Get Upload URL")
    def signed_put(body: SignedPutRequest, request: Request) -> dict[str, Any]:
        """A URL on this server to PUT the graph file to, and the putRequestId for save-to-db."""
        require_writer(request)
        if not body.filename.endswith(".json"):
            raise BadInputError("Invalid file extension - must be .json")
        put_id, key = uuid.uuid4().hex, uuid.uuid4().hex
        with lock:
            pending[put_id] = {"key": key, "filename": body.filename, "data": None}
        url = str(request.url_for("graph_put", key=key))
        return {"url": url, "key": key, "putRequestId": put_id}

    @router.put("/api/graph/upload/{key}", name="graph_put", summary="Upload Graph - PUT the file")
    async def graph_put(key: str, request: Request) -> dict[str, Any]:
        """Receive the graph file for an earlier signed-put."""
        require_writer(request)
        data = await request.body()
        if len(data) > MAX_GRAPH_BYTES:
            raise BadInputError(f"graph file is larger than {MAX_GRAPH_BYTES} bytes")
        with lock:
            entry = next((p for p in pending.values() if p["key"] == key), None)
            if entry is None:
                raise NotFoundError(f"no pending upload {key}; call /api/graph/signed-put first")
            entry["data"] = data
        return {"success": True}

    @router.post("/api/graph/save-to-db", summary="Upload Graph 2/2 - Save")
    def save_to_db(body: SaveToDbRequest, request: Request) -> dict[str, Any]:
        """Parse the uploaded file and store the graph under its model (metadata.scan) and slug."""
        require_writer(request)
        with lock:
            entry = pending.get(body.putRequestId)
        if entry is None or entry["data"] is None:
            raise NotFoundError(f"putRequestId {body.putRequestId}: nothing was uploaded for it")
        try:
            graph = json.loads(entry["data"])
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadInputError(f"{entry['filename']}: malformed JSON ({e})") from None
        rec = save_graph(view(), graph, user=LOCAL_USER)
        with lock:
            pending.pop(body.putRequestId, None)
        return with_url(request, rec)

    @router.post("/api/graph/subgraph/save", summary="Save Subgraph")
    def subgraph_save(body: SubgraphSaveRequest, request: Request) -> dict[str, Any]:
        """Pinned nodes, supernodes and clerps of a stored graph."""
        require_writer(request)
        return save_subgraph(view(), body.modelId, body.slug, pinned_ids=body.pinnedIds, supernodes=body.supernodes,
                             clerps=body.clerps, display_name=body.displayName,
                             pruning_threshold=body.pruningThreshold, density_threshold=body.densityThreshold,
                             user=LOCAL_USER, subgraph_id=body.overwriteId)

    @router.post("/api/graph/subgraph/list", summary="List Subgraphs")
    def subgraph_list(body: SubgraphListRequest) -> list[dict[str, Any]]:
        """Every subgraph saved for a graph."""
        return list_subgraphs(view(), body.modelId, body.slug)

    @router.post("/api/graph/subgraph/delete", summary="Delete Subgraph")
    def subgraph_delete(body: SubgraphDeleteRequest, request: Request) -> dict[str, Any]:
        """Delete one subgraph."""
        require_writer(request)
        return delete_subgraph(view(), body.subgraphId)

    return router
