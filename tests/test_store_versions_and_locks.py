"""Schema versions (migrate older, refuse newer) and the one-writer lock."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pytest

from featuredb import FeatureStore, SchemaVersionError, StoreLockedError
from featuredb.store.schema import CURRENT_VERSION, migrate


def test_older_schema_is_migrated_in_place_keeping_rows(db_path: Path) -> None:
    con = duckdb.connect(str(db_path))
    migrate(con, str(db_path), target=1)  # what featuredb schema v1 wrote
    con.execute("""INSERT INTO sources ("id", "modelId", "setName") VALUES ('5-tc', 'm', 'tc')""")
    con.execute("""INSERT INTO features ("modelId", "layer", "index", "frac_nonzero") VALUES ('m', '5-tc', 9, 0.25)""")
    con.execute("""INSERT INTO activations ("id", "modelId", "layer", "index", "tokens", "values", "maxValue")
                   VALUES ('a1', 'm', '5-tc', 9, ['x', 'y'], [0.1234567891, 0.5], 0.5)""")
    con.close()
    with FeatureStore(db_path, read_only=True) as store:
        assert store.info()["schema_version"] == CURRENT_VERSION
        feature = store.get_feature("m", "5-tc", 9)
        assert feature.frac_nonzero == 0.25
        # schema v7 made `activations` a view; rows written before stay whole, values exact
        assert [(a.id, a.tokens, a.values) for a in feature.activations] == [("a1", ["x", "y"], [0.1234567891, 0.5])]
        cols = [r[0] for r in store.con.execute("DESCRIBE sources").fetchall()]
    assert "settings" in cols


def test_newer_schema_is_refused_with_a_clear_message(db_path: Path) -> None:
    FeatureStore(db_path).close()
    con = duckdb.connect(str(db_path))
    con.execute("INSERT INTO schema_version VALUES (?, now())", [CURRENT_VERSION + 7])
    con.close()
    with pytest.raises(SchemaVersionError, match=f"schema v{CURRENT_VERSION + 7}.*upgrade featuredb"):
        FeatureStore(db_path)


def _hold_writer(db_path: Path) -> subprocess.Popen[str]:
    code = textwrap.dedent(f"""
        import sys, time
        from featuredb import FeatureStore
        s = FeatureStore({str(db_path)!r})
        print("ready", flush=True)
        sys.stdin.readline()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_second_writer_gets_locked_error_naming_the_process(db_path: Path) -> None:
    proc = _hold_writer(db_path)
    try:
        with pytest.raises(StoreLockedError, match=rf"locked by another process \(PID {proc.pid}\)"):
            FeatureStore(db_path)
        cli = subprocess.run([sys.executable, "-m", "featuredb.cli", "info", "--db", str(db_path)],
                             capture_output=True, text=True)
        assert cli.returncode == 1
        assert cli.stderr.count("\n") == 1 and "locked by another process" in cli.stderr
        assert "Traceback" not in cli.stderr
    finally:
        proc.communicate("\n", timeout=30)
    FeatureStore(db_path).close()  # free again once the writer is gone


def test_many_readers_at_once(db_path: Path) -> None:
    FeatureStore(db_path).close()
    with FeatureStore(db_path, read_only=True) as a, FeatureStore(db_path, read_only=True) as b:
        assert a.info()["tables"] == b.info()["tables"]


def test_duckdbs_progress_bar_stays_off_a_piped_stdout(db_path: Path) -> None:
    """`--json` output is piped: DuckDB's own progress bar (it draws on stdout after 2 s) must not mix into it."""
    script = textwrap.dedent(f"""
        import duckdb
        import featuredb.store.feature_store as store
        connect = duckdb.connect
        def eager(*args, **kwargs):  # show the bar at once, as a query of over 2 s would
            con = connect(*args, **kwargs)
            con.execute("SET progress_bar_time = 0")
            return con
        store.duckdb.connect = eager
        with store.FeatureStore({str(db_path)!r}) as s:
            print("--opened--", flush=True)
            s.con.execute("SELECT sum(hash(i)) FROM range(30000000) t(i)").fetchall()
            print("--done--", flush=True)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120).stdout
    assert "--done--" in out
    assert "elapsed" not in out.split("--opened--", 1)[1], out[-500:]
