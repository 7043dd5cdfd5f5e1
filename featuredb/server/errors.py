"""Where exceptions become HTTP answers, for both servers: typed errors as 4xx with a message that holds no
filesystem path, anything else a generic 500 (the detail goes to the server's log, never to the client)."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Iterable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from featuredb.errors import FeatureDBError, NotFoundError, StoreLockedError
from featuredb.server.limits import error_body

log = logging.getLogger("featuredb.server")
INTERNAL = "internal error (details are in the server's log)"
# an absolute POSIX path of two or more parts, or a Windows one; not the middle of a/b ids or of URLs
ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/-])(?:/[^\s/'\"<>;,()]+){2,}/?|\b[A-Za-z]:\\[^\s'\"<>;,()]+")


def error_response(status: int, message: str) -> Response:
    """A JSON error answer."""
    return Response(error_body(message), status_code=status, media_type="application/json")


def public_message(message: str, hidden: Iterable[tuple[str, str]] = ()) -> str:
    """`message` with each (path, name) of `hidden` replaced by the name, any other absolute path by its last part."""
    for path, name in sorted(hidden, key=lambda p: -len(p[0])):
        if path:
            message = message.replace(path, name)
    message = ABSOLUTE_PATH.sub(lambda m: os.path.basename(m.group(0).rstrip("/\\")) or "<path>", message)
    return message.splitlines()[0] if message.strip() else "error"


def status_of(exc: FeatureDBError) -> int:
    """The 4xx a typed error answers with: its own `status`, 404 for not found, 409 for a locked store, else 400."""
    status = getattr(exc, "status", None)
    if isinstance(status, int) and 400 <= status < 500:
        return status
    if isinstance(exc, NotFoundError):
        return 404
    return 409 if isinstance(exc, StoreLockedError) else 400


def hidden_paths(**named: str | Path | None) -> list[tuple[str, str]]:
    """(path, name) pairs to hide: each given path as written and resolved, plus the working directory."""
    out = [(os.getcwd(), ".")]
    for name, path in named.items():
        if path:
            out += [(str(path), name.replace("_", " ")), (str(Path(path).resolve()), name.replace("_", " "))]
    return out


def install_error_handlers(app: FastAPI, hidden: list[tuple[str, str]]) -> None:
    """Register the one mapping from exceptions to answers on `app` (handlers plus a last-resort middleware)."""

    @app.exception_handler(FeatureDBError)
    async def typed(_request: Request, exc: FeatureDBError) -> Response:
        return error_response(status_of(exc), public_message(str(exc), hidden))

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> Response:
        answer = error_response(exc.status_code, public_message(str(exc.detail), hidden))
        answer.headers.update(exc.headers or {})
        return answer

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", []) if p != "body")
        what = str(first.get("msg")).removeprefix("Value error, ")
        message = f"{where}: {what}" if where else what
        return error_response(400, public_message(message, hidden))

    app.add_middleware(LastResort)


class LastResort:
    """ASGI middleware: an exception no handler took becomes a generic 500 that keeps the connection open."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:  # noqa: BLE001 - the one place an unexpected error becomes an answer
            log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            if not started:
                await error_response(500, INTERNAL)(scope, receive, send)
