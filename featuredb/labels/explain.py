"""LLM explanations for stored features through any OpenAI-compatible chat endpoint (`featuredb explain`).

Each feature's request is built from its stored top and interval examples and its top positive logits (see
explain_prompts); replies are written as explanations of type `type_name` by the endpoint's model, in small
committed batches, so an interrupted run keeps what it got and the next run skips those features.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import pyarrow as pa
from tqdm import tqdm

from featuredb.int_ranges import parse_int_ranges
from featuredb.errors import FeatureDBError, NotFoundError
from featuredb.labels.chat_endpoint import ChatEndpoint, ChatReply, EndpointError
from featuredb.labels.explain_prompts import (
    MAX_TOKENS,
    NP_MAX_ACT_LOGITS,
    TYPE_NAMES,
    Example,
    FeatureExamples,
    build_messages,
    parse_explanation,
)
from featuredb.store.label_tables import explain_candidates, explain_example_rows
from featuredb.store.reads import Scope, has_features

if TYPE_CHECKING:
    from featuredb.store.feature_store import FeatureStore

AUTHOR = "featuredb"
BATCH_SIZE = 16  # explanations per committed write
FLUSH_SECONDS = 2.0  # ... or sooner when replies come slowly
EXAMPLE_CHUNK = 256  # features whose examples are read with one query


@dataclass
class ExplainReport:
    """What one `explain_features` run did."""

    type_name: str
    explanation_model: str
    in_scope: int = 0  # features in scope that have examples
    without_examples: int = 0  # features in scope with no stored examples (never sent)
    not_found: int = 0  # requested indices / keys with no feature in the store
    skipped: int = 0  # already explained with this type and model (a resumed run skips them)
    explained: int = 0
    failed: int = 0
    first_error: str | None = None
    not_sent: int = 0  # left for a later run: past --max-features, or after the run stopped on errors
    stopped_early: bool = False  # the endpoint kept failing, so the run stopped sending
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    dry_run: bool = False
    estimated_prompt_tokens: int = 0  # dry run: characters / 4 over every request it would send
    would_send: int = 0  # dry run: how many requests
    first_request: dict[str, Any] | None = None  # dry run: the first request body
    errors: list[str] = field(default_factory=list, repr=False)

    @property
    def features_per_second(self) -> float:
        done = self.explained + self.failed
        return done / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("errors")
        out["features_per_second"] = round(self.features_per_second, 3)
        out["seconds"] = round(self.seconds, 3)
        if not self.dry_run:
            for k in ("estimated_prompt_tokens", "would_send", "first_request"):
                out.pop(k)
        return out


@dataclass(frozen=True)
class _Ref:
    model: str
    layer: str
    index: int
    pos_str: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.model}/{self.layer}/{self.index}"


def parse_index_spec(spec: str) -> list[int]:
    """'1,2,5-9' → [1, 2, 5, 6, 7, 8, 9] (ranges inclusive, order kept, no repeats); else a one-line error."""
    return parse_int_ranges(spec, "--indices")


def _select(store: FeatureStore, model: str, source: str | None, indices: Sequence[int] | None,
            keys: Sequence[str] | None, type_name: str, explainer: str, report: ExplainReport) -> list[_Ref]:
    """Features in scope that have examples and lack an explanation of this type by this model, in order."""
    if not has_features(store, Scope(model)):
        raise NotFoundError(f"model {model!r} has no features in the store (see `featuredb info`)")
    if source and not has_features(store, Scope(model, source)):
        raise NotFoundError(f"source {source!r} of model {model!r} has no features in the store")
    rows = explain_candidates(store, Scope(model, source), indices, keys, type_name, explainer)
    if indices is not None or keys is not None:
        wanted = len(set(indices)) if indices is not None else len({k for k in keys or [] if k.startswith(model + "/")})
        report.not_found = max(0, wanted - len(rows))
        if not rows:
            scope = "/".join(x for x in (model, source) if x)
            raise NotFoundError(f"none of the {wanted:,} requested feature(s) are in {scope} in the store")
    todo = []
    for m, layer, index, pos_str, has_examples, done in rows:
        if not has_examples:
            report.without_examples += 1
            continue
        report.in_scope += 1
        if done:
            report.skipped += 1
            continue
        todo.append(_Ref(m, layer, int(index), tuple(pos_str or ())))
    return todo


def _chunks(todo: list[_Ref]) -> Iterator[list[_Ref]]:
    """Runs of at most EXAMPLE_CHUNK features of one source (todo is ordered by source, index)."""
    chunk: list[_Ref] = []
    for ref in todo:
        if chunk and (len(chunk) >= EXAMPLE_CHUNK or (ref.model, ref.layer) != (chunk[0].model, chunk[0].layer)):
            yield chunk
            chunk = []
        chunk.append(ref)
    if chunk:
        yield chunk


def _feature_examples(store: FeatureStore, todo: list[_Ref]) -> Iterator[tuple[_Ref, FeatureExamples]]:
    """Each feature with its stored examples, read a chunk of one source at a time."""
    for chunk in _chunks(todo):
        rows = explain_example_rows(store, chunk[0].model, chunk[0].layer, [r.index for r in chunk])
        by_index: dict[int, list[Example]] = {}
        for index, tokens, values, max_value, max_index, top in rows:
            by_index.setdefault(int(index), []).append(Example(
                list(tokens or []), [float(v) if v is not None else 0.0 for v in values or []], max_value,
                int(max_index) if max_index is not None else None, bool(top)))
        for ref in chunk:
            yield ref, FeatureExamples(ref.model, ref.layer, ref.index, by_index.get(ref.index, []),
                                       list(ref.pos_str))


def _requests(store: FeatureStore, todo: list[_Ref], type_name: str) -> Iterator[tuple[_Ref, list[dict[str, str]]]]:
    for ref, feature in _feature_examples(store, todo):
        yield ref, build_messages(feature, type_name)


def _estimate_tokens(messages: list[dict[str, str]]) -> int:
    return sum(len(m.get("content", "")) for m in messages) // 4 + 4 * len(messages)


class _Writer:
    """Buffers explanations and writes them in small committed batches."""

    def __init__(self, store: FeatureStore, type_name: str, explainer: str) -> None:
        self.store, self.type_name, self.explainer = store, type_name, explainer
        self.rows: list[tuple[_Ref, str]] = []
        self.last = time.monotonic()

    def add(self, ref: _Ref, text: str) -> None:
        self.rows.append((ref, text))

    def due(self) -> bool:
        return len(self.rows) >= BATCH_SIZE or (bool(self.rows) and time.monotonic() - self.last >= FLUSH_SECONDS)

    def flush(self) -> int:
        rows, self.rows = self.rows, []
        self.last = time.monotonic()
        if not rows:
            return 0
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        n = len(rows)
        table = pa.table({
            "modelId": [r.model for r, _ in rows], "layer": [r.layer for r, _ in rows],
            "index": pa.array([r.index for r, _ in rows], pa.int64()), "description": [t for _, t in rows],
            "typeName": [self.type_name] * n, "explanationModelName": [self.explainer] * n,
            "authorId": [AUTHOR] * n, "createdAt": [now] * n, "updatedAt": [now] * n})
        self.store.upsert({"explanations": table})  # one transaction: the batch is written whole or not at all
        return n


async def explain_features_async(store: FeatureStore, endpoint: ChatEndpoint, *, model: str, source: str | None = None,
                                 indices: Sequence[int] | None = None, keys: Sequence[str] | None = None,
                                 type_name: str = NP_MAX_ACT_LOGITS, max_features: int | None = None,
                                 dry_run: bool = False, progress: bool | None = None,
                                 max_consecutive_errors: int | None = None) -> ExplainReport:
    """The coroutine behind `explain_features` (use it when an event loop is already running)."""
    if type_name not in TYPE_NAMES:
        raise FeatureDBError(f"unknown explanation type {type_name!r}; expected one of {', '.join(TYPE_NAMES)}")
    if max_features is not None and max_features < 0:
        raise FeatureDBError("--max-features must be 0 or more")
    started = time.perf_counter()
    report = ExplainReport(type_name, endpoint.model, dry_run=dry_run)
    todo = _select(store, model, source, indices, keys, type_name, endpoint.model, report)
    if max_features is not None and len(todo) > max_features:
        report.not_sent = len(todo) - max_features
        todo = todo[:max_features]
    max_tokens = MAX_TOKENS[type_name]
    if dry_run:
        for ref, messages in _requests(store, todo, type_name):
            if report.first_request is None:
                report.first_request = {"feature": ref.key, "url": f"{endpoint.url}/chat/completions",
                                        "body": {"model": endpoint.model, "messages": messages,
                                                 "max_tokens": max_tokens, "temperature": 0.0}}
            report.would_send += 1
            report.estimated_prompt_tokens += _estimate_tokens(messages)
        report.not_sent += report.would_send
        report.seconds = time.perf_counter() - started
        return report

    limit = max_consecutive_errors or max(4, 2 * endpoint.concurrency)
    writer = _Writer(store, type_name, endpoint.model)
    bar = tqdm(total=len(todo), unit="feature", desc=f"explain ({type_name})",
               disable=None if progress is None else not progress)

    async def one(ref: _Ref, messages: list[dict[str, str]]) -> tuple[_Ref, ChatReply | None, str | None, str | None]:
        """(ref, reply, explanation, error): the endpoint failed when reply is None."""
        try:
            reply = await endpoint.chat(messages, max_tokens=max_tokens, temperature=0.0)
        except EndpointError as e:
            return ref, None, None, f"feature {ref.key}: {e}"
        text = parse_explanation(reply.text, type_name)
        if text is None:
            shown = " ".join(reply.text.split())[:60]
            return ref, reply, None, f"feature {ref.key}: the reply held no usable explanation ({shown!r})"
        return ref, reply, text, None

    def fail(message: str) -> None:
        report.failed += 1
        report.first_error = report.first_error or message
        if len(report.errors) < 100:
            report.errors.append(message)

    requests = _requests(store, todo, type_name)
    pending: set[asyncio.Task[Any]] = set()
    window = 2 * endpoint.concurrency
    consecutive = 0
    try:
        while True:
            while not report.stopped_early and len(pending) < window:
                nxt = next(requests, None)
                if nxt is None:
                    break
                pending.add(asyncio.create_task(one(*nxt)))
            if not pending:
                break
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                ref, reply, text, error = task.result()
                if reply is None:
                    consecutive += 1
                else:
                    consecutive = 0
                    report.prompt_tokens += reply.prompt_tokens
                    report.completion_tokens += reply.completion_tokens
                if text is None:
                    fail(error or f"feature {ref.key}: failed")
                else:
                    writer.add(ref, text)
                bar.update(1)
            bar.set_postfix(tokens=f"{report.prompt_tokens + report.completion_tokens:,}", failed=report.failed,
                            refresh=False)
            if writer.due():
                report.explained += writer.flush()
            if consecutive >= limit and not report.stopped_early:
                report.stopped_early = True  # the endpoint keeps failing: stop sending, keep what came back
                break
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        report.explained += writer.flush()  # what arrived is kept, also when the run is interrupted
        bar.close()
        report.not_sent += len(todo) - report.explained - report.failed
        report.seconds = time.perf_counter() - started
    return report


def explain_features(store: FeatureStore, endpoint: ChatEndpoint, *, model: str, source: str | None = None,
                     indices: Sequence[int] | None = None, keys: Sequence[str] | None = None,
                     type_name: str = NP_MAX_ACT_LOGITS, max_features: int | None = None, dry_run: bool = False,
                     progress: bool | None = None, max_consecutive_errors: int | None = None) -> ExplainReport:
    """Explain the features of `model` (optionally one source, some indices, or some feature keys
    "model/source/index") that have examples and no `type_name` explanation by `endpoint.model` yet.

    Requests go out `endpoint.concurrency` at a time; explanations are committed in small batches as they
    arrive, so an interrupted run resumes where it stopped. `dry_run` sends nothing and reports the first request
    and the estimated prompt tokens. After `max_consecutive_errors` endpoint failures in a row (default twice the
    concurrency, at least 4) the run stops sending and reports what it has.
    """
    async def run() -> ExplainReport:
        try:
            return await explain_features_async(
                store, endpoint, model=model, source=source, indices=indices, keys=keys, type_name=type_name,
                max_features=max_features, dry_run=dry_run, progress=progress,
                max_consecutive_errors=max_consecutive_errors)
        finally:
            await endpoint.aclose()  # this loop's connections; the endpoint opens new ones if used again

    return asyncio.run(run())


def request_json(report: ExplainReport) -> str:
    """The dry run's first request as indented JSON."""
    return json.dumps(report.first_request, indent=2, ensure_ascii=False)
