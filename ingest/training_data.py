"""Collect (MLP input, MLP output) pairs for several layers from one forward pass per batch."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

import torch
from tqdm import tqdm

from featuredb.errors import FeatureDBError
from ingest.corpus import CorpusStats, iter_documents, iter_windows
from ingest.harvest import Harvester
from ingest.model_loading import LoadedModel
from ingest.sink_positions import SINK_POSITIONS, outlier_mask
from ingest.transcoder import HOOK_MLP_IN, HOOK_MLP_OUT, HOOK_RESID_MID

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

HOLDOUT_EVERY = 10  # every 10th window is held out for evaluation (until the held-out budget is full)


@dataclass
class LayerPairs:
    """One layer's training and held-out pairs, stored as bfloat16 (tokens, d_model)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


@dataclass
class PairsSummary:
    """What the harvest read."""

    train_tokens: int = 0  # kept training tokens (sink and outlier positions excluded)
    test_tokens: int = 0
    seconds: float = 0.0
    corpus: dict[str, int] = field(default_factory=dict)
    sink_tokens: int = 0  # position-0 tokens left out
    outlier_tokens: int = 0  # other positions left out (residual norm > 10x the median at some harvested layer)
    outliers_by_layer: dict[int, int] = field(default_factory=dict)  # positions flagged at each layer
    test_windows: list[list[int]] = field(default_factory=list)  # held-out token windows (spliced-in loss)


def assigned_windows(tokenizer: PreTrainedTokenizerBase, corpus: str | None, *, text_field: str, ctx_len: int, train_tokens: int,
                     test_tokens: int, stats: CorpusStats | None = None, text_column: str = "text",
                     split: str = "train") -> Iterator[tuple[list[int], bool]]:
    """(window, held out?) in corpus order until both budgets are full; depends on the tokenizer only."""
    stats = stats if stats is not None else CorpusStats()
    body = ctx_len - SINK_POSITIONS
    want = {False: train_tokens, True: test_tokens}
    queued = {False: 0, True: 0}
    docs = iter_documents(corpus, stats, text_field=text_field, text_column=text_column, split=split)
    for window_id, w in enumerate(iter_windows(docs, tokenizer, ctx_len, None, stats)):
        held = window_id % HOLDOUT_EVERY == HOLDOUT_EVERY - 1 and queued[True] < want[True]
        if not held and queued[False] >= want[False]:
            if queued[True] >= want[True]:
                return
            continue
        queued[held] += body
        yield w, held


def held_out_windows(tokenizer: PreTrainedTokenizerBase, corpus: str | None, *, text_field: str, ctx_len: int, train_tokens: int,
                     test_tokens: int, text_column: str = "text", split: str = "train") -> list[list[int]]:
    """The held-out windows collect_pairs uses, without running the model."""
    return [w for w, held in assigned_windows(tokenizer, corpus, text_field=text_field, ctx_len=ctx_len,
                                              train_tokens=train_tokens, test_tokens=test_tokens,
                                              text_column=text_column, split=split) if held]


def collect_pairs(lm: LoadedModel, layers: list[int], *, corpus: str | None, train_tokens: int,
                  test_tokens: int, ctx_len: int = 128, batch_size: int = 16, text_field: str = "text",
                  text_column: str = "text", split: str = "train",
                  progress: bool | None = None) -> tuple[dict[int, LayerPairs], PairsSummary]:
    """Stream the corpus through the model once; every layer's (mlp_in, mlp_out) pairs, sink and outliers dropped.

    Position 0 of every window is never kept (see ingest/sink_positions.py); a later position whose residual
    norm is an outlier at any of `layers` is dropped from every layer, so all layers share the same tokens.
    """
    t0 = time.perf_counter()
    harvester = Harvester(lm.model, [(layer, hook) for layer in layers
                                     for hook in (HOOK_RESID_MID, HOOK_MLP_IN, HOOK_MLP_OUT)])
    drop = SINK_POSITIONS
    body = ctx_len - drop
    if body < 1:
        raise FeatureDBError(f"--ctx-len {ctx_len} is too short: position 0 is always left out")
    chunks: dict[tuple[int, str, bool], list[torch.Tensor]] = {}
    stats = CorpusStats()
    summary = PairsSummary(outliers_by_layer={layer: 0 for layer in layers})
    have = {False: 0, True: 0}  # kept tokens per role
    bar = tqdm(total=train_tokens + test_tokens, unit="tok", unit_scale=True, desc="activations",
               disable=None if progress is None else not progress)
    batch: list[list[int]] = []
    roles: list[bool] = []

    def flush() -> None:
        ids = torch.tensor(batch, dtype=torch.long, device=lm.device)
        captured = harvester.run(ids)
        outliers = torch.zeros(len(batch), body, dtype=torch.bool, device=ids.device)
        for layer in layers:
            flagged = outlier_mask(captured[(layer, HOOK_RESID_MID)])
            summary.outliers_by_layer[layer] += int(flagged.sum())
            outliers |= flagged
        summary.sink_tokens += len(batch) * drop
        summary.outlier_tokens += int(outliers.sum())
        keep = ~outliers
        for held in (False, True):
            rows = [i for i, r in enumerate(roles) if r == held]
            if not rows:
                continue
            if held:
                summary.test_windows.extend(batch[i] for i in rows)
            kept = keep[rows].reshape(-1)
            have[held] += int(kept.sum())
            for (layer, hook), t in captured.items():
                if hook == HOOK_RESID_MID:
                    continue
                part = t[rows, drop:, :].reshape(-1, t.shape[-1])[kept].to("cpu", torch.bfloat16)
                chunks.setdefault((layer, hook, held), []).append(part)
        batch.clear()
        roles.clear()

    try:
        for w, held in assigned_windows(lm.tokenizer, corpus, text_field=text_field, ctx_len=ctx_len,
                                        train_tokens=train_tokens, test_tokens=test_tokens, stats=stats,
                                        text_column=text_column, split=split):
            bar.update(body)
            batch.append(w)
            roles.append(held)
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
    finally:
        bar.close()
        harvester.close()
    if have[False] < max(body, train_tokens // 4) or have[True] < min(test_tokens, body) // 2:
        raise FeatureDBError(f"corpus {corpus or 'installed-docs'}: only {have[False]:,} training and "
                             f"{have[True]:,} held-out tokens; use a larger --corpus or fewer --train-tokens")

    def cat(layer: int, hook: str, held: bool) -> torch.Tensor:
        return torch.cat(chunks[(layer, hook, held)])

    pairs = {layer: LayerPairs(cat(layer, HOOK_MLP_IN, False), cat(layer, HOOK_MLP_OUT, False),
                               cat(layer, HOOK_MLP_IN, True), cat(layer, HOOK_MLP_OUT, True)) for layer in layers}
    summary.train_tokens, summary.test_tokens = have[False], have[True]
    summary.seconds, summary.corpus = time.perf_counter() - t0, stats.as_dict()
    return pairs, summary
