"""Collect (MLP input, MLP output) pairs for several layers from one forward pass per batch."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from featuredb.errors import FeatureDBError
from ingest.corpus import CorpusStats, expects_bos, iter_documents, iter_windows
from ingest.harvest import Harvester
from ingest.model_loading import LoadedModel
from ingest.transcoder import HOOK_MLP_IN, HOOK_MLP_OUT

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

    train_tokens: int = 0
    test_tokens: int = 0
    seconds: float = 0.0
    corpus: dict[str, int] = field(default_factory=dict)


def collect_pairs(lm: LoadedModel, layers: list[int], *, corpus: str | None, train_tokens: int,
                  test_tokens: int, ctx_len: int = 128, batch_size: int = 16, text_field: str = "text",
                  progress: bool | None = None) -> tuple[dict[int, LayerPairs], PairsSummary]:
    """Stream the corpus through the model once; every layer's (mlp_in, mlp_out) pairs, BOS positions dropped."""
    t0 = time.perf_counter()
    harvester = Harvester(lm.model, [(layer, hook) for layer in layers for hook in (HOOK_MLP_IN, HOOK_MLP_OUT)])
    drop = 1 if expects_bos(lm.tokenizer) else 0
    body = ctx_len - drop
    chunks: dict[tuple[int, str, bool], list[torch.Tensor]] = {}
    stats = CorpusStats()
    want = {False: train_tokens, True: test_tokens}
    have = {False: 0, True: 0}
    docs = iter_documents(corpus, stats, text_field=text_field)
    bar = tqdm(total=train_tokens + test_tokens, unit="tok", unit_scale=True, desc="activations",
               disable=None if progress is None else not progress)
    window_id = 0
    batch: list[list[int]] = []
    roles: list[bool] = []

    def flush() -> None:
        ids = torch.tensor(batch, dtype=torch.long, device=lm.device)
        captured = harvester.run(ids)
        for held in (False, True):
            rows = [i for i, r in enumerate(roles) if r == held]
            if not rows:
                continue
            for (layer, hook), t in captured.items():
                part = t[rows, drop:, :].reshape(-1, t.shape[-1]).to("cpu", torch.bfloat16)
                chunks.setdefault((layer, hook, held), []).append(part)
        batch.clear()
        roles.clear()

    try:
        for w in iter_windows(docs, lm.tokenizer, ctx_len, None, stats):
            held = window_id % HOLDOUT_EVERY == HOLDOUT_EVERY - 1 and have[True] < want[True]
            if not held and have[False] >= want[False]:
                if have[True] >= want[True]:
                    break
                window_id += 1
                continue
            window_id += 1
            have[held] += body
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
    if have[False] < max(body, train_tokens // 4) or have[True] < min(test_tokens, body):
        raise FeatureDBError(f"corpus {corpus or 'installed-docs'}: only {have[False]:,} training and "
                             f"{have[True]:,} held-out tokens; use a larger --corpus or fewer --train-tokens")

    def cat(layer: int, hook: str, held: bool) -> torch.Tensor:
        return torch.cat(chunks[(layer, hook, held)])

    pairs = {layer: LayerPairs(cat(layer, HOOK_MLP_IN, False), cat(layer, HOOK_MLP_OUT, False),
                               cat(layer, HOOK_MLP_IN, True), cat(layer, HOOK_MLP_OUT, True)) for layer in layers}
    return pairs, PairsSummary(have[False], have[True], time.perf_counter() - t0, stats.as_dict())
