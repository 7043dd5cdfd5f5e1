"""Many values as a DuckDB relation: an Arrow table registered for one query (a Python list parameter is slow)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import pyarrow as pa


@contextmanager
def registered_values(con: Any, name: str, values: list[str]) -> Iterator[str]:
    """Register `values` as table `name` with one VARCHAR column `v`; unregister afterwards."""
    con.register(name, pa.table({"v": pa.array(values, type=pa.string())}))
    try:
        yield name
    finally:
        con.unregister(name)
