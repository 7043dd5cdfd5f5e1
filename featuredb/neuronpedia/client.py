"""NeuronpediaClient and AsyncNeuronpediaClient: one request path each, shared building, retries and parsing."""

from __future__ import annotations

import asyncio
import email.utils
import functools
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterator, Sequence
from urllib.parse import urljoin

import httpx

from featuredb.models import Feature
from featuredb.neuronpedia.errors import (InvalidResponseError, NeuronpediaError, NeuronpediaNotFoundError,
                                          RateLimitedError, ServerError, UnauthorizedError)
from featuredb.neuronpedia.models import SearchExplanationsResponse

DEFAULT_BASE_URL = "https://www.neuronpedia.org"
API_KEY_ENV = "NEURONPEDIA_API_KEY"
BASE_URL_ENV = "NEURONPEDIA_BASE_URL"
UPLOAD_BATCH = 128  # Neuronpedia accepts at most 128 features per upload-batch call
RETRY_STATUS = {429, 500, 502, 503, 504}
MAX_REDIRECTS = 5


@dataclass
class RetryPolicy:
    """Exponential backoff with jitter on 429, 5xx and timeouts; Retry-After wins when given."""

    max_retries: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0

    def delay(self, attempt: int, response: httpx.Response | None) -> float:
        """Seconds to wait before retry number `attempt` (1-based)."""
        if response is not None:
            after = _retry_after_seconds(response.headers.get("retry-after"))
            if after is not None:
                return min(after, self.max_delay)
            if response.headers.get("x-limit-remaining") == "0":
                reset = _finite(response.headers.get("x-limit-reset"))
                if reset is not None:
                    return min(max(reset - time.time(), 0.0), self.max_delay)
        base = min(self.base_delay * (2 ** (attempt - 1)), self.max_delay)
        return base * (0.5 + random.random() / 2)


def _finite(text: str | None) -> float | None:
    """A header's number, or None when it is absent, not a number, NaN or infinite."""
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _retry_after_seconds(text: str | None) -> float | None:
    """Retry-After as seconds to wait (delta-seconds or an HTTP date; negative means now), None when unusable."""
    seconds = _finite(text)
    if seconds is None and text:
        try:
            seconds = email.utils.parsedate_to_datetime(text).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return None if seconds is None else max(seconds, 0.0)


def same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    """True when both URLs have the same scheme, host and port (default ports filled in)."""
    def origin(u: httpx.URL) -> tuple[str, str, int | None]:
        return (u.scheme, u.host, u.port or {"http": 80, "https": 443}.get(u.scheme))
    return origin(a) == origin(b)


def _redirect_target(url: httpx.URL, response: httpx.Response, what: str) -> httpx.URL:
    """Where a redirect points, resolved against the request URL; a malformed Location is a clear error."""
    try:
        target = httpx.URL(urljoin(str(url), response.headers["location"]))
    except (httpx.InvalidURL, ValueError):
        raise InvalidResponseError(f"{what}: the server redirected to a malformed location") from None
    if target.scheme not in ("http", "https"):
        raise InvalidResponseError(f"{what}: the server redirected to a non-HTTP location ({target.scheme}:)")
    return target


@dataclass
class _Request:
    method: str
    path: str
    json_body: Any = None
    content: bytes | None = None
    absolute_url: str | None = None  # e.g. a signed upload URL: never gets the API key unless on our host
    headers: dict[str, str] = field(default_factory=dict)


def _describe(response: httpx.Response) -> str:
    try:
        body = response.json()
        if isinstance(body, dict):
            return str(body.get("error") or body.get("message") or body)[:200]
    except ValueError:
        pass
    return response.text[:200].replace("\n", " ") or response.reason_phrase


def _raise_for(response: httpx.Response, what: str) -> None:
    code = response.status_code
    if code < 400:
        return
    detail = _describe(response)
    if code in (401, 403):
        raise UnauthorizedError(f"{what}: {code} unauthorized ({detail}); set NEURONPEDIA_API_KEY or pass --api-key")
    if code == 404:
        raise NeuronpediaNotFoundError(f"{what}: not found ({detail})")
    if code == 429:
        raise RateLimitedError(f"{what}: rate limited by the server after retries ({detail})")
    if code >= 500:
        raise ServerError(f"{what}: server error {code} after retries ({detail})")
    raise NeuronpediaError(f"{what}: HTTP {code} ({detail})")


def _json(response: httpx.Response, what: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise InvalidResponseError(f"{what}: the response is not JSON ({response.text[:80]!r})") from None


class _Base:
    """What the sync and async clients share: configuration, request building and response parsing."""

    _HTTP: type[httpx.Client] | type[httpx.AsyncClient]  # the connection pool each client sends through

    def __init__(self, base_url: str = DEFAULT_BASE_URL, api_key: str | None = None, *, timeout: float = 30.0,
                 retry: RetryPolicy | None = None, concurrency: int = 8,
                 transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        self._origin = httpx.URL(self.base_url)
        self.host = self._origin.host
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.concurrency = max(1, concurrency)
        self._http: Any = self._HTTP(timeout=timeout, transport=transport, follow_redirects=False)

    def __repr__(self) -> str:  # never shows the key
        return f"{type(self).__name__}(base_url={self.base_url!r}, api_key={'***' if self._api_key else None})"

    def _headers_for(self, url: httpx.URL, extra: dict[str, str]) -> dict[str, str]:
        headers = {"accept": "application/json", **extra}
        if self._api_key and same_origin(url, self._origin):
            headers["x-api-key"] = self._api_key
        return headers

    def _url(self, req: _Request) -> httpx.URL:
        return httpx.URL(req.absolute_url or f"{self.base_url}{req.path}")

    def _parse_json(self, response: httpx.Response, what: str) -> Any:
        _raise_for(response, what)
        return _json(response, what)

    # request builders (same for both clients)

    @staticmethod
    def _feature_req(model: str, source: str, index: int | str) -> _Request:
        return _Request("GET", f"/api/feature/{model}/{source}/{index}")

    @staticmethod
    def _features_req(features: Sequence[tuple[str, str, int | str]], max_acts: int | None) -> _Request:
        body = [{"modelId": m, "layer": s, "index": int(i), **({"maxActsToReturn": max_acts} if max_acts else {})}
                for m, s, i in features]
        return _Request("POST", "/api/features", json_body=body)

    @staticmethod
    def _search_req(kind: str, body: dict[str, Any]) -> _Request:
        return _Request("POST", f"/api/explanation/{kind}", json_body=body)

    @staticmethod
    def _activation_new_req(model: str, source: str, index: int | str, text: str | list[str],
                            ignore_bos: bool) -> _Request:
        body = {"feature": {"modelId": model, "source": source, "index": str(index)}, "customText": text,
                "ignoreBos": ignore_bos}
        return _Request("POST", "/api/activation/new", json_body=body)

    @staticmethod
    def _search_all_req(model: str, source_set: str, text: str, layers: list[str] | None,
                        sort_indexes: list[int] | None, num_results: int, ignore_bos: bool,
                        density_threshold: float) -> _Request:
        body = {"modelId": model, "sourceSet": source_set, "text": text, "selectedLayers": layers or [],
                "sortIndexes": sort_indexes or [], "ignoreBos": ignore_bos, "densityThreshold": density_threshold,
                "numResults": num_results}
        return _Request("POST", "/api/search-all", json_body=body)

    @staticmethod
    def _topk_req(model: str, source: str, text: str, num_results: int, ignore_bos: bool,
                  density_threshold: float) -> _Request:
        body = {"modelId": model, "source": source, "text": text, "numResults": num_results,
                "ignoreBos": ignore_bos, "densityThreshold": density_threshold}
        return _Request("POST", "/api/search-topk-by-token", json_body=body)

    @staticmethod
    def _signed_put_req(graph: dict[str, Any]) -> tuple[_Request, bytes]:
        content = json.dumps(graph).encode()
        slug = str(graph.get("metadata", {}).get("slug") or "graph")
        body = {"filename": f"{slug}.json", "contentLength": len(content)}
        return _Request("POST", "/api/graph/signed-put", json_body=body), content

    @staticmethod
    def _put_and_save_reqs(signed: Any, content: bytes) -> tuple[_Request, _Request]:
        url = signed.get("url") if isinstance(signed, dict) else None
        if not url:
            raise InvalidResponseError("graph/signed-put: no url in the response")
        put = _Request("PUT", "", content=content, absolute_url=url, headers={"content-type": "application/json"})
        body = {"putRequestId": signed.get("putRequestId"), "key": signed.get("key"), "url": url.split("?")[0]}
        return put, _Request("POST", "/api/graph/save-to-db", json_body=body)

    @staticmethod
    def _subgraph_save_req(model: str, slug: str, pinned_ids: list[str], supernodes: list[list[str]],
                           clerps: list[list[str]], display_name: str | None, pruning_threshold: float | None,
                           density_threshold: float | None) -> _Request:
        body: dict[str, Any] = {"modelId": model, "slug": slug, "pinnedIds": pinned_ids, "supernodes": supernodes,
                                "clerps": clerps, "displayName": display_name, "pruningThreshold": pruning_threshold,
                                "densityThreshold": density_threshold}
        return _Request("POST", "/api/graph/subgraph/save", json_body=body)

    @staticmethod
    def _upload_reqs(model: str, source: str, features: Sequence[dict[str, Any]]) -> list[_Request]:
        return [_Request("POST", "/api/feature/upload-batch",
                         json_body={"modelId": model, "source": source, "features": list(features[i:i + UPLOAD_BATCH])})
                for i in range(0, len(features), UPLOAD_BATCH)]

    @staticmethod
    def _feature_from(data: Any, what: str) -> Feature:
        try:
            return Feature.model_validate(data)
        except ValueError as e:
            raise InvalidResponseError(f"{what}: unexpected shape ({str(e).splitlines()[0]})") from None

    @staticmethod
    def _features_from(data: Any) -> list[Feature]:
        if not isinstance(data, list):
            raise InvalidResponseError("POST /api/features: expected a JSON list")
        return [_Base._feature_from(d, "POST /api/features") for d in data]


_SEND_ERRORS = (httpx.TransportError, httpx.InvalidURL)  # what _Tries.after turns into a retry or a typed error


class _Tries:
    """One request's retries and redirects, the same for both clients: each client sends `request()` and hands
    `after` the response or the exception; `after` says how long to wait before sending again (0 after a
    redirect), None when `response` is final, and raises the typed error when there is nothing more to try."""

    def __init__(self, client: _Base, req: _Request, what: str) -> None:
        self.client, self.req, self.what = client, req, what
        self.url = client._url(req)
        self.attempt = self.redirects = 0
        self.response: httpx.Response  # set when `after` returns None

    def request(self) -> dict[str, Any]:
        req = self.req
        return {"method": req.method, "url": self.url, "json": req.json_body, "content": req.content,
                "headers": self.client._headers_for(self.url, req.headers)}

    def after(self, got: httpx.Response | Exception) -> float | None:
        what, retry = self.what, self.client.retry
        if isinstance(got, httpx.TimeoutException):
            self.attempt += 1
            if self.attempt > retry.max_retries:
                raise ServerError(f"{what}: timed out after {retry.max_retries} retries") from None
            return retry.delay(self.attempt, None)
        if isinstance(got, httpx.TransportError):
            raise NeuronpediaError(f"{what}: cannot reach {self.url.host} ({got.__class__.__name__})") from None
        if isinstance(got, httpx.InvalidURL):  # httpx resolves a redirect's Location even when not following it
            raise InvalidResponseError(f"{what}: the server redirected to a malformed location") from None
        if got.is_redirect and self.redirects < MAX_REDIRECTS:
            self.redirects += 1
            self.url = _redirect_target(self.url, got, what)  # the key is dropped unless the origin is ours
            return 0.0
        if got.status_code in RETRY_STATUS and self.attempt < retry.max_retries:
            self.attempt += 1
            return retry.delay(self.attempt, got)
        self.response = got
        return None


def _search_body(query: str, offset: int, model: str | None, layers: list[str] | None,
                 release: str | None) -> tuple[str, dict[str, Any]]:
    if release:
        return "search-release", {"releaseName": release, "query": query, "offset": offset}
    if model and layers:
        return "search", {"modelId": model, "layers": layers, "query": query, "offset": offset}
    if model:
        return "search-model", {"modelId": model, "query": query, "offset": offset}
    return "search-all", {"query": query, "offset": offset}


class NeuronpediaClient(_Base):
    """Synchronous client: NeuronpediaClient(base_url=..., api_key=...) (key also from NEURONPEDIA_API_KEY)."""

    _HTTP = httpx.Client

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> "NeuronpediaClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, req: _Request, what: str) -> httpx.Response:
        tries = _Tries(self, req, what)
        while (wait := tries.after(self._try(tries))) is not None:
            time.sleep(wait)
        return tries.response

    def _try(self, tries: _Tries) -> httpx.Response | Exception:
        try:
            return self._http.request(**tries.request())
        except _SEND_ERRORS as e:
            return e

    def request_json(self, req: _Request, what: str) -> Any:
        """Send with retries and return the parsed JSON (typed errors otherwise)."""
        return self._parse_json(self._send(req, what), what)

    # -- features ------------------------------------------------------------------------------------

    def get_feature(self, model: str, source: str, index: int | str) -> Feature:
        """GET /api/feature/{model}/{source}/{index}."""
        what = f"feature {model}/{source}/{index}"
        return self._feature_from(self.request_json(self._feature_req(model, source, index), what), what)

    def get_features(self, features: Sequence[tuple[str, str, int | str]], max_acts: int | None = None) -> list[Feature]:
        """POST /api/features for a batch of (model, source, index); missing features are left out."""
        return self._features_from(self.request_json(self._features_req(features, max_acts), "POST /api/features"))

    def iter_features(self, features: Sequence[tuple[str, str, int | str]], *, batch: int = 64,
                      max_acts: int | None = None) -> Iterator[list[Feature]]:
        """Batches of POST /api/features over many features, `concurrency` requests in flight."""
        from concurrent.futures import ThreadPoolExecutor

        chunks = [features[i:i + batch] for i in range(0, len(features), batch)]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            yield from pool.map(lambda c: self.get_features(c, max_acts), chunks)

    # -- search --------------------------------------------------------------------------------------

    def search_explanations(self, query: str, *, model: str | None = None, layers: list[str] | None = None,
                            release: str | None = None, offset: int = 0) -> SearchExplanationsResponse:
        """One page of /api/explanation/search (model+layers), search-model, search-release or search-all."""
        kind, body = _search_body(query, offset, model, layers, release)
        data = self.request_json(self._search_req(kind, body), f"explanation {kind}")
        return SearchExplanationsResponse.model_validate(data)

    def iter_explanations(self, query: str, **kw: Any) -> Iterator[SearchExplanationsResponse]:
        """Every page of an explanation search, following nextOffset."""
        offset = kw.pop("offset", 0)
        while True:
            page = self.search_explanations(query, offset=offset, **kw)
            yield page
            if not page.hasMore or page.nextOffset is None:
                return
            offset = page.nextOffset

    # -- activations and inference search -----------------------------------------------------------

    def activation_new(self, model: str, source: str, index: int | str, text: str | list[str], *,
                       ignore_bos: bool = False) -> Any:
        """POST /api/activation/new: one feature's activations on a custom text (a list of texts: a list back)."""
        return self.request_json(self._activation_new_req(model, source, index, text, ignore_bos), "activation/new")

    def search_all(self, model: str, source_set: str, text: str, *, layers: list[str] | None = None,
                   sort_indexes: list[int] | None = None, num_results: int = 50, ignore_bos: bool = True,
                   density_threshold: float = -1) -> dict[str, Any]:
        """POST /api/search-all: top features over a text, by inference."""
        return self.request_json(self._search_all_req(model, source_set, text, layers, sort_indexes, num_results,
                                                      ignore_bos, density_threshold), "search-all")

    def search_topk_by_token(self, model: str, source: str, text: str, *, num_results: int = 10,
                             ignore_bos: bool = True, density_threshold: float = -1) -> dict[str, Any]:
        """POST /api/search-topk-by-token: the top features at every token of a text."""
        return self.request_json(self._topk_req(model, source, text, num_results, ignore_bos, density_threshold),
                                 "search-topk-by-token")

    # -- graphs ----------------------------------------------------------------------------------------

    def get_graph(self, model: str, slug: str) -> dict[str, Any]:
        """GET /api/graph/{model}/{slug}: graph metadata (and its data URL)."""
        return self.request_json(_Request("GET", f"/api/graph/{model}/{slug}"), f"graph {model}/{slug}")

    def list_owned_graphs(self) -> list[dict[str, Any]]:
        """POST /api/graph/list-owned: graphs uploaded with this API key."""
        return self.request_json(_Request("POST", "/api/graph/list-owned", json_body={}), "graph/list-owned")

    def upload_graph(self, graph: dict[str, Any]) -> dict[str, Any]:
        """Upload a graph JSON: signed-put, PUT the file to the signed URL, then save-to-db."""
        signed_req, content = self._signed_put_req(graph)
        put, save = self._put_and_save_reqs(self.request_json(signed_req, "graph/signed-put"), content)
        _raise_for(self._send(put, "graph upload PUT"), "graph upload PUT")
        return self.request_json(save, "graph/save-to-db")

    def save_subgraph(self, model: str, slug: str, *, pinned_ids: list[str], supernodes: list[list[str]],
                      clerps: list[list[str]], display_name: str | None = None,
                      pruning_threshold: float | None = None, density_threshold: float | None = None) -> dict[str, Any]:
        """POST /api/graph/subgraph/save: labels (clerps), supernodes and pinned nodes of a graph."""
        return self.request_json(self._subgraph_save_req(model, slug, pinned_ids, supernodes, clerps, display_name,
                                                         pruning_threshold, density_threshold), "subgraph/save")

    def list_subgraphs(self, model: str, slug: str) -> list[dict[str, Any]]:
        """POST /api/graph/subgraph/list."""
        return self.request_json(_Request("POST", "/api/graph/subgraph/list",
                                          json_body={"modelId": model, "slug": slug}), "subgraph/list")

    def delete_subgraph(self, subgraph_id: str) -> dict[str, Any]:
        """POST /api/graph/subgraph/delete."""
        return self.request_json(_Request("POST", "/api/graph/subgraph/delete",
                                          json_body={"subgraphId": subgraph_id}), "subgraph/delete")

    # -- uploads -----------------------------------------------------------------------------------------

    def upload_features(self, model: str, source: str, features: Sequence[dict[str, Any]]) -> list[Any]:
        """POST /api/feature/upload-batch in chunks of at most 128 features."""
        return [self.request_json(r, "feature/upload-batch") for r in self._upload_reqs(model, source, features)]


class AsyncNeuronpediaClient(_Base):
    """Asynchronous client with the same behaviour; bounded concurrency for batch pulls."""

    _HTTP = httpx.AsyncClient

    @functools.cached_property
    def _limit(self) -> asyncio.Semaphore:
        """At most `concurrency` requests in flight (batch pulls)."""
        return asyncio.Semaphore(self.concurrency)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncNeuronpediaClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _send(self, req: _Request, what: str) -> httpx.Response:
        tries = _Tries(self, req, what)
        async with self._limit:
            while (wait := tries.after(await self._try(tries))) is not None:
                await asyncio.sleep(wait)
        return tries.response

    async def _try(self, tries: _Tries) -> httpx.Response | Exception:
        try:
            return await self._http.request(**tries.request())
        except _SEND_ERRORS as e:
            return e

    async def request_json(self, req: _Request, what: str) -> Any:
        """Send with retries and return the parsed JSON (typed errors otherwise)."""
        return self._parse_json(await self._send(req, what), what)

    async def get_feature(self, model: str, source: str, index: int | str) -> Feature:
        """GET /api/feature/{model}/{source}/{index}."""
        what = f"feature {model}/{source}/{index}"
        return self._feature_from(await self.request_json(self._feature_req(model, source, index), what), what)

    async def get_features(self, features: Sequence[tuple[str, str, int | str]],
                           max_acts: int | None = None) -> list[Feature]:
        """POST /api/features for a batch of (model, source, index)."""
        return self._features_from(await self.request_json(self._features_req(features, max_acts),
                                                           "POST /api/features"))

    async def iter_features(self, features: Sequence[tuple[str, str, int | str]], *, batch: int = 64,
                            max_acts: int | None = None) -> AsyncIterator[list[Feature]]:
        """Batches of POST /api/features, at most `concurrency` in flight, yielded in order."""
        chunks = [features[i:i + batch] for i in range(0, len(features), batch)]
        tasks = [asyncio.ensure_future(self.get_features(c, max_acts)) for c in chunks]
        try:
            for t in tasks:
                yield await t
        finally:
            for t in tasks:
                t.cancel()

    async def search_explanations(self, query: str, *, model: str | None = None, layers: list[str] | None = None,
                                  release: str | None = None, offset: int = 0) -> SearchExplanationsResponse:
        """One page of an explanation search."""
        kind, body = _search_body(query, offset, model, layers, release)
        data = await self.request_json(self._search_req(kind, body), f"explanation {kind}")
        return SearchExplanationsResponse.model_validate(data)

    async def iter_explanations(self, query: str, **kw: Any) -> AsyncIterator[SearchExplanationsResponse]:
        """Every page of an explanation search, following nextOffset."""
        offset = kw.pop("offset", 0)
        while True:
            page = await self.search_explanations(query, offset=offset, **kw)
            yield page
            if not page.hasMore or page.nextOffset is None:
                return
            offset = page.nextOffset

    async def activation_new(self, model: str, source: str, index: int | str, text: str | list[str], *,
                             ignore_bos: bool = False) -> Any:
        """POST /api/activation/new."""
        return await self.request_json(self._activation_new_req(model, source, index, text, ignore_bos),
                                       "activation/new")

    async def search_all(self, model: str, source_set: str, text: str, *, layers: list[str] | None = None,
                         sort_indexes: list[int] | None = None, num_results: int = 50, ignore_bos: bool = True,
                         density_threshold: float = -1) -> dict[str, Any]:
        """POST /api/search-all."""
        return await self.request_json(self._search_all_req(model, source_set, text, layers, sort_indexes,
                                                            num_results, ignore_bos, density_threshold), "search-all")

    async def search_topk_by_token(self, model: str, source: str, text: str, *, num_results: int = 10,
                                   ignore_bos: bool = True, density_threshold: float = -1) -> dict[str, Any]:
        """POST /api/search-topk-by-token."""
        return await self.request_json(self._topk_req(model, source, text, num_results, ignore_bos,
                                                      density_threshold), "search-topk-by-token")

    async def get_graph(self, model: str, slug: str) -> dict[str, Any]:
        """GET /api/graph/{model}/{slug}."""
        return await self.request_json(_Request("GET", f"/api/graph/{model}/{slug}"), f"graph {model}/{slug}")

    async def list_owned_graphs(self) -> list[dict[str, Any]]:
        """POST /api/graph/list-owned."""
        return await self.request_json(_Request("POST", "/api/graph/list-owned", json_body={}), "graph/list-owned")

    async def upload_graph(self, graph: dict[str, Any]) -> dict[str, Any]:
        """Upload a graph JSON: signed-put, PUT, save-to-db."""
        signed_req, content = self._signed_put_req(graph)
        put, save = self._put_and_save_reqs(await self.request_json(signed_req, "graph/signed-put"), content)
        _raise_for(await self._send(put, "graph upload PUT"), "graph upload PUT")
        return await self.request_json(save, "graph/save-to-db")

    async def save_subgraph(self, model: str, slug: str, *, pinned_ids: list[str], supernodes: list[list[str]],
                            clerps: list[list[str]], display_name: str | None = None,
                            pruning_threshold: float | None = None,
                            density_threshold: float | None = None) -> dict[str, Any]:
        """POST /api/graph/subgraph/save."""
        return await self.request_json(self._subgraph_save_req(model, slug, pinned_ids, supernodes, clerps,
                                                               display_name, pruning_threshold, density_threshold),
                                       "subgraph/save")

    async def list_subgraphs(self, model: str, slug: str) -> list[dict[str, Any]]:
        """POST /api/graph/subgraph/list."""
        return await self.request_json(_Request("POST", "/api/graph/subgraph/list",
                                                json_body={"modelId": model, "slug": slug}), "subgraph/list")

    async def delete_subgraph(self, subgraph_id: str) -> dict[str, Any]:
        """POST /api/graph/subgraph/delete."""
        return await self.request_json(_Request("POST", "/api/graph/subgraph/delete",
                                                json_body={"subgraphId": subgraph_id}), "subgraph/delete")

    async def upload_features(self, model: str, source: str, features: Sequence[dict[str, Any]]) -> list[Any]:
        """POST /api/feature/upload-batch in chunks of at most 128 features, `concurrency` in flight."""
        reqs = self._upload_reqs(model, source, features)
        return list(await asyncio.gather(*(self.request_json(r, "feature/upload-batch") for r in reqs)))
