"""`featuredb explain`: LLM explanations through an OpenAI-compatible endpoint (a fake one on loopback)."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse

from conftest import MODEL, SOURCE, imported_store
from fake_openai import FakeRequest, fake_openai
from featuredb import FeatureStore
from featuredb.cli.root import cli
from featuredb.labels.chat_endpoint import ChatEndpoint, EndpointError
from featuredb.labels.explain import explain_features, explain_features_async, parse_index_spec
from featuredb.labels.explain_prompts import (
    NP_MAX_ACT_LOGITS,
    OAI_TOKEN_ACT_PAIR,
    Example,
    FeatureExamples,
    build_messages,
    parse_explanation,
)

N = 12
EXPLAINER = "fake-explainer"
KEY = "sk-test-DO-NOT-LEAK-8f3a2c"
REPLY = "Method 1 succeeds: all the same token.\nExplanation: \"Texas\"."


@pytest.fixture(scope="module")
def base_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return imported_store(tmp_path_factory.mktemp("explain-base"), n_features=N, n_activations=6, ctx_len=12, n_top=4)


@pytest.fixture
def db(base_store: Path, tmp_path: Path) -> Path:
    """A fresh copy of the 12-feature store (each with synthetic gpt-4o-mini explanations)."""
    out = tmp_path / "store.duckdb"
    shutil.copy(base_store, out)
    return out


def _ours(db: Path, type_name: str = NP_MAX_ACT_LOGITS) -> list[tuple]:
    with FeatureStore(db, read_only=True) as store:
        return store.con.execute(
            'SELECT "index", description, "typeName", "explanationModelName", "authorId" FROM explanations '
            'WHERE "explanationModelName" = ? AND "typeName" = ? ORDER BY "index"', [EXPLAINER, type_name]).fetchall()


def _all_explanations(db: Path) -> list[tuple]:
    with FeatureStore(db, read_only=True) as store:
        return store.con.execute('SELECT id, "index", description, "typeName", "explanationModelName" '
                                 "FROM explanations ORDER BY ALL").fetchall()


def _cli(db: Path, url: str, *args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, ["explain", "--model", MODEL, "--endpoint", url, "--explainer-model", EXPLAINER,
                                    "--db", str(db), *args], env=env)


# -- the whole command against a real HTTP server ------------------------------------------------------------

def test_explanations_are_stored_once_and_a_second_run_sends_nothing(db: Path) -> None:
    with fake_openai(lambda req: REPLY) as server:
        res = _cli(db, server.url, "--json", "--concurrency", "4")
        assert res.exit_code == 0, res.output
        report = json.loads(res.stdout)
        assert report["explained"] == N and report["failed"] == 0 and report["skipped"] == 0
        assert report["prompt_tokens"] == 100 * N and report["completion_tokens"] == 5 * N
        sent = len(server.chat_requests)
        assert sent == N
        body = server.chat_requests[0].body
        assert body["model"] == EXPLAINER and body["temperature"] == 0.0 and body["max_tokens"] > 0
        assert "TOP_POSITIVE_LOGITS" in server.chat_requests[0].last_user
        assert "<<" in server.chat_requests[0].last_user  # the max-activating token is marked

        rows = _ours(db)
        assert [r[0] for r in rows] == list(range(N))
        assert {r[1:] for r in rows} == {("Texas", NP_MAX_ACT_LOGITS, EXPLAINER, "featuredb")}

        again = _cli(db, server.url, "--json")
        assert again.exit_code == 0, again.output
        assert json.loads(again.stdout)["skipped"] == N and json.loads(again.stdout)["explained"] == 0
        assert len(server.chat_requests) == sent  # resumed: nothing sent
        assert len(_ours(db)) == N


def test_other_type_is_explained_separately_with_its_own_prompt(db: Path) -> None:
    with fake_openai(lambda req: " words about the state of Texas.") as server:
        res = _cli(db, server.url, "--type", OAI_TOKEN_ACT_PAIR, "--indices", "0-2,7", "--json")
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["explained"] == 4
        assert "Activations:" in server.chat_requests[0].last_user
    assert [(r[0], r[1]) for r in _ours(db, OAI_TOKEN_ACT_PAIR)] == [(i, "words about the state of Texas")
                                                                     for i in (0, 1, 2, 7)]
    assert _ours(db) == []


def test_a_run_that_fails_after_n_resumes_without_duplicates(db: Path) -> None:
    def flaky(req: FakeRequest) -> Any:
        if req.n >= 5:
            return JSONResponse({"error": {"message": "overloaded"}}, 503)
        return REPLY

    with fake_openai(flaky) as server:
        res = _cli(db, server.url, "--concurrency", "1", "--retries", "0", "--json")
        assert res.exit_code == 1
        report = json.loads(res.stdout)
        assert report["explained"] == 5 and report["failed"] >= 1 and report["stopped_early"]
        assert report["explained"] + report["failed"] + report["not_sent"] == N
        assert "503" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert len(_ours(db)) == 5

    with fake_openai(lambda req: REPLY) as server:
        res = _cli(db, server.url, "--json")
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["skipped"] == 5 and json.loads(res.stdout)["explained"] == N - 5
        assert len(server.chat_requests) == N - 5
    rows = _ours(db)
    assert [r[0] for r in rows] == list(range(N))  # every feature once, no duplicates


def test_a_cancelled_run_keeps_what_arrived_and_resumes(db: Path) -> None:
    with fake_openai(lambda req: REPLY) as server:
        async def run_and_cancel() -> None:
            with FeatureStore(db) as store:
                endpoint = ChatEndpoint(server.url, EXPLAINER, concurrency=1)
                task = asyncio.create_task(explain_features_async(store, endpoint, model=MODEL, progress=False))
                while len(server.chat_requests) < 6:
                    await asyncio.sleep(0.005)
                task.cancel()  # as Ctrl-C does to asyncio.run's main task
                with pytest.raises(asyncio.CancelledError):
                    await task
                await endpoint.aclose()

        asyncio.run(run_and_cancel())
        kept = len(_ours(db))
        sent = len(server.chat_requests)
        # replies that arrived before the cancel were committed (a loaded machine may send a few more before the
        # cancel lands, so the bound is what was sent, not 6)
        assert 4 <= kept <= sent < N
        with FeatureStore(db) as store:
            report = explain_features(store, ChatEndpoint(server.url, EXPLAINER), model=MODEL, progress=False)
        assert report.skipped == kept and report.explained == N - kept
    assert [r[0] for r in _ours(db)] == list(range(N))


def test_dry_run_sends_nothing_and_prints_the_first_request(db: Path) -> None:
    before = _all_explanations(db)
    with fake_openai(lambda req: REPLY) as server:
        res = _cli(db, server.url, "--dry-run", "--source", SOURCE)
        assert res.exit_code == 0, res.output
        assert server.requests == []
    out = res.stdout
    first = json.loads(out[:out.rindex("}") + 1])
    assert first["feature"] == f"{MODEL}/{SOURCE}/0" and first["url"].endswith("/v1/chat/completions")
    assert first["body"]["model"] == EXPLAINER and first["body"]["messages"][0]["role"] == "system"
    assert f"would send {N} request(s)" in out and "prompt tokens" in out and "nothing sent" in out
    assert _all_explanations(db) == before

    with fake_openai(lambda req: REPLY) as server:
        res = _cli(db, server.url, "--dry-run", "--json", "--max-features", "2")
        report = json.loads(res.stdout)
        assert report["would_send"] == 2 and report["estimated_prompt_tokens"] > 0 and report["first_request"]
        assert server.requests == []


def test_max_features_caps_what_is_sent(db: Path) -> None:
    with fake_openai(lambda req: REPLY) as server:
        res = _cli(db, server.url, "--max-features", "3", "--json")
        assert res.exit_code == 0, res.output
        report = json.loads(res.stdout)
        assert report["explained"] == 3 and report["not_sent"] == N - 3
        assert len(server.chat_requests) == 3
    assert len(_ours(db)) == 3


def test_graph_selects_only_its_features(db: Path, tmp_path: Path) -> None:
    def node(node_id: str, feature: int | None, layer: str, ctx: int, kind: str) -> dict[str, Any]:
        return {"node_id": node_id, "feature": feature, "layer": layer, "ctx_idx": ctx, "feature_type": kind,
                "jsNodeId": f"{node_id}-0", "clerp": ""}

    nodes = [node("E_651_0", None, "E", 0, "embedding"), node("6_3_1", 3, "6", 1, "cross layer transcoder"),
             node("6_5_2", 5, "6", 2, "cross layer transcoder"), node("6_3_2", 3, "6", 2, "cross layer transcoder"),
             node("31_3_2", 3, "31", 2, "logit")]
    graph = {"metadata": {"slug": "g", "scan": MODEL, "prompt_tokens": ["a", "b", "c"], "prompt": "abc",
                          "feature_details": {"neuronpedia_source_set": SOURCE.split("-", 1)[1]}},
             "qParams": {}, "nodes": nodes, "links": []}
    path = tmp_path / "graph.json"
    path.write_text(json.dumps(graph))
    with fake_openai(lambda req: REPLY) as server:
        res = _cli(db, server.url, "--graph", str(path), "--json")
        assert res.exit_code == 0, res.output
        assert len(server.chat_requests) == 2
    assert [r[0] for r in _ours(db)] == [3, 5]


def test_the_key_goes_only_to_the_endpoint_and_never_into_output(db: Path) -> None:
    env = {"FAKE_EXPLAINER_KEY": KEY}
    with fake_openai(lambda req: REPLY) as server:
        res = _cli(db, server.url, "--key-env", "FAKE_EXPLAINER_KEY", "--json", "--max-features", "2", env=env)
        assert res.exit_code == 0, res.output
        assert [r.headers.get("authorization") for r in server.requests] == [f"Bearer {KEY}"] * 2
        assert KEY not in res.stdout + res.stderr
        dry = _cli(db, server.url, "--key-env", "FAKE_EXPLAINER_KEY", "--dry-run", env=env)
        assert KEY not in dry.stdout + dry.stderr

    # No key in the environment: no Authorization header at all (local servers).
    with fake_openai(lambda req: REPLY) as server:
        res = _cli(db, server.url, "--key-env", "FAKE_EXPLAINER_KEY_UNSET", "--max-features", "1")
        assert res.exit_code == 0, res.output
        assert "authorization" not in server.requests[0].headers

    # A redirect to another host is not followed: the other host never sees the request or the key.
    with fake_openai(lambda req: REPLY) as other:
        with fake_openai(lambda req: RedirectResponse(f"{other.url}/chat/completions", 307)) as server:
            res = _cli(db, server.url, "--key-env", "FAKE_EXPLAINER_KEY", "--retries", "0", "--json", env=env)
            assert res.exit_code == 1
            assert other.requests == []
            assert server.requests[0].headers["authorization"] == f"Bearer {KEY}"
            assert "redirect" in res.stderr and len(res.stderr.strip().splitlines()) == 1
            assert KEY not in res.stdout + res.stderr
    with fake_openai(lambda req: JSONResponse({"error": {"message": f"bad key {KEY}"}}, 401)) as server:
        res = _cli(db, server.url, "--key-env", "FAKE_EXPLAINER_KEY", "--json", env=env)
        assert res.exit_code == 1 and "401" in res.stderr and "FAKE_EXPLAINER_KEY" in res.stderr
        assert KEY not in res.stdout + res.stderr
    assert KEY not in repr(ChatEndpoint("http://127.0.0.1:1/v1", "m", key_env="FAKE_EXPLAINER_KEY"))


def test_bad_input_is_one_line_and_non_zero(db: Path) -> None:
    def err(res) -> str:  # type: ignore[no-untyped-def]
        assert res.exit_code != 0
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("featuredb: error:"), res.stderr
        return lines[0]

    with fake_openai(lambda req: REPLY) as server:
        assert "no-such-model" in err(CliRunner().invoke(cli, [
            "explain", "--model", "no-such-model", "--endpoint", server.url, "--explainer-model", EXPLAINER,
            "--db", str(db)]))
        assert "--indices" in err(_cli(db, server.url, "--indices", "3-x"))
        assert "none of the" in err(_cli(db, server.url, "--indices", "5000-5005"))
        assert "no-such-source" in err(_cli(db, server.url, "--source", "no-such-source"))
        assert "bad endpoint URL" in err(_cli(db, "ftp://example.com/v1"))
        assert server.requests == []
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    line = err(_cli(db, f"http://127.0.0.1:{port}/v1", "--retries", "0", "--concurrency", "2"))
    assert "cannot reach 127.0.0.1" in line and "stopped" in line
    assert _ours(db) == []


def test_help_has_an_example() -> None:
    out = CliRunner().invoke(cli, ["explain", "--help"]).output
    assert "Example:" in out and "--endpoint" in out and "--dry-run" in out


# -- retries and bad replies, with httpx.MockTransport --------------------------------------------------------

def _ok(content: str = REPLY) -> httpx.Response:
    return httpx.Response(200, json={"id": "x", "object": "chat.completion", "created": 0, "model": EXPLAINER,
                                     "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                                  "finish_reason": "stop"}],
                                     "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}})


def _endpoint(responses: list[Any], slept: list[float], **kw: Any) -> tuple[ChatEndpoint, list[httpx.Request]]:
    """An endpoint whose transport answers from `responses` in turn (the last one repeats)."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        out = responses[min(len(seen) - 1, len(responses) - 1)]
        if isinstance(out, Exception):
            raise out
        return out

    endpoint = ChatEndpoint("http://llm.test/v1", EXPLAINER, transport=httpx.MockTransport(handler), **kw)

    async def no_wait(seconds: float) -> None:
        slept.append(seconds)

    endpoint._sleep = no_wait  # type: ignore[method-assign]
    return endpoint, seen


def _chat(endpoint: ChatEndpoint) -> Any:
    return asyncio.run(endpoint.chat([{"role": "user", "content": "hi"}]))


def test_429_with_retry_after_then_success() -> None:
    slept: list[float] = []
    endpoint, seen = _endpoint([httpx.Response(429, headers={"Retry-After": "7"}, json={"error": "slow down"}),
                                _ok()], slept)
    reply = _chat(endpoint)
    assert reply.text == REPLY and (reply.prompt_tokens, reply.completion_tokens) == (7, 2)
    assert slept == [7.0] and len(seen) == 2
    assert str(seen[0].url) == "http://llm.test/v1/chat/completions"
    assert json.loads(seen[0].content)["messages"] == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("first", [httpx.Response(500, text="boom"), httpx.Response(502),
                                   httpx.ReadTimeout("slow"), httpx.ConnectError("refused")])
def test_5xx_timeouts_and_connection_errors_are_retried_with_backoff(first: Any) -> None:
    slept: list[float] = []
    endpoint, seen = _endpoint([first, first, _ok()], slept)
    assert _chat(endpoint).text == REPLY
    assert len(seen) == 3 and len(slept) == 2 and 0 < slept[0] <= slept[1] * 2  # exponential, with jitter


def test_retries_run_out_into_one_clear_error() -> None:
    slept: list[float] = []
    endpoint, seen = _endpoint([httpx.Response(503, json={"error": {"message": "overloaded"}})], slept,
                               max_retries=3)
    with pytest.raises(EndpointError) as e:
        _chat(endpoint)
    assert len(seen) == 4 and len(slept) == 3
    assert "503" in str(e.value) and "overloaded" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("bad, message", [
    (httpx.Response(200, text="<html>not json</html>"), "not JSON"),
    (httpx.Response(200, json={"id": "x", "object": "chat.completion", "choices": []}), "no choices"),
    (httpx.Response(200, json={"choices": [{"index": 0, "message": {"role": "assistant"}}]}), "no message content"),
])
def test_unusable_replies_count_as_failed_and_write_nothing(db: Path, bad: httpx.Response, message: str) -> None:
    before = _all_explanations(db)
    slept: list[float] = []
    endpoint, seen = _endpoint([bad], slept, max_retries=1, concurrency=2)
    with FeatureStore(db) as store:
        report = explain_features(store, endpoint, model=MODEL, indices=[0, 1, 2], progress=False)
    assert report.explained == 0 and report.failed == 3 and len(seen) == 6
    assert message in report.first_error and "\n" not in report.first_error
    assert report.first_error.startswith(f"feature {MODEL}/{SOURCE}/")
    assert _all_explanations(db) == before


def test_a_reply_without_an_explanation_is_failed_not_stored(db: Path) -> None:
    slept: list[float] = []
    endpoint, _ = _endpoint([_ok("Method 1 fails.\nMethod 2 fails.\nExplanation: method 3")], slept)
    with FeatureStore(db) as store:
        report = explain_features(store, endpoint, model=MODEL, indices=[4], progress=False)
    assert report.failed == 1 and "no usable explanation" in report.first_error
    assert _ours(db) == []


def test_an_endpoint_object_serves_several_runs() -> None:
    slept: list[float] = []
    endpoint, seen = _endpoint([_ok()], slept)
    assert _chat(endpoint).text == REPLY
    assert _chat(endpoint).text == REPLY  # a second asyncio.run: a new pool, no "attached to another loop"
    asyncio.run(endpoint.aclose())
    assert len(seen) == 2


# -- prompts and parsing --------------------------------------------------------------------------------------

def test_prompts_mark_the_peak_and_list_logits() -> None:
    ex = [Example([" the", " big", " Texas", " city"], [0.0, 0.5, 3.0, 0.1], 3.0, 2, True),
          Example([" in", " Dallas", ",", " TX"], [0.0, 2.0, 0.0, 0.0], 2.0, None, False)]
    feature = FeatureExamples(MODEL, SOURCE, 1, ex, ["\u2581Austin", " Houston", "\n", ""])
    np_user = build_messages(feature, NP_MAX_ACT_LOGITS)[-1]["content"]
    assert " the big <<Texas>> city" in np_user and " in <<Dallas>>, TX" in np_user
    logits = np_user.split("<TOP_POSITIVE_LOGITS>")[1].split("</TOP_POSITIVE_LOGITS>")[0].split()
    assert logits == ["Austin", "Houston"]
    oai = build_messages(feature, OAI_TOKEN_ACT_PAIR)
    assert oai[0]["role"] == "system" and oai[-1]["role"] == "user"
    assert " Texas\t10" in oai[-1]["content"] and " Dallas\t7" in oai[-1]["content"]
    assert oai[-1]["content"].endswith("the main thing this neuron does is find")


@pytest.mark.parametrize("reply, expected", [
    ("Method 1 fails: no.\nMethod 2 succeeds: they start with w.\nExplanation: say \"w\" words", 'say "w" words'),
    ('"fruits".', "fruits"),
    ("Explanation: **Texas**", "Texas"),
    ("**Explanation:** US states", "US states"),
    ("<think>Explanation: wrong</think>\nExplanation: cities", "cities"),
    (" present tense verbs ending in 'ing'.", "present tense verbs ending in 'ing'"),
    ("the main thing this neuron does is find words about cats.", "words about cats"),
    ("Explanation:\n`code`", "code"),
    ("", None), ("   \n  ", None), ("Explanation: Method 3", None), ('""', None),
])
def test_parse_explanation(reply: str, expected: str | None) -> None:
    assert parse_explanation(reply) == expected


def test_parse_index_spec() -> None:
    assert parse_index_spec("1,2,5-9") == [1, 2, 5, 6, 7, 8, 9]
    assert parse_index_spec("3, 3,1") == [3, 1]
    for bad in ("", "a", "9-5", "1,,2", "-1"):
        with pytest.raises(Exception, match="--indices"):
            parse_index_spec(bad)
