"""A search hit and how hits are filled in with label, density and top tokens from search_features."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from featuredb.store.search_tables import hit_rows

if TYPE_CHECKING:
    import duckdb


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


def build_hits(con: duckdb.DuckDBPyConnection, ranked: list[tuple[str, float, str | None]]) -> list[SearchHit]:
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


def clip(text: str | None, width: int) -> str:
    """`text` on one line, cut to `width` characters with an ellipsis."""
    text = (text or "").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def hit_table(hits: list[SearchHit]) -> str:
    """Hits as an aligned text table: rank, feature, score, density, label and top tokens."""
    if not hits:
        return "no matching features"
    names = [f"{h.model}/{h.source}/{h.index}" for h in hits]
    width = max(len(n) for n in names)
    lines = [f"{'#':>2}  {'feature':<{width}}  {'score':>7}  {'density':>8}  {'label':<48}  top tokens"]
    for i, (h, name) in enumerate(zip(hits, names), start=1):
        density = f"{h.density:.2e}" if h.density is not None else "-"
        tokens = " ".join(repr(t.strip() or t) for t in h.top_tokens[:4])
        lines.append(f"{i:>2}  {name:<{width}}  {h.score:>7.3f}  {density:>8}  {clip(h.label, 48):<48}  {tokens}")
    return "\n".join(lines)
