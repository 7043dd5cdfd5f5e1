"""Neuronpedia's graph routes over the store: read stored graphs; upload graphs and save subgraphs with the write token."""

from __future__ import annotations

import json
import threading
import uuid
import zlib
from typing import Annotated, Any, Callable

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from featuredb.errors import BadInputError, NotFoundError
from featuredb.store.graph_store import (delete_graph, delete_subgraph, graph_data, graph_record, list_graphs,
                                   list_subgraphs, save_graph, save_subgraph)
from featuredb.server.fields import Name, Number, int_in
from featuredb.server.limits import MAX_GRAPH_BYTES, MAX_GRAPH_ITEMS, MAX_NAME_CHARS
from featuredb.server.write_access import WRITE_ERRORS, WriteDenied, writer_check
from featuredb.store.feature_store import FeatureStore

LOCAL_USER = "local"
UPLOAD_PREFIX = "/api/graph/upload/"
MAX_PENDING_UPLOADS = 16  # signed-put URLs waiting for their file; the oldest is dropped beyond this
PathName = Annotated[str, Path(max_length=MAX_NAME_CHARS)]
Ids = Annotated[list[Annotated[str, Field(max_length=MAX_NAME_CHARS)]], Field(max_length=MAX_GRAPH_ITEMS)]
Groups = Annotated[list[Annotated[list[Annotated[str, Field(max_length=MAX_NAME_CHARS * 4)]],
                                  Field(max_length=MAX_GRAPH_ITEMS)]], Field(max_length=MAX_GRAPH_ITEMS)]
class SignedPutRequest(BaseModel):
    """POST /api/graph/signed-put."""

    filename: Name
    contentLength: int_in(1, MAX_GRAPH_BYTES)  # type: ignore[valid-type]
    contentType: Name = "application/json"


class SaveToDbRequest(BaseModel):
    """POST /api/graph/save-to-db (after the PUT)."""

    putRequestId: Name


class GraphDeleteRequest(BaseModel):
    """POST /api/graph/delete."""

    modelId: Name
    slug: Name


def graph_file_bytes(data: bytes, content_encoding: str) -> bytes:
    """The PUT body as the graph's JSON bytes: gunzipped when sent gzipped (as Neuronpedia's client sends it),
    never more than MAX_GRAPH_BYTES however small the compressed body."""
    if "gzip" not in content_encoding.lower() and not data.startswith(b"\x1f\x8b"):
        return data
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflate.decompress(data, MAX_GRAPH_BYTES + 1)
    except zlib.error as e:
        raise BadInputError(f"the uploaded file is not valid gzip ({e})") from None
    if len(out) > MAX_GRAPH_BYTES or inflate.unconsumed_tail:
        raise BadInputError(f"the uploaded graph is over {MAX_GRAPH_BYTES} bytes once unzipped")
    return out


class SubgraphSaveRequest(BaseModel):
    """POST /api/graph/subgraph/save."""

    modelId: Name
    slug: Name
    displayName: Name | None = None
    pinnedIds: Ids
    supernodes: Groups = Field(default_factory=list)
    clerps: Groups = Field(default_factory=list)
    pruningThreshold: Number | None = None
    densityThreshold: Number | None = None
    overwriteId: Name | None = None


class SubgraphListRequest(BaseModel):
    """POST /api/graph/subgraph/list."""

    modelId: Name
    slug: Name


class SubgraphDeleteRequest(BaseModel):
    """POST /api/graph/subgraph/delete."""

    subgraphId: Name


def graph_router(view: Callable[[], FeatureStore], write_token: str | None) -> APIRouter:
    """GET /api/graph/{modelId}/{slug} and the graph file; uploads and subgraphs need `x-api-key: write_token`."""
    router = APIRouter(tags=["Attribution Graphs"])
    pending: dict[str, dict[str, Any]] = {}  # putRequestId -> {"key", "filename", "data"}
    lock = threading.Lock()
    require_writer = writer_check(write_token)

    def with_url(request: Request, rec: dict[str, Any]) -> dict[str, Any]:
        rec["url"] = str(request.url_for("graph_file", modelId=rec["modelId"], slug=rec["slug"]))
        return rec

    @router.get("/api/graph/{modelId}/{slug}", summary="Get Graph Metadata")
    def get_graph(modelId: PathName, slug: PathName, request: Request) -> dict[str, Any]:
        """A stored graph's record; its `url` serves the graph JSON."""
        return with_url(request, graph_record(view(), modelId, slug))

    @router.get("/graphs/{modelId}/{slug}.json", name="graph_file", summary="Graph JSON")
    def graph_file(modelId: PathName, slug: PathName) -> Response:
        """The stored attribution graph itself."""
        return Response(content=graph_data(view(), modelId, slug), media_type="application/json")

    @router.post("/api/graph/list-owned", summary="List Graphs", responses=WRITE_ERRORS)
    def list_owned(request: Request) -> list[dict[str, Any]]:
        """Every stored graph (the local server has one owner: whoever holds the write token)."""
        require_writer(request)
        return [with_url(request, r) for r in list_graphs(view())]

    @router.post("/api/graph/signed-put", summary="Upload Graph 1/2 - Get Upload URL", responses=WRITE_ERRORS)
    def signed_put(body: SignedPutRequest, request: Request) -> dict[str, Any]:
        """A URL on this server to PUT the graph file to, and the putRequestId for save-to-db."""
        require_writer(request)
        if not body.filename.endswith(".json"):
            raise BadInputError("Invalid file extension - must be .json")
        put_id, key = uuid.uuid4().hex, uuid.uuid4().hex
        with lock:
            while len(pending) >= MAX_PENDING_UPLOADS:
                pending.pop(next(iter(pending)))
            pending[put_id] = {"key": key, "filename": body.filename, "data": None}
        url = str(request.url_for("graph_put", key=key))
        return {"url": url, "key": key, "putRequestId": put_id}

    @router.put(UPLOAD_PREFIX + "{key}", name="graph_put", summary="Upload Graph - PUT the file",
                responses={404: {"description": "No pending upload has this key"}})
    async def graph_put(key: PathName, request: Request) -> dict[str, Any]:
        """Receive the graph file for an earlier signed-put, gzipped or not (at most MAX_GRAPH_BYTES either way).

        As with S3's signed URLs, the unguessable key in the URL (handed only to a writer) is the permission."""
        if not write_token:
            raise WriteDenied("this server is read-only; start it with --write-token to allow writes", 403)
        raw = await request.body()
        with lock:
            if not any(p["key"] == key for p in pending.values()):
                raise NotFoundError(f"no pending upload {key}; call /api/graph/signed-put first")
        data = graph_file_bytes(raw, request.headers.get("content-encoding", ""))
        with lock:
            entry = next((p for p in pending.values() if p["key"] == key), None)
            if entry is None:
                raise NotFoundError(f"no pending upload {key}; call /api/graph/signed-put first")
            entry["data"] = data
        return {"success": True}

    @router.post("/api/graph/save-to-db", summary="Upload Graph 2/2 - Save", responses=WRITE_ERRORS)
    def save_to_db(body: SaveToDbRequest, request: Request) -> dict[str, Any]:
        """Parse the uploaded file and store the graph under its model (metadata.scan) and slug."""
        require_writer(request)
        with lock:
            entry = pending.get(body.putRequestId)
        if entry is None or entry["data"] is None:
            raise NotFoundError(f"putRequestId {body.putRequestId}: nothing was uploaded for it")
        try:
            graph = json.loads(entry["data"])
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise BadInputError(f"{entry['filename']}: malformed JSON ({e})") from None
        if not isinstance(graph, dict):
            raise BadInputError(f"{entry['filename']}: expected a JSON object (a graph), got {type(graph).__name__}")
        rec = save_graph(view(), graph, user=LOCAL_USER)
        with lock:
            pending.pop(body.putRequestId, None)
        return with_url(request, rec)

    @router.post("/api/graph/delete", summary="Delete Graph", responses=WRITE_ERRORS)
    def graph_delete(body: GraphDeleteRequest, request: Request) -> dict[str, Any]:
        """Delete a stored graph and its subgraphs."""
        require_writer(request)
        delete_graph(view(), body.modelId, body.slug)
        return {"message": "Graph deleted successfully"}

    @router.post("/api/graph/subgraph/save", summary="Save Subgraph", responses=WRITE_ERRORS)
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

    @router.post("/api/graph/subgraph/delete", summary="Delete Subgraph", responses=WRITE_ERRORS)
    def subgraph_delete(body: SubgraphDeleteRequest, request: Request) -> dict[str, Any]:
        """Delete one subgraph."""
        require_writer(request)
        return delete_subgraph(view(), body.subgraphId)

    return router
