"""A search hit and how hits are filled in with label, density and top tokens from search_features."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from featuredb.store.search_tables import hit_rows


@dataclass
class SearchHit:
    """One feature found by a search."""

    model: str
    source: str
    index: int
    label: str | None
    score: float
    density: float | None
    top_tokens: list[str] = field(default_factory=list)
    matched: str | None = None  # what matched: the explanation, token or logit

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict (index as a string, like Neuronpedia)."""
        d = asdict(self)
        d["index"] = str(self.index)
        return d


def build_hits(con: Any, ranked: list[tuple[str, float, str | None]]) -> list[SearchHit]:
    """SearchHits for (feature_key, score, matched) in the given order."""
    if not ranked:
        return []
    by_key = hit_rows(con, [k for k, _, _ in ranked])
    hits = []
    for key, score, matched in ranked:
        r = by_key.get(key)
        if r is not None:
            hits.append(SearchHit(r["modelId"], r["source"], int(r["index"]), r["label"], float(score), r["density"],
                                  list(r["top_tokens"] or []), matched))
    return hits
