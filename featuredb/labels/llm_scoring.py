"""delphi's detection (Neuronpedia's `eleuther_recall`) and fuzzing (`eleuther_fuzz`) scores through a chat endpoint.

Detection: the LLM reads the explanation and batches of example texts, half of them windows of the feature's
activating examples and half windows of other features' examples of the same source, and says which fit.
Fuzzing: the LLM reads the feature's activating windows with tokens marked << >>, half marked where the feature
fires (values >= 0.3 x the window's max, delphi's threshold) and half marked at as many random positions where
it does not, and says which markings fit the explanation. Score = balanced accuracy of the LLM's answers (a reply
that cannot be parsed counts as wrong): 1.0 for a perfect judge, 0.5 for chance.

jsonDetails follows Neuronpedia's fuzz/recall breakdown: [{text, distance, ground_truth, prediction, highlighted,
correct, probability, conditional_probability, activations, str_tokens}] (prediction -1: no usable answer).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import sys
import time
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from tqdm import tqdm

from featuredb.labels.chat_endpoint import ChatEndpoint
from featuredb.labels.embedding_score import ScoreSummary
from featuredb.labels.example_windows import Chunk, FeatureExamples, Window, WindowSpec, iter_chunks
from featuredb.store.score_tables import FUZZ_TYPE, RECALL_TYPE, write_scores
from featuredb.labels.scoring_prompts import messages

if TYPE_CHECKING:
    from featuredb.store.feature_store import FeatureStore

KINDS = {"detection": RECALL_TYPE, "fuzz": FUZZ_TYPE}
LLM_SPEC = WindowSpec(n_top=3, n_interval=2, n_far=0, width=32, after=5, snap=1)  # delphi: 32 tokens, 5/6 before
EXAMPLES_SHOWN = 5  # examples per request, as in delphi's few-shot prompts
THRESHOLD = 0.3  # delphi: a token is active at >= 0.3 x the example's max
MAX_REPLY_TOKENS = 64
CHUNK_FEATURES = 128
L, R = "<<", ">>"


@dataclass
class Sample:
    """One example shown to the LLM and what it is."""

    window: Window
    text: str
    activating: bool  # ground truth: detection: from the feature's examples; fuzz: correctly highlighted
    distance: int  # 1 top example, 2 interval example, -1 another feature's (non-activating) window
    highlighted: bool


def _shown(token: str) -> str:
    return token.replace("\r", "\\r").replace("\n", "\\n")


def _plain(w: Window) -> str:
    return "".join(_shown(t) for t in w.tokens)


def highlight(tokens: list[str], marked: Callable[[int], bool]) -> str:
    """Tokens joined, runs of marked tokens wrapped in << >> (delphi's _highlight)."""
    out, run = [], False
    for i, t in enumerate(tokens):
        m = marked(i)
        if m and not run:
            out.append(L)
        elif run and not m:
            out.append(R)
        out.append(_shown(t))
        run = m
    if run:
        out.append(R)
    return "".join(out)


def _active(w: Window) -> list[int]:
    top = max(w.values, default=0.0)
    return [i for i, v in enumerate(w.values) if top > 0 and v >= THRESHOLD * top]


def detection_samples(f: FeatureExamples, negatives: list[Window]) -> list[Sample]:
    """The feature's activating windows and as many other windows, unmarked."""
    out = [Sample(w, _plain(w), True, 1 if w.top else 2, False) for w in f.positives]
    out += [Sample(w, _plain(w), False, -1, False) for w in negatives]
    return out


def fuzz_samples(f: FeatureExamples, rng: np.random.Generator) -> list[Sample]:
    """Each activating window twice: marked where the feature fires, and marked at random positions where it
    does not (as many as the windows' mean count of active tokens, delphi's n_incorrect)."""
    if not f.positives:
        return []
    n_wrong = max(1, math.ceil(np.mean([len(_active(w)) for w in f.positives])))
    out = []
    for w in f.positives:
        right = set(_active(w))
        dist = 1 if w.top else 2
        out.append(Sample(w, highlight(w.tokens, right.__contains__), True, dist, True))
        quiet = [i for i in range(len(w.tokens)) if i not in right]
        if quiet:
            wrong = set(rng.choice(quiet, size=min(n_wrong, len(quiet)), replace=False).tolist())
            out.append(Sample(w, highlight(w.tokens, wrong.__contains__), False, dist, True))
    return out


_LIST = re.compile(r"\[[^\[\]]*\]")


def parse_predictions(text: str, n: int) -> list[int] | None:
    """The first [..] list of n 0/1 answers in a reply (True/False and "1"/"0" accepted); None if there is none."""
    for m in _LIST.finditer(text):
        try:
            items = json.loads(m.group(0).replace("True", "1").replace("False", "0").replace("'", '"'))
        except ValueError:
            continue
        try:
            vals = [int(x) for x in items]
        except (TypeError, ValueError):
            continue
        if len(vals) == n and all(v in (0, 1) for v in vals):
            return vals
    return None


def balanced_accuracy(samples: list[Sample], predictions: list[int | None]) -> float:
    """Mean of the recall on activating samples and on the others (an unanswered sample counts as wrong)."""
    parts = []
    for truth in (True, False):
        got = [p == int(truth) for s, p in zip(samples, predictions) if s.activating == truth]
        if got:
            parts.append(sum(got) / len(got))
    return float(np.mean(parts)) if parts else float("nan")


async def _judge(endpoint: ChatEndpoint, kind: str, explanation: str, samples: list[Sample],
                 rng: np.random.Generator) -> list[int | None]:
    """Shuffle, ask in batches of EXAMPLES_SHOWN, and return predictions in the samples' order."""
    order = rng.permutation(len(samples))
    preds: list[int | None] = [None] * len(samples)

    async def batch(idx: np.ndarray) -> None:
        reply = await endpoint.chat(messages(kind, explanation, [samples[i].text for i in idx]),
                                    max_tokens=MAX_REPLY_TOKENS, temperature=0.0)
        got = parse_predictions(reply.text, len(idx))
        if got is not None:
            for i, p in zip(idx, got):
                preds[int(i)] = p

    await asyncio.gather(*(batch(order[i:i + EXAMPLES_SHOWN]) for i in range(0, len(order), EXAMPLES_SHOWN)))
    return preds


def _details(samples: list[Sample], preds: list[int | None]) -> str:
    rows = []
    for s, p in zip(samples, preds):
        w = s.window
        rows.append({"text": s.text, "distance": s.distance, "ground_truth": s.activating,
                     "prediction": -1 if p is None else p, "highlighted": s.highlighted,
                     "correct": None if p is None else p == int(s.activating), "probability": None,
                     "conditional_probability": None,
                     "activations": [round(v, 4) for v in w.values] if s.distance != -1 else [0.0] * len(w.tokens),
                     "str_tokens": w.tokens})
    return json.dumps(rows, ensure_ascii=False)


async def _score_chunk(endpoint: ChatEndpoint, chunk: Chunk, kinds: list[str], seed: int) -> list[dict[str, Any]]:
    pool = [(fi, w) for fi, f in enumerate(chunk.features) for w in f.positives]
    source_seed = zlib.crc32(chunk.source.encode())
    jobs = []
    for fi, f in enumerate(chunk.features):
        if not f.explanations or not f.positives:
            continue
        rng = np.random.default_rng([seed, source_seed, f.index])
        own_text = {w.text for w in f.positives}
        others = [w for o, w in pool if o != fi and w.text not in own_text]
        picks = rng.choice(len(others), size=min(len(f.positives), len(others)), replace=False) if others else []
        negatives = [others[int(i)] for i in picks]
        for kind in kinds:
            samples = detection_samples(f, negatives) if kind == "detection" else fuzz_samples(f, rng)
            if not any(s.activating for s in samples) or all(s.activating for s in samples):
                continue
            for eid, desc, _type in f.explanations:
                jobs.append((kind, eid, desc, samples, np.random.default_rng([seed, source_seed, f.index, 1])))

    async def run(kind: str, eid: str, desc: str, samples: list[Sample], rng: np.random.Generator) -> dict[str, Any]:
        preds = await _judge(endpoint, kind, desc, samples, rng)
        return {"explanationId": eid, "value": balanced_accuracy(samples, preds),
                "explanationScoreTypeName": KINDS[kind], "explanationScoreModelName": endpoint.model,
                "jsonDetails": _details(samples, preds)}

    return list(await asyncio.gather(*(run(*j) for j in jobs)))


def score_with_llm(store: FeatureStore, endpoint: ChatEndpoint, *, model: str, source: str | None = None,
                   type_name: str | None = None, kinds: tuple[str, ...] = ("detection", "fuzz"),
                   spec: WindowSpec = LLM_SPEC, chunk: int = CHUNK_FEATURES, seed: int = 0,
                   progress: bool | None = None, write: bool = True) -> list[ScoreSummary]:
    """Detection and/or fuzzing scores of every explanation (of `type_name`, else all) in scope, written chunk by
    chunk (a failure keeps the chunks already scored)."""
    for k in kinds:
        if k not in KINDS:
            raise ValueError(f"unknown LLM score kind {k!r}")
    t0 = time.perf_counter()
    total, chunks = iter_chunks(store, model=model, source=source, type_name=type_name, spec=spec, chunk=chunk)
    summaries = {k: ScoreSummary(k, KINDS[k], endpoint.model, features=total) for k in kinds}
    values: dict[str, list[float]] = {k: [] for k in kinds}
    bar = tqdm(total=total, unit="feature", desc="LLM scores", file=sys.stderr, smoothing=0.1,
               disable=None if progress is None else not progress)

    async def main() -> None:
        try:
            for c in chunks:
                rows = await _score_chunk(endpoint, c, list(kinds), seed)
                for r in rows:
                    kind = "detection" if r["explanationScoreTypeName"] == RECALL_TYPE else "fuzz"
                    summaries[kind].explanations += 1
                    values[kind].append(r["value"])
                n_exp = sum(len(f.explanations) for f in c.features)
                for k in kinds:
                    summaries[k].skipped += n_exp - sum(1 for r in rows if r["explanationScoreTypeName"] == KINDS[k])
                if write and rows:
                    write_scores(store, rows)
                bar.update(len(c.features))
        finally:
            await endpoint.aclose()

    try:
        asyncio.run(main())
    finally:
        bar.close()
    for k, s in summaries.items():
        s.seconds = time.perf_counter() - t0
        s.mean_score = float(np.mean(values[k])) if values[k] else None
    return list(summaries.values())
