"""A tiny OpenAI-compatible chat.completions server on 127.0.0.1, for explainer and scorer tests.

    with fake_openai(lambda req: "Explanation: cities") as server:
        ChatEndpoint(server.url, "fake-model")        # server.url ends in /v1
        server.requests[0].headers["authorization"]    # every request is recorded, headers included

The reply function gets a FakeRequest and returns one of:
- a str: the assistant message content, wrapped in OpenAI's documented chat.completion shape;
- a dict: sent as the JSON body as is (to test malformed shapes, e.g. {"choices": []});
- a starlette Response: sent as is (errors, Retry-After, non-JSON bodies, redirects).
An exception in the reply function becomes a 500.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from loopback import serve_in_thread


@dataclass
class FakeRequest:
    """One request the server received."""

    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: Any  # the parsed JSON body (None when it was not JSON)
    n: int  # 0-based arrival number

    @property
    def messages(self) -> list[dict[str, str]]:
        return list((self.body or {}).get("messages") or [])

    @property
    def last_user(self) -> str:
        """Content of the last user message (the part that names the feature)."""
        users = [m.get("content", "") for m in self.messages if m.get("role") == "user"]
        return users[-1] if users else ""


Reply = Callable[[FakeRequest], "str | dict[str, Any] | Response"]


def completion(content: str, model: str = "fake-model", prompt_tokens: int = 100,
               completion_tokens: int = 5) -> dict[str, Any]:
    """OpenAI's chat.completion response object."""
    return {
        "id": f"chatcmpl-fake{int(time.time() * 1000)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "logprobs": None,
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


@dataclass
class FakeOpenAI:
    """The running server: its base URL (…/v1), origin, and what it received."""

    origin: str
    reply: Reply
    requests: list[FakeRequest] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _counter: Iterator[int] = field(default_factory=itertools.count)

    @property
    def url(self) -> str:
        return f"{self.origin}/v1"

    @property
    def chat_requests(self) -> list[FakeRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def app(self) -> Starlette:
        async def chat(request: Request) -> Response:
            raw = await request.body()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            with self._lock:
                req = FakeRequest(request.method, request.url.path, {k.lower(): v for k, v in request.headers.items()},
                                  body, next(self._counter))
                self.requests.append(req)
            try:
                out = self.reply(req)
            except Exception as e:  # the test's reply function failing is a server error, as in real life
                return JSONResponse({"error": {"message": f"fake server: {e}", "type": "server_error"}}, 500)
            if isinstance(out, Response):
                return out
            if isinstance(out, str):
                model = body.get("model", "fake-model") if isinstance(body, dict) else "fake-model"
                return JSONResponse(completion(out, model))
            return JSONResponse(out)

        async def models(request: Request) -> Response:
            return JSONResponse({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

        async def anything(request: Request) -> Response:
            with self._lock:
                self.requests.append(FakeRequest(request.method, request.url.path,
                                                 {k.lower(): v for k, v in request.headers.items()}, None,
                                                 next(self._counter)))
            return JSONResponse({"error": {"message": "not found"}}, 404)

        return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                                 Route("/chat/completions", chat, methods=["POST"]),
                                 Route("/v1/models", models, methods=["GET"]),
                                 Route("/{path:path}", anything, methods=["GET", "POST", "PUT", "DELETE"])])


@contextmanager
def fake_openai(reply: Reply | None = None) -> Iterator[FakeOpenAI]:
    """Serve a FakeOpenAI on a free loopback port for the duration of the block."""
    server = FakeOpenAI("", reply or (lambda req: "Explanation: fake"))
    with serve_in_thread(server.app()) as origin:
        server.origin = origin
        yield server
