"""The Neuronpedia client against the real local server over loopback, and faults injected with MockTransport."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Iterator

import httpx
import pytest
import uvicorn

from conftest import MODEL, SOURCE
from featuredb import FeatureStore
from featuredb.formats.neuronpedia_import import import_neuronpedia
from featuredb.neuronpedia import (AsyncNeuronpediaClient, InvalidResponseError, NeuronpediaClient,
                                   NeuronpediaError, NeuronpediaNotFoundError, ServerError, UnauthorizedError)
from featuredb.neuronpedia.client import RetryPolicy
from featuredb.server.app import create_app

FAST = RetryPolicy(max_retries=3, base_delay=0.01, max_delay=0.2)

# Shaped like https://www.neuronpedia.org/api/feature/gpt2-small/8-res-jb/100 (trimmed; extra fields kept).
NP_FEATURE = {
    "modelId": "gpt2-small", "layer": "8-res-jb", "index": "100", "sourceSetName": "res-jb", "creatorId": "x",
    "createdAt": "2024-03-01T00:00:00.000Z", "maxActApprox": 31.6, "hasVector": False, "vector": [],
    "neg_str": [" rely"], "neg_values": [-0.7], "pos_str": [" Texas"], "pos_values": [1.1], "frac_nonzero": 0.0004,
    "freq_hist_data_bar_heights": [1, 2], "freq_hist_data_bar_values": [0.5, 1.5],
    "source": {"id": "8-res-jb", "modelId": "gpt2-small"}, "lists": [], "comments": [],
    "activations": [{"id": "a1", "tokens": [" in", " Texas"], "values": [0, 31.6], "maxValue": 31.6,
                     "maxValueTokenIndex": 1, "minValue": 0, "dataIndex": "77", "binMin": -1, "binContains": -1,
                     "modelId": "gpt2-small", "layer": "8-res-jb", "index": "100", "creatorId": "x"}],
    "explanations": [{"id": "e1", "description": "the state of Texas", "typeName": "oai_token-act-pair",
                      "explanationModelName": "gpt-4o-mini", "scoreV1": 0.5, "modelId": "gpt2-small",
                      "layer": "8-res-jb", "index": "100", "authorId": "x", "votes": []}],
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real featuredb server on a free loopback port, over a small imported store."""
    from featuredb.synthetic_export import generate_export

    root = tmp_path_factory.mktemp("srv")
    generate_export(root / "export", model=MODEL, source=SOURCE, n_features=60, n_activations=4, ctx_len=8,
                    progress=False)
    with FeatureStore(root / "db.duckdb") as store:
        import_neuronpedia(store, root / "export", progress=False)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    srv = uvicorn.Server(uvicorn.Config(create_app(str(root / "db.duckdb")), host="127.0.0.1", port=port,
                                        log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not srv.started and time.time() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


def test_client_reads_features_and_searches_the_local_server(server: str) -> None:
    with NeuronpediaClient(server, api_key="k") as np_:
        f = np_.get_feature(MODEL, SOURCE, 7)
        assert f.index == "7" and len(f.activations) == 4 and f.explanations
        batch = np_.get_features([(MODEL, SOURCE, 3), (MODEL, SOURCE, 999), (MODEL, SOURCE, 1)], max_acts=2)
        assert [b.index for b in batch] == ["3", "1"] and all(len(b.activations) == 2 for b in batch)
        pages = list(np_.iter_explanations("Texas", model=MODEL, layers=[SOURCE]))
        hits = [r for p in pages for r in p.results]
        assert hits and all("Texas" in r.description for r in hits)
        assert hits[0].neuron is not None and len(hits[0].neuron.activations) == 3
        with pytest.raises(NeuronpediaNotFoundError, match="not found"):
            np_.get_feature(MODEL, SOURCE, 12345)


def test_async_client_pulls_batches_concurrently_in_order(server: str) -> None:
    async def pull() -> list[str]:
        async with AsyncNeuronpediaClient(server, concurrency=4) as np_:
            wanted = [(MODEL, SOURCE, i) for i in range(60)]
            got: list[str] = []
            async for batch in np_.iter_features(wanted, batch=7, max_acts=1):
                got.extend(f.index for f in batch)
            return got

    assert asyncio.run(pull()) == [str(i) for i in range(60)]


def _client(handler, **kw) -> NeuronpediaClient:  # type: ignore[no-untyped-def]
    return NeuronpediaClient("https://www.neuronpedia.org", api_key=kw.pop("api_key", "secret"),
                             transport=httpx.MockTransport(handler), retry=FAST, **kw)


def test_429_then_success_honours_retry_after() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(time.perf_counter())
        if len(calls) == 1:
            return httpx.Response(429, headers={"retry-after": "0.15"}, json={"message": "Too many requests"})
        return httpx.Response(200, json=NP_FEATURE)

    f = _client(handler).get_feature("gpt2-small", "8-res-jb", 100)
    assert f.pos_str == [" Texas"] and f.activations[0].maxValue == 31.6
    assert len(calls) == 2 and calls[1] - calls[0] >= 0.14


def test_server_errors_retry_then_raise_a_typed_error() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(503, text="upstream down")

    with pytest.raises(ServerError, match="server error 503 after retries"):
        _client(handler).get_feature("gpt2-small", "8-res-jb", 100)
    assert len(calls) == FAST.max_retries + 1


def test_timeouts_retry_then_raise() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) <= 2:
            raise httpx.ReadTimeout("slow", request=request)
        return httpx.Response(200, json=NP_FEATURE)

    assert _client(handler).get_feature("gpt2-small", "8-res-jb", 100).index == "100"
    calls.clear()

    def always(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("slow", request=request)

    with pytest.raises(ServerError, match="timed out"):
        _client(always).get_feature("gpt2-small", "8-res-jb", 100)


def test_malformed_json_and_401_are_typed_one_line_errors() -> None:
    bad = _client(lambda r: httpx.Response(200, text="<html>oops</html>"))
    with pytest.raises(InvalidResponseError, match="not JSON") as e:
        bad.get_feature("gpt2-small", "8-res-jb", 100)
    assert "\n" not in str(e.value)
    denied = _client(lambda r: httpx.Response(401, json={"message": "Invalid API key"}))
    with pytest.raises(UnauthorizedError, match="401 unauthorized.*Invalid API key"):
        denied.upload_features("m", "1-x", [{"index": 0}])


def test_api_key_goes_only_to_the_configured_host() -> None:
    seen: list[tuple[str, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.host, request.headers.get("x-api-key")))
        if request.url.host == "www.neuronpedia.org":
            return httpx.Response(302, headers={"location": "https://evil.example.com/api/feature/a/b/1"})
        return httpx.Response(200, json=NP_FEATURE)

    client = _client(handler)
    client.get_feature("gpt2-small", "8-res-jb", 100)
    assert seen == [("www.neuronpedia.org", "secret"), ("evil.example.com", None)]
    assert "secret" not in repr(client)


@pytest.mark.parametrize("location", [
    "http://www.neuronpedia.org/api/feature/a/b/1",        # same host, plain http
    "https://www.neuronpedia.org:8443/api/feature/a/b/1",  # same host, another port
    "https://neuronpedia.org/api/feature/a/b/1",           # another host
])
def test_api_key_is_not_resent_on_a_redirect_to_another_origin(location: str) -> None:
    seen: list[tuple[str, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers.get("x-api-key")))
        if len(seen) == 1:
            return httpx.Response(302, headers={"location": location})
        return httpx.Response(200, json=NP_FEATURE)

    _client(handler).get_feature("gpt2-small", "8-res-jb", 100)
    assert seen[0][1] == "secret" and seen[1] == (location, None)


def test_api_key_follows_a_redirect_within_the_same_origin() -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("x-api-key"))
        if len(seen) == 1:
            return httpx.Response(307, headers={"location": "https://www.neuronpedia.org:443/api/feature/a/b/1"})
        return httpx.Response(200, json=NP_FEATURE)

    _client(handler).get_feature("gpt2-small", "8-res-jb", 100)
    assert seen == ["secret", "secret"]


@pytest.mark.parametrize("header", ["-1", "nan", "inf", "-inf", "soon", "", "1e999",
                                    "Wed, 21 Oct 2015 07:28:00 GMT"])
def test_odd_retry_after_values_retry_instead_of_raising(header: str) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(time.monotonic())
        if len(calls) == 1:
            return httpx.Response(429, headers={"retry-after": header})
        return httpx.Response(200, json=NP_FEATURE)

    assert _client(handler).get_feature("gpt2-small", "8-res-jb", 100).index == "100"
    assert len(calls) == 2 and calls[1] - calls[0] < 1.0  # capped by the policy's max_delay (0.2 s)


@pytest.mark.parametrize("location", ["http://[::1", "ftp://www.neuronpedia.org/x", "javascript:alert(1)"])
def test_a_malformed_or_non_http_redirect_is_a_one_line_error(location: str) -> None:
    client = _client(lambda r: httpx.Response(302, headers={"location": location}))
    with pytest.raises(NeuronpediaError) as e:  # httpx refuses some locations itself: still one typed line
        client.get_feature("gpt2-small", "8-res-jb", 100)
    assert "\n" not in str(e.value)


def test_uploads_are_chunked_to_128_features() -> None:
    sizes = []

    def handler(request: httpx.Request) -> httpx.Response:
        import json

        sizes.append(len(json.loads(request.content)["features"]))
        return httpx.Response(200, json={"message": "ok"})

    _client(handler).upload_features("m", "1-x", [{"index": i} for i in range(300)])
    assert sizes == [128, 128, 44]
