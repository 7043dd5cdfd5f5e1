"""The servers' limits on requests, in one place: body sizes, list lengths, numbers and names.

Every limit here is refused with a 4xx and a one-line JSON message (413 for bodies, 400 for the rest),
documented in the README ("Server limits") and in the OpenAPI schema (as field bounds).
"""

from __future__ import annotations

import json
from typing import Any, Callable

import anyio
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY_BYTES = 1_048_576  # any JSON request body (1 MiB)
MAX_GRAPH_BYTES = 209_715_200  # a graph file PUT to /api/graph/upload/{key} (Neuronpedia's MAX_GRAPH_UPLOAD_SIZE_BYTES)
MAX_FEATURES_PER_REQUEST = 256  # entries of POST /api/features
MAX_ACTS_TO_RETURN = 10_000  # maxActsToReturn of one feature
MAX_INDEX = 2**53  # a feature index (JavaScript's largest exact integer)
MAX_OFFSET = 10_000  # offset of the explanation searches (500 pages of 20)
MAX_NAME_CHARS = 256  # a model id, source id, release name, slug or id
MAX_QUERY_CHARS = 1000  # an explanation search query
MAX_TEXT_CHARS = 1000  # the text of an inference search (Neuronpedia's limit on search-topk-by-token)
MAX_TEXTS = 32  # texts in one POST /api/activation/new
MAX_SOURCES = 128  # sources named in one request (layers, selectedLayers)
MAX_SORT_INDEXES = 1000  # sortIndexes of POST /api/search-all
MAX_GRAPH_ITEMS = 10_000  # pinnedIds, supernodes or clerps of one subgraph, and ids in one supernode
MAX_SAVE_BYTES = 1_048_576  # a `trace serve` POST /save_graph/{slug} body (qParams only)
SHUTDOWN_GRACE_S = 3  # seconds in-flight requests get after SIGTERM before the server closes them
# A refused body up to this size is read and dropped before the 413 goes out, so that the client, still sending,
# reads the 413 instead of a reset connection; a bigger one (or one slower than DRAIN_S) gets the 413 and a close.
MAX_DRAIN_BYTES = 64 * 1_048_576
DRAIN_S = 10


class BodyTooLarge(HTTPException):
    """A request body over its route's limit (413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than {limit} bytes")


def error_body(message: str) -> bytes:
    """The JSON body of every error answer: Neuronpedia's `message`, and `error` as older clients read it."""
    return json.dumps({"error": message, "message": message}).encode()


class BodyLimit:
    """ASGI middleware: refuse a body over `limit_for(path)` bytes with 413, before or while it arrives."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int] = lambda _path: MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            waits = headers.get(b"expect", b"").lower() == b"100-continue"  # the client has not sent the body
            drained = not waits and declared.isdigit() and int(declared) <= MAX_DRAIN_BYTES and await drain(receive)
            body = error_body(f"request body is larger than {limit} bytes")
            await send({"type": "http.response.start", "status": 413,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode()),
                                    *([] if drained else [(b"connection", b"close")])]})
            await send({"type": "http.response.body", "body": body})
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    if message.get("more_body", False):
                        await drain(receive, received)
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, counted, send)


async def drain(receive: Receive, received: int = 0) -> bool:
    """Read and drop the rest of a refused body (at most MAX_DRAIN_BYTES, DRAIN_S); True if it all arrived."""
    with anyio.move_on_after(DRAIN_S):
        while received <= MAX_DRAIN_BYTES:
            message = await receive()
            if message["type"] != "http.request":
                return False
            received += len(message.get("body", b""))
            if not message.get("more_body", False):
                return True
    return False


def openapi_error_responses(schema: dict[str, Any]) -> dict[str, Any]:
    """Document the error answers every operation can give (400 replaces FastAPI's 422; 404, 413, 500)."""
    error = {"description": "Error",
             "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    schema.setdefault("components", {}).setdefault("schemas", {})["Error"] = {
        "type": "object", "required": ["message"],
        "properties": {"message": {"type": "string"}, "error": {"type": "string"}}}
    for path in schema.get("paths", {}).values():
        for op in path.values():
            responses = op.setdefault("responses", {})
            responses.pop("422", None)
            for code, what in (("400", "Invalid request"), ("404", "Not found"), ("413", "Request body too large"),
                               ("500", "Internal error (the body never holds details)")):
                responses.setdefault(code, {"description": what})
            for code, answer in responses.items():
                if code[0] in "45":
                    answer.setdefault("content", error["content"])
    schema["components"]["schemas"].pop("HTTPValidationError", None)
    schema["components"]["schemas"].pop("ValidationError", None)
    return schema
