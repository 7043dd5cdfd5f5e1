"""Neuronpedia's explanation search over the store: BM25 ranking (featuredb.search), keyword count as a fallback."""

from __future__ import annotations

import re
from typing import Any

from featuredb.errors import FeatureDBError, NotFoundError
from featuredb.search.api import search
from featuredb.search.filters import SearchFilters
from featuredb.store.feature_store import FeatureStore
from featuredb.store.schema import feature_key
from featuredb.store.search_tables import keyword_explanation_rows, release_source_ids
from featuredb.store.server_reads import explanations_by_feature


def query_terms(query: str) -> list[str]:
    """Lower-case words of two or more characters, in order, without repeats."""
    seen: list[str] = []
    for w in re.findall(r"\w{2,}", query.lower()):
        if w not in seen:
            seen.append(w)
    return seen


def search_explanations(store: FeatureStore, query: str, *, model: str | None = None,
                        sources: list[str] | None = None, release: str | None = None, offset: int = 0,
                        limit: int = 20) -> list[dict[str, Any]]:
    """Explanation rows, best BM25 match first (one per feature); Neuronpedia's paging by offset."""
    if release:
        sources = release_source_ids(store, release)
        if not sources:
            return []
    try:
        hits = search(store, query, mode="text", filters=SearchFilters(model=model, sources=tuple(sources or ())),
                      limit=offset + limit)
    except NotFoundError:
        return []  # no such model, or an empty store
    except FeatureDBError:
        return keyword_explanations(store, query, model=model, sources=sources, offset=offset, limit=limit)
    hits = hits[offset:offset + limit]
    if not hits:
        return []
    keys = [feature_key(h.model, h.source, h.index) for h in hits]
    by_key = explanations_by_feature(store, keys)
    rows = []
    for key, hit in zip(keys, hits):
        options = by_key.get(key, [])
        best = next((e for e in options if e["description"] == hit.matched), options[0] if options else None)
        if best is not None:
            best["index"] = str(best["index"])
            rows.append(best)
    return rows


def keyword_explanations(store: FeatureStore, query: str, *, model: str | None = None,
                         sources: list[str] | None = None, offset: int = 0, limit: int = 20) -> list[dict[str, Any]]:
    """Explanation rows matching most query words first, then in label order (for stores without search indexes)."""
    terms = query_terms(query)
    if not terms:
        return []
    rows = keyword_explanation_rows(store, terms, model=model, sources=sources, offset=offset, limit=limit)
    for d in rows:
        d["index"] = str(d["index"])
    return rows
