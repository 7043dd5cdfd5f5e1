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
from typing import Any, Iterator

from featuredb.errors import NotFoundError

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


def _explanation_filter(type_name: str | None) -> tuple[str, list[Any]]:
    cond = "coalesce(trim(description), '') <> ''"
    if type_name:
        return cond + ' AND "typeName" = ?', [type_name]
    return cond, []


def scored_features(store: Any, *, model: str, source: str | list[str] | None = None,
                    type_name: str | None = None) -> dict[str, list[int]]:
    """source -> sorted indices of the features with an explanation to score (of `type_name` when given), in
    `source` (one source or a list of them) or every source of the model."""
    if not store.con.execute('SELECT 1 FROM features WHERE "modelId" = ? LIMIT 1', [model]).fetchone() and \
            not store.con.execute('SELECT 1 FROM explanations WHERE "modelId" = ? LIMIT 1', [model]).fetchone():
        raise NotFoundError(f"model {model!r} is not in {store.path}")
    cond, params = _explanation_filter(type_name)
    sql = f'SELECT "layer", list(DISTINCT "index" ORDER BY "index") FROM explanations WHERE "modelId" = ? AND {cond}'
    args: list[Any] = [model, *params]
    sources = [source] if isinstance(source, str) else list(source or [])
    if sources:
        sql += ' AND "layer" IN (SELECT unnest(?::VARCHAR[]))'
        args.append(sources)
    out = {s: list(ix) for s, ix in store.con.execute(sql + " GROUP BY 1 ORDER BY 1", args).fetchall()}
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


# Ranks on the narrow columns first and reads the token and value lists of the chosen rows only: carrying
# 128-long lists through the window sorts made this read most of a scoring run's non-model time.
_WINDOWS_SQL = """
WITH a AS (
    SELECT "index", id, "maxValue" AS mv, coalesce("binMin", -1) = -1 AS top, "binMin" AS bin
    FROM activations
    WHERE "modelId" = $model AND "layer" = $source AND "index" BETWEEN $lo AND $hi
      AND "maxValueTokenIndex" IS NOT NULL AND "index" IN (SELECT unnest($wanted::BIGINT[]))),
r AS (SELECT *, row_number() OVER (PARTITION BY "index", top, bin ORDER BY mv DESC NULLS LAST, id) AS rb FROM a),
q AS (SELECT "index", id, top, bin,
             row_number() OVER (PARTITION BY "index", top ORDER BY CASE WHEN top THEN 0 ELSE rb END,
             CASE WHEN top THEN mv ELSE bin END DESC NULLS LAST, mv DESC NULLS LAST, id) AS rn FROM r),
x AS (SELECT q.*, t.tokens, t."values", t."maxValueTokenIndex" AS p, len(t.tokens) AS n
      FROM q JOIN activations t ON t.id = q.id
      WHERE q.rn <= $k AND t."modelId" = $model AND t."layer" = $source AND t."index" BETWEEN $lo AND $hi
        AND len(t.tokens) > 0),
w AS (SELECT *, greatest(0, least(n - $width, CAST(ceil((p - ($width - 1 - $after)) / $snap) AS BIGINT) * $snap)) AS st,
             CASE WHEN p >= n / 2 THEN 0 ELSE greatest(0, n - $width) END AS fs
      FROM x)
SELECT "index", top, bin, list_slice(tokens, st + 1, st + $width), list_slice("values", st + 1, st + $width), p - st,
       CASE WHEN top AND rn <= $far AND abs(fs - st) >= $width
                 AND coalesce(list_max(list_slice("values", fs + 1, fs + $width)), 0) <= 0
            THEN list_slice(tokens, fs + 1, fs + $width) END
FROM w ORDER BY "index", top DESC, rn
"""


def read_chunk(store: Any, model: str, source: str, indices: list[int], spec: WindowSpec,
               type_name: str | None = None) -> Chunk:
    """The features `indices` of one source: explanations to score and windows of their examples."""
    con = store.con
    feats = {i: FeatureExamples(model, source, i) for i in indices}
    cond, params = _explanation_filter(type_name)
    rows = con.execute(
        f'SELECT "index", id, description, "typeName" FROM explanations WHERE "modelId" = ? AND "layer" = ? '
        f'AND "index" BETWEEN ? AND ? AND {cond} ORDER BY "index", id',
        [model, source, indices[0], indices[-1], *params]).fetchall()
    for index, eid, desc, type_ in rows:
        if index in feats:
            feats[index].explanations.append((eid, desc, type_))
    k = spec.n_top + spec.n_interval
    tops: dict[int, list[Window]] = {}
    intervals: dict[int, list[Window]] = {}
    for index, top, bin_min, toks, vals, peak, far in con.execute(_WINDOWS_SQL, {
            "model": model, "source": source, "lo": indices[0], "hi": indices[-1], "wanted": indices,
            "width": spec.width, "after": spec.after, "snap": max(1, spec.snap), "k": k,
            "far": spec.n_far}).fetchall():
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


def iter_chunks(store: Any, *, model: str, source: str | list[str] | None, type_name: str | None, spec: WindowSpec,
                chunk: int) -> tuple[int, Iterator[Chunk]]:
    """(features in scope, chunks of at most `chunk` features of one source each, in source and index order)."""
    plan = scored_features(store, model=model, source=source, type_name=type_name)
    total = sum(len(v) for v in plan.values())

    def gen() -> Iterator[Chunk]:
        for src, indices in plan.items():
            for part in chunk_bounds(indices, chunk):
                yield read_chunk(store, model, src, part, spec, type_name)

    return total, gen()
