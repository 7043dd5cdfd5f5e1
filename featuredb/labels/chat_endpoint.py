"""ChatEndpoint: an OpenAI-compatible chat.completions client with bounded concurrency and retries.

Works with any server speaking OpenAI's chat API (OpenAI, vLLM, llama.cpp, Ollama's /v1). The API key is read
from an environment variable and sent only to the endpoint's own origin; it never appears in a message, a
repr or an exception text.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any

import httpx

from featuredb.errors import FeatureDBError
from featuredb.neuronpedia.client import RetryPolicy, same_origin

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


@dataclass
class ChatReply:
    """One assistant reply and the tokens it cost (0 when the server does not report usage)."""

    text: str
    prompt_tokens: int
    completion_tokens: int


class EndpointError(FeatureDBError):
    """The chat endpoint failed (unreachable, an HTTP error after retries, or a reply we cannot use)."""


class _Retryable(Exception):
    """A failure worth another try; its message is what the user sees if the retries run out."""


class ChatEndpoint:
    """POST {url}/chat/completions with at most `concurrency` requests in flight and retries with backoff."""

    def __init__(self, url: str, model: str, *, key_env: str = "OPENAI_API_KEY", concurrency: int = 8,
                 timeout: float = 60.0, max_retries: int = 5,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        try:
            origin = httpx.URL(self.url)
        except (httpx.InvalidURL, ValueError, TypeError):
            raise EndpointError(f"bad endpoint URL {url!r}") from None
        if origin.scheme not in ("http", "https") or not origin.host:
            raise EndpointError(f"bad endpoint URL {url!r}: expected http(s)://host[:port]/v1")
        self._origin = origin
        self.host = origin.host
        self.model = model
        self.key_env = key_env
        self._key = os.environ.get(key_env) or None
        self.concurrency = max(1, int(concurrency))
        self.timeout = timeout
        self.retry = RetryPolicy(max_retries=max(0, int(max_retries)))
        self._transport = transport
        self._sleep = asyncio.sleep  # tests replace it to see the backoff delays without waiting
        self._loop: asyncio.AbstractEventLoop | None = None
        self._http: httpx.AsyncClient | None = None
        self._limit: asyncio.Semaphore | None = None

    def __repr__(self) -> str:  # never shows the key
        return (f"ChatEndpoint(url={self.url!r}, model={self.model!r}, key_env={self.key_env!r}, "
                f"key={'set' if self._key else 'unset'})")

    def _bind(self) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        """The connection pool and semaphore of the running event loop (new ones after an asyncio.run ends), so
        one endpoint can serve several asyncio.run calls."""
        loop = asyncio.get_running_loop()
        if self._http is None or self._limit is None or self._loop is not loop:
            self._http = httpx.AsyncClient(timeout=self.timeout, transport=self._transport, follow_redirects=False)
            self._limit = asyncio.Semaphore(self.concurrency)
            self._loop = loop
        return self._http, self._limit

    async def aclose(self) -> None:
        """Close the connection pool (a later chat() opens a new one)."""
        http, self._http, self._limit, self._loop = self._http, None, None, None
        if http is not None:
            await http.aclose()

    async def __aenter__(self) -> "ChatEndpoint":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _headers(self, url: httpx.URL) -> dict[str, str]:
        headers = {"accept": "application/json", "content-type": "application/json"}
        if self._key and same_origin(url, self._origin):
            headers["authorization"] = f"Bearer {self._key}"
        return headers

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    async def chat(self, messages: list[dict[str, str]], *, max_tokens: int = 256,
                   temperature: float = 0.0) -> ChatReply:
        """One chat completion; retries 429 (Retry-After honoured), 5xx, timeouts, connection errors and
        unusable replies, then raises EndpointError with a one-line message."""
        url = httpx.URL(f"{self.url}/chat/completions")
        body = {"model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature}
        attempt = 0
        http, limit = self._bind()
        async with limit:
            while True:
                response: httpx.Response | None = None
                try:
                    response = await http.post(url, json=body, headers=self._headers(url))
                    return self._parse(response)
                except _Retryable as e:
                    problem = str(e)
                except httpx.TimeoutException:
                    problem = f"timed out after {self.timeout:g}s"
                except httpx.TransportError as e:
                    problem = f"cannot reach {self.host} ({e.__class__.__name__})"
                attempt += 1
                if attempt > self.retry.max_retries:
                    tries = self.retry.max_retries + 1
                    raise EndpointError(self._scrub(f"chat endpoint {self.url}: {problem} "
                                                    f"({tries} attempt{'s' if tries != 1 else ''})")) from None
                await self._sleep(self.retry.delay(attempt, response if response is not None
                                                     and response.status_code == 429 else None))

    def _parse(self, response: httpx.Response) -> ChatReply:
        code = response.status_code
        if response.is_redirect:
            raise EndpointError(f"chat endpoint {self.url}: HTTP {code} redirect (not followed); "
                                "give the final URL with --endpoint")
        if code in RETRY_STATUS:
            raise _Retryable(f"HTTP {code} ({_detail(response)})")
        if code in (401, 403):
            raise EndpointError(self._scrub(f"chat endpoint {self.url}: HTTP {code} unauthorized "
                                            f"({_detail(response)}); set {self.key_env}"))
        if code >= 400:
            raise EndpointError(self._scrub(f"chat endpoint {self.url}: HTTP {code} ({_detail(response)})"))
        try:
            data = response.json()
        except ValueError:
            raise _Retryable(f"the reply is not JSON ({response.text[:60]!r})") from None
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or not choices:
            raise _Retryable("the reply has no choices")
        first = choices[0]
        message = first.get("message") if isinstance(first, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if content is None and isinstance(first, dict) and isinstance(first.get("text"), str):
            content = first["text"]  # completions-style servers
        if not isinstance(content, str):
            raise _Retryable("the reply's first choice has no message content")
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        return ChatReply(content, _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens")))


def _int(value: Any) -> int:
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return (response.text[:160].replace("\n", " ") or response.reason_phrase).strip()
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            err = err.get("message")
        return str(err or body.get("message") or body)[:160].replace("\n", " ")
    return str(body)[:160]
