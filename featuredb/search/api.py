"""`search()`: one entry point for every concept-search mode over a FeatureStore."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from featuredb.errors import FeatureDBError, NotFoundError
from featuredb.search.context import SearchContext, build_context
from featuredb.search.filters import SearchFilters
from featuredb.search.fusion import reciprocal_rank_fusion
from featuredb.search.hits import SearchHit, build_hits
from featuredb.store.search_indexes import has_search_tables, is_dirty, refresh_search_indexes
from featuredb.store.search_tables import texts_by_id
from featuredb.search.semantic_search import semantic_ranking
from featuredb.search.text_search import text_ranking
from featuredb.search.token_search import logit_ranking, token_ranking

if TYPE_CHECKING:
    import duckdb

    from featuredb.store.feature_store import FeatureStore

MODES = ("auto", "text", "semantic", "token", "logit")  # inference has its own entry point (needs a model)
FUSION_DEPTH = 50  # how deep each list goes into reciprocal-rank fusion


def prepare(store: FeatureStore) -> SearchContext:
    """Make the search tables current (rebuilding them on a writable store); the store's reusable context."""
    ctx = store.search_context
    if ctx is not None and store.read_only:
        return ctx  # nobody can write while this process reads the file
    con = store.con
    if not has_search_tables(con) or is_dirty(con):
        if store.read_only:
            if not has_search_tables(con):
                raise FeatureDBError(f"{store.path}: search indexes are not built yet; open it writable once "
                                     "(e.g. `featuredb reindex`)")
        else:
            refresh_search_indexes(con)
            ctx = None
    if ctx is None:
        ctx = build_context(con)
        store.search_context = ctx
    return ctx


def _check_scope(ctx: SearchContext, filters: SearchFilters) -> None:
    if not ctx.models:
        raise NotFoundError("the store has no features yet; import or ingest some first")
    if filters.model and filters.model not in ctx.models:
        raise NotFoundError(f"model {filters.model!r} is not in the store; it has: {', '.join(ctx.models)}")


def _describe(con: duckdb.DuckDBPyConnection, ranked: list[tuple[str, float, Any]]) -> list[tuple[str, float,
              str | None]]:
    """Replace text ids in `matched` by the explanation text that matched."""
    rows = texts_by_id(con, sorted({int(m) for _, _, m in ranked if m is not None}))
    return [(k, s, rows.get(int(m)) if m is not None else None) for k, s, m in ranked]


def search(store: FeatureStore, query: str, *, mode: str = "auto", filters: SearchFilters | None = None,
           limit: int = 10,
           negative: bool = False) -> list[SearchHit]:
    """Features for `query`, best first: explanations (auto/text/semantic), peak tokens (token), logits (logit)."""
    if mode not in MODES:
        raise FeatureDBError(f"unknown search mode {mode!r}; expected one of {', '.join(MODES)} or inference")
    if not query.strip():
        raise FeatureDBError("the search query is empty")
    filters = filters or SearchFilters()
    ctx = prepare(store)
    con = store.con
    _check_scope(ctx, filters)
    if mode == "text":
        ranked = _describe(con, text_ranking(con, ctx, query, filters, limit))
    elif mode == "semantic":
        ranked = _describe(con, semantic_ranking(con, ctx, query, filters, limit))
    elif mode == "auto":
        depth = max(limit, FUSION_DEPTH)
        ranked = _describe(con, reciprocal_rank_fusion(text_ranking(con, ctx, query, filters, depth),
                                                       semantic_ranking(con, ctx, query, filters, depth), limit=limit))
    elif mode == "token":
        ranked = token_ranking(con, query, filters, limit)
    else:
        ranked = logit_ranking(con, query, filters, limit, negative=negative)
    return build_hits(con, ranked)
