"""The `featuredb` command line: help, JSON output, --db / FEATUREDB_DB, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from conftest import MODEL, SOURCE
from featuredb.cli.root import cli


def _leaf_commands(cmd: click.Command, path: tuple[str, ...]) -> list[tuple[tuple[str, ...], click.Command]]:
    """Every runnable command under `cmd`, with its path of names (ingest and tracer commands included)."""
    if isinstance(cmd, click.Group):
        return [leaf for name in cmd.list_commands(None)
                for leaf in _leaf_commands(cmd.get_command(None, name), path + (name,))]
    return [(path, cmd)]


def _run(*args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, list(args), env=env)


def test_help_lists_every_command_with_a_description() -> None:
    out = _run("--help").output
    for name in ("info", "import", "export", "feature", "query", "sample-export"):
        line = next(l for l in out.splitlines() if l.strip().startswith(name + " "))
        assert len(line.split(None, 1)[1]) > 10
    for group, subs in (("import", ["neuronpedia"]), ("export", ["neuronpedia", "circuit-tracer", "parquet"])):
        sub_help = _run(group, "--help").output
        assert all(s in sub_help for s in subs)
        for s in subs:
            assert "Example:" in _run(group, s, "--help").output


def test_import_info_feature_and_query_through_the_cli(small_export: Path, tmp_path: Path) -> None:
    db = str(tmp_path / "cli.duckdb")
    res = _run("import", "neuronpedia", str(small_export), "--db", db, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["rows"]["activations"] == 240
    info = json.loads(_run("info", "--json", env={"FEATUREDB_DB": db}).output)
    assert info["sources"] == [{"model": MODEL, "source": SOURCE, "features": 40, "dead_features": 0,
                                "activations": 240, "explanations": 40}]
    feature = json.loads(_run("feature", MODEL, SOURCE, "3", "--db", db).output)
    assert feature["index"] == "3" and len(feature["activations"]) == 6
    rows = json.loads(_run("query", 'SELECT count(*) AS n FROM features', "--db", db, "--json").output)
    assert rows == [{"n": 40}]


def test_user_mistakes_are_one_line_errors_with_nonzero_exit(tmp_path: Path) -> None:
    db = str(tmp_path / "x.duckdb")
    cases = [
        ["import", "neuronpedia", str(tmp_path / "missing"), "--db", db],
        ["feature", "m", "1-s", "5", "--db", str(tmp_path / "nope.duckdb")],
        ["query", "SELEC nonsense", "--db", db],
        ["feature", "m", "1-s", "five", "--db", db],
    ]
    _run("import", "neuronpedia", str(tmp_path), "--db", db)  # creates the (empty) store file
    for args in cases:
        res = subprocess.run([sys.executable, "-m", "featuredb.cli", *args], capture_output=True, text=True)
        assert res.returncode != 0, args
        assert res.stderr.startswith("featuredb: error: ") and res.stderr.count("\n") == 1, (args, res.stderr)


def test_export_commands_write_files(small_export: Path, tmp_path: Path) -> None:
    db = str(tmp_path / "e.duckdb")
    _run("import", "neuronpedia", str(small_export), "--db", db)
    ct = json.loads(_run("export", "circuit-tracer", str(tmp_path / "ct"), "--db", db, "--json").output)
    assert ct["features"] == 40 and ct["scans"] == [MODEL]
    np_ = json.loads(_run("export", "neuronpedia", str(tmp_path / "np"), "--model", MODEL, "--db", db, "--json").output)
    assert np_["rows"]["features"] == 40
    pq = json.loads(_run("export", "parquet", str(tmp_path / "pq"), "--db", db, "--json").output)
    assert pq["rows"]["explanations"] == 40


QUERY_ESCAPES = [
    "COPY (SELECT 1) TO '{db}'",                         # overwrite the store itself
    "COPY features TO '{dir}/leak.csv'",
    "EXPORT DATABASE '{dir}/dump'",
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM glob('/*')",
    "ATTACH '{dir}/other.duckdb' AS other",
    "INSTALL httpfs",
    "LOAD fts",
    "SET enable_external_access = true",
    "SET lock_configuration = false; COPY (SELECT 1) TO '{dir}/x.csv'",
    "SELECT 1; COPY (SELECT 1) TO '{dir}/y.csv'",
]


@pytest.mark.parametrize("sql", QUERY_ESCAPES)
def test_query_cannot_write_read_files_or_change_settings(small_export: Path, tmp_path: Path, sql: str) -> None:
    db = tmp_path / "q.duckdb"
    assert _run("import", "neuronpedia", str(small_export), "--db", str(db)).exit_code == 0
    before = db.read_bytes()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    res = subprocess.run([sys.executable, "-m", "featuredb.cli", "query", sql.format(db=db, dir=out_dir), "--db", str(db)],
                         capture_output=True, text=True)
    assert res.returncode != 0 and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr, res.stderr
    assert db.read_bytes() == before and list(out_dir.iterdir()) == []
    assert json.loads(_run("query", "SELECT count(*) AS n FROM features", "--db", str(db), "--json").output) == [{"n": 40}]


def test_every_command_that_talks_to_neuronpedia_takes_the_same_address_and_key() -> None:
    """`trace label --online` and every `np` command read --base-url / NEURONPEDIA_BASE_URL and --api-key /
    NEURONPEDIA_API_KEY alike, so a user who points np at a self-hosted Neuronpedia points trace label there too."""
    talking = [(path, cmd) for path, cmd in _leaf_commands(cli, ()) if any(p.name == "base_url" for p in cmd.params)]
    assert ("trace", "label") in [p for p, _ in talking] and len([p for p, _ in talking if p[0] == "np"]) >= 4
    seen = {(p.name, p.envvar, p.default) for _, cmd in talking for p in cmd.params if p.name in ("base_url", "api_key")}
    assert {(n, e) for n, e, _ in seen} == {("base_url", "NEURONPEDIA_BASE_URL"), ("api_key", "NEURONPEDIA_API_KEY")}
    assert {d for n, _, d in seen if n == "base_url"} == {"https://www.neuronpedia.org"}


def test_one_option_name_means_one_thing_in_every_command() -> None:
    """--k is train's active features per token and nothing else's (ingest keeps --top-examples); --overwrite is
    the same flag pair wherever it appears; ingest and train read a corpus with the same options."""
    options: dict[str, list[tuple[tuple[str, ...], click.Option]]] = {}
    for path, cmd in _leaf_commands(cli, ()):
        for p in cmd.params:
            if isinstance(p, click.Option):
                for name in p.opts:
                    options.setdefault(name, []).append((path, p))
    assert [path for path, _ in options["--k"]] == [("train",)]
    assert [path for path, _ in options["--top-examples"]] == [("ingest",)]
    assert {path for path, _ in options["--overwrite"]} >= {("trace", "label"), ("import", "graph")}
    assert all(p.secondary_opts == ["--no-overwrite"] for _, p in options["--overwrite"])
    for name in ("--corpus", "--text-field", "--text-column", "--split"):
        by_command = {path: (p.help, p.default) for path, p in options[name] if path in {("ingest",), ("train",)}}
        assert len(by_command) == 2 and len(set(by_command.values())) == 1, name
