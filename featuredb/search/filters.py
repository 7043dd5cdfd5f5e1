"""Search filters (model, sources, layers, density; store.search_tables.filter_where reads them as a condition
over the search tables), and the one `--layers` grammar every command shares."""

from __future__ import annotations

from dataclasses import dataclass

from featuredb.int_ranges import parse_int_ranges


@dataclass(frozen=True)
class SearchFilters:
    """Which features a search may return."""

    model: str | None = None
    sources: tuple[str, ...] = ()
    layers: tuple[int, ...] | None = None  # layer numbers (parse_layers)
    max_density: float | None = None

    @property
    def active(self) -> bool:
        """True when any filter is set."""
        return bool(self.model or self.sources or self.layers or self.max_density is not None)


def parse_layers(value: str | None) -> tuple[int, ...] | None:
    """--layers in every command: '3,5', '2-6' or a mix ('0-3,10') to sorted layer numbers; None when not given."""
    if not value or not value.strip():
        return None
    return tuple(sorted(parse_int_ranges(value, "--layers")))
