"""`featuredb query` as an attacker uses it: writes, file reads, extension loads and settings changes."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Iterator

from fault_cases.outcome import SECURITY, Outcome, cli_outcome
from featuredb import FeatureStore
from featuredb.formats.neuronpedia_import import import_neuronpedia
from featuredb.synthetic_export import generate_export

ESCAPES = [
    "COPY (SELECT 1) TO '{db}'", "COPY features TO '{dir}/leak.csv'", "COPY features TO '{dir}/leak.parquet'",
    "EXPORT DATABASE '{dir}/dump'", "SELECT * FROM read_text('/etc/shadow')", "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM read_csv('/etc/passwd')", "SELECT * FROM read_json('/etc/hostname')", "SELECT * FROM glob('/*')",
    "SELECT * FROM read_blob('{dir}/../export/*/*/model.jsonl')", "SELECT * FROM 'https://example.com/x.csv'", "ATTACH '{dir}/o.duckdb' AS o",
    "ATTACH ':memory:' AS m", "INSTALL httpfs", "LOAD fts", "LOAD '{dir}/evil.duckdb_extension'",
    "SET enable_external_access = true", "SET lock_configuration = false", "SET temp_directory = '{dir}/t'",
    "SELECT 1; COPY (SELECT 1) TO '{dir}/y.csv'", "CHECKPOINT; COPY (SELECT 1) TO '{db}'",
    "CREATE TABLE evil AS SELECT 1", "DELETE FROM features", "DROP TABLE features", "UPDATE features SET density = 0",
]
# DuckDB lets a connection read its own database file (the store's bytes: nothing a query cannot see anyway).
OK_SQL = ["SELECT size FROM read_blob('{db}')", "SELECT now() AS t", "SELECT 1/0 AS inf", "SELECT count(*) FROM features", "", ";"]
BAD_SQL = ["SELEC nonsense", "SELECT * FROM no_such_table", "SELECT repeat('x', 1e12::BIGINT)"]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cases(work: Path) -> Iterator[Outcome]:
    """Every escape must be refused and leave the store's bytes and the folder unchanged."""
    export = generate_export(work / "export", n_features=50, n_activations=4, ctx_len=8, progress=False)
    db = work / "q.duckdb"
    with FeatureStore(db) as store:
        import_neuronpedia(store, export, progress=False)
    out = work / "out"
    out.mkdir()
    digest = _digest(db)
    for i, sql in enumerate(ESCAPES + BAD_SQL + OK_SQL):
        text = sql.format(db=db, dir=out)
        proc = subprocess.run([sys.executable, "-m", "featuredb.cli", "query", text, "--db", str(db)],
                              capture_output=True, text=True)
        outcome = cli_outcome("query", f"q{i}: {sql[:40]}", proc, should_fail=sql not in OK_SQL)
        if _digest(db) != digest or list(out.iterdir()):
            outcome = Outcome("query", outcome.case, SECURITY, "the store or the folder changed")
        elif sql in ESCAPES and proc.returncode == 0:
            outcome = Outcome("query", outcome.case, SECURITY, "the escape ran")
        yield outcome
