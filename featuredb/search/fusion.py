"""Reciprocal-rank fusion of ranked lists (Cormack et al.): score = sum of 1 / (k + rank)."""

from __future__ import annotations

RRF_K = 60


def reciprocal_rank_fusion(*rankings: list[tuple[str, float, str | None]],
                           limit: int) -> list[tuple[str, float, str | None]]:
    """One list from several, best first; each key keeps the `matched` value of its best-ranked appearance."""
    score: dict[str, float] = {}
    matched: dict[str, tuple[int, str | None]] = {}
    for ranking in rankings:
        for rank, (key, _, what) in enumerate(ranking, start=1):
            score[key] = score.get(key, 0.0) + 1.0 / (RRF_K + rank)
            if key not in matched or rank < matched[key][0]:
                matched[key] = (rank, what)
    order = sorted(score, key=lambda k: (-score[k], k))[:limit]
    return [(k, score[k], matched[k][1]) for k in order]
