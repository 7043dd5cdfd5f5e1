"""What explanation scorers read: features with explanations, in chunks, and short windows of their examples.

A window is `width` tokens of one activation example around its peak (`maxValueTokenIndex`), ending `after`
tokens past it as delphi's centred examples do; its start is rounded to a multiple of `snap`, so features that
peak near the same place of the same text share one window (embedded once). Positives are a feature's top
examples and interval examples (one per bin, highest bins first); `far` windows are the end of a top example's
text away from its peak where the feature is 0 (delphi-style non-activating text of the same example).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Iterator

from featuredb.errors import NotFoundError
from featuredb.store.label_tables import (
    example_window_rows,
    explained_indices,
    explanations_to_score,
    model_has_rows,
)

if TYPE_CHECKING:
    from featuredb.store.feature_store import FeatureStore

SPECIAL_TOKEN = re.compile(r"^<\|[^|]*\|>$|^<s>$|^</s>$|^<bos>$|^<eos>$")


@dataclass(frozen=True)
class WindowSpec:
    """Which windows to read: counts per feature and their shape."""

    n_top: int = 3
    n_interval: int = 2
    n_far: int = 0
    width: int = 16
    after: int = 3
    snap: int = 4


@dataclass
class Window:
    """A slice of one example: its tokens, the feature's values on them, where the peak is, and its kind."""

    tokens: list[str]
    values: list[float]
    peak: int  # index of maxValueTokenIndex inside the window (-1 for a far window)
    top: bool  # a top example (else an interval example or a far window)
    bin_min: float | None = None

    @cached_property
    def text(self) -> str:
        return "".join("" if SPECIAL_TOKEN.match(t.strip()) else t for t in self.tokens)


@dataclass
class FeatureExamples:
    """One feature of a chunk: its explanations to score and its example windows."""

    model: str
    source: str
    index: int
    explanations: list[tuple[str, str, str]] = field(default_factory=list)  # (id, description, typeName)
    positives: list[Window] = field(default_factory=list)
    far: list[Window] = field(default_factory=list)


@dataclass
class Chunk:
    """Features of one source, consecutive by index."""

    model: str
    source: str
    features: list[FeatureExamples]


def scored_features(store: FeatureStore, *, model: str, source: str | list[str] | None = None,
                    type_name: str | None = None) -> dict[str, list[int]]:
    """source -> sorted indices of the features with an explanation to score (of `type_name` when given), in
    `source` (one source or a list of them) or every source of the model."""
    if not model_has_rows(store, model):
        raise NotFoundError(f"model {model!r} is not in {store.path}")
    sources = [source] if isinstance(source, str) else list(source or [])
    out = explained_indices(store, model, sources, type_name)
    if not out:
        what = ", ".join(f"{model}/{s}" for s in sources) if sources else model
        kind = f" of type {type_name!r}" if type_name else ""
        raise NotFoundError(f"no explanations{kind} to score in {what} (write some with `featuredb label features`)")
    return out


def chunk_bounds(indices: list[int], chunk: int) -> list[list[int]]:
    """Split sorted indices into near-equal consecutive chunks of at most `chunk` (no tiny last chunk)."""
    n = len(indices)
    k = max(1, -(-n // max(1, chunk)))
    size = -(-n // k)
    return [indices[i:i + size] for i in range(0, n, size)]


def read_chunk(store: FeatureStore, model: str, source: str, indices: list[int], spec: WindowSpec,
               type_name: str | None = None) -> Chunk:
    """The features `indices` of one source: explanations to score and windows of their examples."""
    feats = {i: FeatureExamples(model, source, i) for i in indices}
    for index, eid, desc, type_ in explanations_to_score(store, model, source, indices[0], indices[-1], type_name):
        if index in feats:
            feats[index].explanations.append((eid, desc, type_))
    k = spec.n_top + spec.n_interval
    tops: dict[int, list[Window]] = {}
    intervals: dict[int, list[Window]] = {}
    for index, top, bin_min, toks, vals, peak, far in example_window_rows(store, model, source, indices, spec):
        w = Window(list(toks), [float(v or 0.0) for v in vals], int(peak), bool(top), bin_min)
        (tops if top else intervals).setdefault(index, []).append(w)
        if far is not None:
            feats[index].far.append(Window(list(far), [0.0] * len(far), -1, False))
    for i, f in feats.items():
        t, iv = tops.get(i, []), intervals.get(i, [])
        n_t = min(len(t), spec.n_top + max(0, spec.n_interval - len(iv)))  # fill from the other kind
        n_i = min(len(iv), k - n_t)
        f.positives = t[:n_t] + iv[:n_i]
    return Chunk(model, source, [feats[i] for i in indices])


def iter_chunks(store: FeatureStore, *, model: str, source: str | list[str] | None, type_name: str | None,
                spec: WindowSpec,
                chunk: int) -> tuple[int, Iterator[Chunk]]:
    """(features in scope, chunks of at most `chunk` features of one source each, in source and index order)."""
    plan = scored_features(store, model=model, source=source, type_name=type_name)
    total = sum(len(v) for v in plan.values())

    def gen() -> Iterator[Chunk]:
        for src, indices in plan.items():
            for part in chunk_bounds(indices, chunk):
                yield read_chunk(store, model, src, part, spec, type_name)

    return total, gen()
