"""Who may write through the API: whoever sends the server's write token as `x-api-key`, as Neuronpedia's
clients already do with their Neuronpedia key."""

from __future__ import annotations

import hmac
from typing import Any, Callable

from fastapi import Request

from featuredb.errors import FeatureDBError

WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or wrong x-api-key"}, 403: {"description": "The server is read-only"}}


class WriteDenied(FeatureDBError):
    """A write without the server's write token (status 401) or on a read-only server (403)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def writer_check(write_token: str | None) -> Callable[[Request], None]:
    """A function that raises WriteDenied unless the request carries `x-api-key: write_token`."""

    def require_writer(request: Request) -> None:
        if not write_token:
            raise WriteDenied("this server is read-only; start it with --write-token to allow writes", 403)
        given = request.headers.get("x-api-key", "")
        if not hmac.compare_digest(given.encode(), write_token.encode()):
            raise WriteDenied("missing or wrong x-api-key for writes", 401)

    return require_writer
