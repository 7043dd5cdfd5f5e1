"""A one-bit change to a gzip file that DuckDB reads, without an error, as other valid rows: only the gzip checksum
tells, so an import must check it (tests/test_import_bad_input.py, bench/fault_cases/imports.py)."""

from __future__ import annotations

from pathlib import Path

import duckdb


def flip_a_bit_duckdb_reads_silently(path: Path, read: str) -> bool:
    """Rewrite `path` with one bit of its second half flipped such that `read`, a DuckDB query of the file, still
    runs but returns other rows than before; False when no such bit was found."""
    con = duckdb.connect()
    good, original = path.read_bytes(), con.execute(read).fetchall()
    for pos in range(len(good) // 2, len(good) - 8):
        path.write_bytes(good[:pos] + bytes([good[pos] ^ 1]) + good[pos + 1:])
        try:
            if con.execute(read).fetchall() != original:
                return True
        except duckdb.Error:
            continue
    return False
