"""Token and logit lookups: features whose top examples peak on a token, or whose decoder promotes one."""

from __future__ import annotations

from typing import Any

from featuredb.search.filters import SearchFilters


def token_ranking(con: Any, token: str, filters: SearchFilters, limit: int) -> list[tuple[str, float, str | None]]:
    """(feature_key, peak activation, token) for features whose top examples peak on `token`, strongest first."""
    cond, params = filters.sql("p")
    rows = con.execute(f"""SELECT feature_key, max(value) AS v, arg_max(token, value) FROM search_peak_tokens p
        WHERE token_key = ? AND {cond} GROUP BY feature_key ORDER BY v DESC, feature_key LIMIT {int(limit)}""",
                       [token.strip(), *params]).fetchall()
    return [(k, float(v), t) for k, v, t in rows]


def logit_ranking(con: Any, token: str, filters: SearchFilters, limit: int,
                  negative: bool = False) -> list[tuple[str, float, str | None]]:
    """(feature_key, logit weight, token) for features that promote `token` (suppress it with negative=True)."""
    cond, params = filters.sql("p")
    order = "ASC" if negative else "DESC"
    rows = con.execute(f"""SELECT feature_key, {'min' if negative else 'max'}(value) AS v, any_value(token)
        FROM search_logit_tokens p WHERE token_key = ? AND positive = ? AND {cond}
        GROUP BY feature_key ORDER BY v {order}, feature_key LIMIT {int(limit)}""",
                       [token.strip(), not negative, *params]).fetchall()
    return [(k, float(v), t) for k, v, t in rows]
