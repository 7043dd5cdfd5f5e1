"""delphi's embedding scorer, offline: how well an explanation's embedding picks out the text its feature fires on.

For each explanation: embed it with the local all-MiniLM-L6-v2, embed windows of its feature's activating examples
(positives) and windows of other features' examples of the same source, sampled deterministically (negatives,
as delphi samples non-activating text), and score the AUROC of cosine similarity, positives against negatives:
1.0 when every activating window is closer to the explanation than every other one, 0.5 for chance.

Written as Neuronpedia's ExplanationScore of type `eleuther_embedding` (and as the explanation's scoreV2), its
jsonDetails in Neuronpedia's embedding breakdown shape: [{text, distance, similarity, activations, str_tokens}].
"""

from __future__ import annotations

import json
import sys
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from featuredb.labels.example_windows import Chunk, Window, WindowSpec, iter_chunks
from featuredb.store.feature_store import FeatureStore
from featuredb.store.reads import stored_text_embeddings
from featuredb.store.score_tables import EMBEDDING_TYPE, write_scores
from featuredb.search.embedder import DIM, embed, embedding_text

EMBEDDING_MODEL_NAME = "all-MiniLM-L6-v2"
DEFAULT_SPEC = WindowSpec(n_top=3, n_interval=2, n_far=0, width=16, after=3, snap=4)
N_NEGATIVES = 5
CHUNK_FEATURES = 1024
CACHE_LIMIT = 65_536  # window embeddings kept between chunks (~100 MB)


@dataclass
class ScoreSummary:
    """What one scorer did."""

    kind: str  # "embedding", "detection", "fuzz"
    type_name: str  # the ExplanationScore type written
    model_name: str  # the ExplanationScore model written
    features: int = 0
    explanations: int = 0
    skipped: int = 0  # explanations without positives or negatives to score against
    texts_embedded: int = 0
    seconds: float = 0.0
    mean_score: float | None = None
    note: str = ""


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counting half (the Mann-Whitney AUROC)."""
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


class _Vectors:
    """Embeddings of distinct texts (after embedding_text), each embedded once; older ones dropped past a limit."""

    def __init__(self, limit: int = CACHE_LIMIT) -> None:
        self.cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.limit = limit
        self.embedded = 0

    def add_known(self, texts: list[str], vecs: np.ndarray) -> None:
        for t, v in zip(texts, vecs):
            self.cache[embedding_text(t)] = v

    def matrix(self, texts: list[str]) -> np.ndarray:
        keys = [embedding_text(t) for t in texts]
        new = sorted({k for k in keys if k not in self.cache})
        if new:
            for k, v in zip(new, embed(new)):
                self.cache[k] = v
            self.embedded += len(new)
        out = np.stack([self.cache[k] for k in keys]) if keys else np.zeros((0, DIM), np.float32)
        for k in keys:
            self.cache.move_to_end(k)
        while len(self.cache) > self.limit:
            self.cache.popitem(last=False)
        return out


def _cached_explanation_vectors(store: FeatureStore, descriptions: list[str]) -> tuple[list[str], np.ndarray]:
    """Embeddings the search index already holds for these explanation texts (same model, same text cleaning)."""
    try:
        known = stored_text_embeddings(store, descriptions)
    except Exception:  # an index of another layout: embed the texts instead
        return [], np.zeros((0, DIM), np.float32)
    if not known:
        return [], np.zeros((0, DIM), np.float32)
    return list(known), np.stack(list(known.values()))


def _detail(w: Window, distance: int, similarity: float, negative: bool) -> dict[str, Any]:
    return {"text": w.text, "distance": distance, "similarity": round(similarity, 6),
            "activations": [0.0] * len(w.tokens) if negative else [round(v, 4) for v in w.values],
            "str_tokens": w.tokens}


def _negatives(chunk_rows: np.ndarray, own: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n rows of `chunk_rows` (distinct) that are not in `own`, drawn by `rng`."""
    own_set = set(own.tolist())
    if len(chunk_rows) <= n + len(own_set):
        cand = np.setdiff1d(chunk_rows, own, assume_unique=False)
        return cand if len(cand) <= n else rng.choice(cand, size=n, replace=False)
    picks = chunk_rows[rng.choice(len(chunk_rows), size=n + len(own_set), replace=False)]
    return np.asarray([r for r in picks.tolist() if r not in own_set][:n], dtype=np.int64)


def score_chunk(chunk: Chunk, vectors: _Vectors, explanation_vecs: dict[str, np.ndarray], *,
                n_negatives: int = N_NEGATIVES, seed: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Score rows for every explanation of a chunk, and the number of explanations that could not be scored."""
    windows: list[Window] = []
    owner: list[int] = []  # feature position in the chunk of each positive window
    for fi, f in enumerate(chunk.features):
        for w in f.positives:
            windows.append(w)
            owner.append(fi)
    far = [w for f in chunk.features for w in f.far]
    texts = [w.text for w in windows] + [w.text for w in far]
    mat = vectors.matrix(texts)
    # Rows of distinct window texts: a window shared by two features is one candidate, and never a negative of
    # a feature that has it as a positive.
    keys = [embedding_text(t) for t in texts]
    row_of: dict[str, int] = {}
    rows = np.array([row_of.setdefault(k, len(row_of)) for k in keys], dtype=np.int64)
    distinct = np.zeros((len(row_of), DIM), np.float32)
    distinct[rows] = mat
    pos_rows = rows[:len(windows)]
    first_window: dict[int, int] = {}
    for i, r in enumerate(pos_rows.tolist()):
        first_window.setdefault(r, i)
    source_seed = zlib.crc32(chunk.source.encode())
    all_pos = np.unique(pos_rows)
    owner_arr = np.asarray(owner, dtype=np.int64)
    far_at = len(windows)
    out: list[dict[str, Any]] = []
    skipped = 0
    for fi, f in enumerate(chunk.features):
        if not f.explanations:
            continue
        own = pos_rows[owner_arr == fi]
        positives = f.positives
        rng = np.random.default_rng([seed, source_seed, f.index])
        neg = _negatives(all_pos, own, n_negatives, rng)
        neg_windows = [windows[first_window[int(r)]] for r in neg]
        far_rows = rows[far_at:far_at + len(f.far)]
        far_at += len(f.far)
        neg_all = np.concatenate([neg, far_rows]).astype(np.int64)
        neg_windows += f.far
        if len(own) == 0 or len(neg_all) == 0:
            skipped += len(f.explanations)
            continue
        for eid, desc, _type in f.explanations:
            q = explanation_vecs[desc]
            sp = distinct[own] @ q
            sn = distinct[neg_all] @ q
            details = [_detail(w, 1 if w.top else 2, float(s), False) for w, s in zip(positives, sp)]
            details += [_detail(w, -1, float(s), True) for w, s in zip(neg_windows, sn)]
            out.append({"explanationId": eid, "value": auroc(sp, sn), "explanationScoreTypeName": EMBEDDING_TYPE,
                        "explanationScoreModelName": EMBEDDING_MODEL_NAME,
                        "jsonDetails": json.dumps(details, ensure_ascii=False)})
    return out, skipped


def score_embedding(store: FeatureStore, *, model: str, source: str | list[str] | None = None,
                    type_name: str | None = None,
                    spec: WindowSpec = DEFAULT_SPEC, n_negatives: int = N_NEGATIVES, chunk: int = CHUNK_FEATURES,
                    seed: int = 0, progress: bool | None = None, write: bool = True) -> ScoreSummary:
    """Score every explanation (of `type_name`, else all) of the model (or of `source`: one or a list) and write
    the scores; windows shared by features of several sources are embedded once."""
    t0 = time.perf_counter()
    total, chunks = iter_chunks(store, model=model, source=source, type_name=type_name, spec=spec, chunk=chunk)
    summary = ScoreSummary("embedding", EMBEDDING_TYPE, EMBEDDING_MODEL_NAME, features=total)
    vectors = _Vectors()
    values: list[float] = []
    bar = tqdm(total=total, unit="feature", desc="embedding scores", file=sys.stderr, smoothing=0.1,
               disable=None if progress is None else not progress)
    try:
        for c in chunks:
            descs = sorted({d for f in c.features for _, d, _ in f.explanations})
            known, vecs = _cached_explanation_vectors(store, descs)
            vectors.add_known(known, vecs)
            exp_mat = vectors.matrix(descs)
            exp_vecs = dict(zip(descs, exp_mat))
            rows, skipped = score_chunk(c, vectors, exp_vecs, n_negatives=n_negatives, seed=seed)
            summary.skipped += skipped
            summary.explanations += len(rows)
            values += [r["value"] for r in rows]
            if write and rows:
                write_scores(store, rows)
            bar.update(len(c.features))
    finally:
        bar.close()
    summary.texts_embedded = vectors.embedded
    summary.seconds = time.perf_counter() - t0
    summary.mean_score = float(np.mean(values)) if values else None
    return summary
