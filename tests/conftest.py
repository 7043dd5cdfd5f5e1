"""Shared fixtures: small Neuronpedia exports the tests write themselves."""

from __future__ import annotations

from pathlib import Path

import pytest

from featuredb.synthetic_export import generate_export

MODEL = "demo-model"
SOURCE = "6-demo-transcoder"
SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture
def small_export(tmp_path: Path) -> Path:
    """A 40-feature export with 6 examples (4 top, 2 interval) of 8 tokens each."""
    return generate_export(tmp_path / "export", model=MODEL, source=SOURCE, n_features=40, n_activations=6,
                           ctx_len=8, n_top=4, progress=False)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Where a test's store file goes."""
    return tmp_path / "store.duckdb"


def table_snapshot(con, table: str) -> list[tuple]:  # type: ignore[no-untyped-def]
    """Every row of a table, in a stable order, for equality checks."""
    cols = [r[0] for r in con.execute(f'DESCRIBE "{table}"').fetchall()]
    order = ", ".join(f'"{c}"::VARCHAR' for c in cols)
    return con.execute(f'SELECT * FROM "{table}" ORDER BY {order}').fetchall()
