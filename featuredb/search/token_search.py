"""Token and logit lookups: features whose top examples peak on a token, or whose decoder promotes one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from featuredb.search.filters import SearchFilters
from featuredb.store.search_tables import logit_token_ranking, peak_token_ranking

if TYPE_CHECKING:
    import duckdb


def token_ranking(con: duckdb.DuckDBPyConnection, token: str, filters: SearchFilters,
                  limit: int) -> list[tuple[str, float, str | None]]:
    """(feature_key, peak activation, token) for features whose top examples peak on `token`, strongest first."""
    return peak_token_ranking(con, token.strip(), filters, limit)


def logit_ranking(con: duckdb.DuckDBPyConnection, token: str, filters: SearchFilters, limit: int,
                  negative: bool = False) -> list[tuple[str, float, str | None]]:
    """(feature_key, logit weight, token) for features that promote `token` (suppress it with negative=True)."""
    return logit_token_ranking(con, token.strip(), filters, limit, negative)
