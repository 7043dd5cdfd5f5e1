"""Search filters (model, sources, layer range, density) as one SQL condition over search_features columns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from featuredb.errors import FeatureDBError


@dataclass(frozen=True)
class SearchFilters:
    """Which features a search may return."""

    model: str | None = None
    sources: tuple[str, ...] = ()
    layers: tuple[int, int] | None = None  # inclusive range of layer numbers
    max_density: float | None = None

    def sql(self, alias: str = "f") -> tuple[str, list[Any]]:
        """(condition, parameters) over a table with "modelId", source, layer_num and density columns."""
        conds, params = ["TRUE"], []
        if self.model:
            conds.append(f'{alias}."modelId" = ?')
            params.append(self.model)
        if self.sources:
            conds.append(f"{alias}.source IN ({', '.join('?' for _ in self.sources)})")
            params.extend(self.sources)
        if self.layers:
            conds.append(f"{alias}.layer_num BETWEEN ? AND ?")
            params.extend(self.layers)
        if self.max_density is not None:
            conds.append(f"coalesce({alias}.density, 0) <= ?")
            params.append(self.max_density)
        return " AND ".join(conds), params

    @property
    def active(self) -> bool:
        """True when any filter is set."""
        return bool(self.model or self.sources or self.layers or self.max_density is not None)


def parse_layer_range(value: str | None) -> tuple[int, int] | None:
    """'3-7' or '5' to an inclusive (low, high) range."""
    if not value:
        return None
    try:
        if "-" in value:
            a, b = value.split("-", 1)
            low, high = int(a), int(b)
        else:
            low = high = int(value)
    except ValueError:
        raise FeatureDBError(f"--layers {value!r}: expected A-B, e.g. 10-20") from None
    if low > high:
        raise FeatureDBError(f"--layers {value!r}: the range is empty")
    return low, high
