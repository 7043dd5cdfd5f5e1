"""Search filters (model, sources, layers, density) as one SQL condition over search_features columns, and the one
`--layers` grammar every command shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from featuredb.int_ranges import parse_int_ranges


@dataclass(frozen=True)
class SearchFilters:
    """Which features a search may return."""

    model: str | None = None
    sources: tuple[str, ...] = ()
    layers: tuple[int, ...] | None = None  # layer numbers (parse_layers)
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
            conds.append(f"{alias}.layer_num IN ({', '.join('?' for _ in self.layers)})")
            params.extend(self.layers)
        if self.max_density is not None:
            conds.append(f"coalesce({alias}.density, 0) <= ?")
            params.append(self.max_density)
        return " AND ".join(conds), params

    @property
    def active(self) -> bool:
        """True when any filter is set."""
        return bool(self.model or self.sources or self.layers or self.max_density is not None)


def parse_layers(value: str | None) -> tuple[int, ...] | None:
    """--layers in every command: '3,5', '2-6' or a mix ('0-3,10') to sorted layer numbers; None when not given."""
    if not value or not value.strip():
        return None
    return tuple(sorted(parse_int_ranges(value, "--layers")))
