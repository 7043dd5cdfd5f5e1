"""The Neuronpedia client against hostile servers: odd Retry-After values and redirects that fish for the key."""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Iterator

import httpx

from fault_cases.outcome import ACCEPTED, CLEAR_ERROR, SECURITY, TRACEBACK, Outcome
from featuredb.errors import FeatureDBError
from featuredb.neuronpedia import NeuronpediaClient
from featuredb.neuronpedia.client import RetryPolicy

FEATURE = {"modelId": "m", "layer": "1-x", "index": "1", "activations": [], "explanations": []}
RETRY_AFTER = ["-1", "nan", "inf", "-inf", "1e999", "soon", "", " ", "0x10", "Wed, 21 Oct 2015 07:28:00 GMT",
               "Sun, 01 Jan 2090 00:00:00 GMT", "9" * 400]
LOCATIONS = ["http://np.example.org/api/x", "https://np.example.org:8443/api/x", "https://evil.example.com/api/x",
             "//evil.example.com/api/x", "https://np.example.org@evil.example.com/x", "http://[::1",
             "javascript:alert(1)", "ftp://np.example.org/x", "https://NP.EXAMPLE.ORG/api/x", "/api/x"]
SAME_ORIGIN = {"https://NP.EXAMPLE.ORG/api/x", "/api/x"}


def _try(area: str, case: str, handler: object, check: object = None) -> Outcome:
    client = NeuronpediaClient("https://np.example.org", api_key="secret-key", transport=httpx.MockTransport(handler),
                               retry=RetryPolicy(max_retries=2, base_delay=0.01, max_delay=0.05))
    try:
        client.get_feature("m", "1-x", 1)
    except FeatureDBError as e:
        return Outcome(area, case, CLEAR_ERROR, str(e)[:120])
    except Exception:  # noqa: BLE001 - anything else is what the bench counts
        return Outcome(area, case, TRACEBACK, traceback.format_exc().strip().splitlines()[-1][:200])
    return Outcome(area, case, ACCEPTED)


def cases(work: Path) -> Iterator[Outcome]:
    """Retry-After values never raise; the key is sent only to https://np.example.org:443."""
    for value in RETRY_AFTER:
        calls: list[int] = []

        def handler(request: httpx.Request, value: str = value, calls: list[int] = calls) -> httpx.Response:
            calls.append(1)
            if len(calls) == 1:
                return httpx.Response(429, headers={"retry-after": value})
            return httpx.Response(200, json=FEATURE)

        yield _try("client", f"Retry-After {value[:30]!r}", handler)
    for location in LOCATIONS:
        leaked: list[str] = []

        def handler(request: httpx.Request, location: str = location, leaked: list[str] = leaked) -> httpx.Response:
            origin = (request.url.scheme, request.url.host, request.url.port)
            if request.headers.get("x-api-key") and origin != ("https", "np.example.org", None):
                leaked.append(str(request.url))
            if request.url.path == "/api/feature/m/1-x/1" and request.url.host == "np.example.org" \
                    and request.url.port is None and request.url.scheme == "https":
                return httpx.Response(302, headers={"location": location})
            return httpx.Response(200, json=FEATURE)

        outcome = _try("client", f"redirect to {location}", handler)
        yield Outcome("client", outcome.case, SECURITY, f"key sent to {leaked[0]}") if leaked else outcome
