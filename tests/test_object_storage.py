"""Object storage: `featuredb export parquet s3://...` to a real S3-compatible server (moto's, on 127.0.0.1), and
`featuredb search` / `featuredb serve` reading the export, or a .duckdb store, back from s3:// read-only; every
answer equals the local store's. Credentials come from the environment only and never appear in any output."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import boto3
import duckdb
import httpx
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from moto.server import ThreadedMotoServer

from conftest import MODEL, SOURCE, imported_store
from featuredb import FeatureStore
from featuredb.errors import FeatureDBError, SchemaVersionError
from featuredb.store.schema import TABLES, migrate
from featuredb.store import search_indexes as indexes
from featuredb.server.app import create_app
from loopback import serve_in_thread
from test_server_hardening import free_port

SECRET = "fdb-S3CRET-never-print-9f27c1"  # the secret key every test's environment holds
KEY_ID = "featuredb-test-key"
SEARCHES = [("London", "text"), (" London", "token"), ("music and songs", "semantic"), ("river", "auto"),
            ("Paris", "logit")]


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """moto's S3 server on a free loopback port."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def bucket(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new bucket; the environment holds the credentials and endpoint (and nothing else of AWS's)."""
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    name = f"fdb-{uuid.uuid4().hex[:12]}"
    s3(endpoint).create_bucket(Bucket=name)
    return name


def s3(endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET,
                        region_name="us-east-1")


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 40-feature store with 6 examples per feature and its search indexes built."""
    return imported_store(tmp_path_factory.mktemp("s3-local"), n_features=40, n_activations=6, ctx_len=8, n_top=4)


def run(*args: str) -> Any:
    """`featuredb ARGS` in-process; the secret key must not be in what it printed."""
    res = CliRunner().invoke(cli(), list(args))
    assert SECRET not in res.stdout and SECRET not in res.stderr, "the secret key was printed"
    return res


def run_process(*args: str) -> subprocess.CompletedProcess[str]:
    """`featuredb ARGS` in a process of its own (for commands that would serve if they did not fail)."""
    res = subprocess.run([sys.executable, "-m", "featuredb.cli", *args], capture_output=True, text=True, timeout=120)
    assert SECRET not in res.stdout and SECRET not in res.stderr, "the secret key was printed"
    return res


def cli() -> Any:
    from featuredb.cli.root import cli as root

    return root


def export(local: Path, url: str) -> None:
    res = run("export", "parquet", url, "--db", str(local), "--json")
    assert res.exit_code == 0, res.output


def search_json(db: str, query: str, mode: str) -> dict[str, Any]:
    res = run("search", query, "--mode", mode, "--db", db, "--json", "--limit", "20")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def wait_until_up(url: str, proc: subprocess.Popen[str], seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        try:
            if httpx.get(f"{url}/openapi.json", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not come up")


def answers(url: str) -> dict[str, Any]:
    """What a server says to GET feature (every feature, one missing) and to two explanation searches."""
    out: dict[str, Any] = {}
    for i in [*range(40), 999]:
        got = httpx.get(f"{url}/api/feature/{MODEL}/{SOURCE}/{i}", timeout=30)
        out[f"feature {i}"] = (got.status_code, got.json())
    for query in ("London", "music"):
        got = httpx.post(f"{url}/api/explanation/search-all", json={"query": query}, timeout=60)
        out[f"search {query}"] = (got.status_code, got.json())
    return out


@pytest.fixture(scope="module")
def local_answers(local: Path) -> dict[str, Any]:
    with serve_in_thread(create_app(str(local))) as url:
        return answers(url)


# --- export ---------------------------------------------------------------------------------------------------


def test_export_parquet_writes_every_table_to_the_bucket(local: Path, bucket: str, endpoint: str) -> None:
    res = run("export", "parquet", f"s3://{bucket}/exports/demo", "--db", str(local), "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    keys = {o["Key"] for o in s3(endpoint).list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys == {f"exports/demo/{t.name}.parquet" for t in TABLES}
    with FeatureStore(local, read_only=True) as store:
        for t in TABLES:
            body = s3(endpoint).get_object(Bucket=bucket, Key=f"exports/demo/{t.name}.parquet")["Body"].read()
            table = pq.read_table(io.BytesIO(body))
            assert table.num_rows == report["rows"][t.name] == \
                store.con.execute(f'SELECT count(*) FROM "{t.name}"').fetchone()[0]
    features = pq.read_table(io.BytesIO(s3(endpoint).get_object(
        Bucket=bucket, Key="exports/demo/features.parquet")["Body"].read()))
    assert sorted(features.column("index").to_pylist()) == list(range(40))


# --- search ---------------------------------------------------------------------------------------------------


def test_search_of_an_s3_export_equals_the_local_store(local: Path, bucket: str) -> None:
    url = f"s3://{bucket}/exports/demo"
    export(local, url)
    for query, mode in SEARCHES:
        want = search_json(str(local), query, mode)
        assert want["hits"], (query, mode)  # the comparison is not between two empty lists
        assert search_json(url, query, mode) == want, (query, mode)
    table = run("search", "London", "--mode", "text", "--db", url + "/")  # a trailing slash names the same prefix
    assert table.exit_code == 0 and f"{MODEL}/{SOURCE}/" in table.stdout


# --- serve ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "workers"), [("export", 1), ("export", 2), ("duckdb", 2)])
def test_serve_from_s3_answers_like_the_local_store(local: Path, bucket: str, endpoint: str,
                                                    local_answers: dict[str, Any], kind: str, workers: int) -> None:
    if kind == "export":  # the Parquet export, read once into a temporary store (by the parent for workers)
        url = f"s3://{bucket}/exports/demo"
        export(local, url)
    else:  # the store file itself, attached read-only by each worker
        url = f"s3://{bucket}/stores/store.duckdb"
        s3(endpoint).upload_file(str(local), bucket, "stores/store.duckdb")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "featuredb.cli", "serve", "--db", url, "--port", str(port),
                             "--workers", str(workers)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(base, proc)
        got = answers(base)
        assert got["feature 3"][0] == 200 and got["feature 3"][1]["activations"]
        assert got == local_answers
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert SECRET not in out and SECRET not in err
    assert f"serving {url}" in err


def test_a_duckdb_store_in_s3_is_served_searched_and_queried_like_the_local_one(
        local: Path, bucket: str, endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a copy whose explanation embeddings carry an HNSW index: attaching it needs the vss extension
    db = tmp_path / "hnsw.duckdb"
    shutil.copy(local, db)
    monkeypatch.setattr(indexes, "HNSW_MIN_TEXTS", 1)
    with FeatureStore(db) as store:
        store.refresh_search()
        assert indexes.has_hnsw(store.con)
    s3(endpoint).upload_file(str(db), bucket, "stores/hnsw.duckdb")
    url = f"s3://{bucket}/stores/hnsw.duckdb"
    for query, mode in SEARCHES:
        assert search_json(url, query, mode) == search_json(str(db), query, mode), (query, mode)
    with serve_in_thread(create_app(url)) as remote, serve_in_thread(create_app(str(db))) as here:
        assert answers(remote) == answers(here)  # the server's threads each read through their own cursor
    sql = "SELECT \"index\", description FROM explanations ORDER BY \"index\", id"
    res = run("query", sql, "--db", url, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == json.loads(run("query", sql, "--db", str(db), "--json").stdout)
    secrets = run("query", "SELECT * FROM duckdb_secrets()", "--db", url, "--json")  # run() checks the key is absent
    assert secrets.exit_code == 0 and KEY_ID in secrets.stdout and "redacted" in secrets.stdout
    # the query sees only the store: sealing still keeps the rest of the bucket out of reach
    peek = run("query", f"SELECT count(*) FROM read_parquet('s3://{bucket}/nothing.parquet')", "--db", url)
    assert peek.exit_code == 1 and "query failed" in peek.stderr


def test_ingested_compact_store_reads_back_from_s3_equal(tmp_path: Path, bucket: str, endpoint: str) -> None:
    """Compact examples and feature packs (what ingest writes) survive both ways through object storage."""
    from ingest.run import IngestConfig, run_ingest
    from tiny_model import make_tiny_llama, random_weights, write_circuit_tracer, write_corpus

    model = make_tiny_llama(tmp_path / "model")
    tc = write_circuit_tracer(tmp_path / "tc", {0: random_weights(16, seed=0)}, activation="jumprelu")
    cfg = IngestConfig(transcoders=[str(tc)], model=str(model), corpus=str(write_corpus(tmp_path / "c.txt", 1500)),
                       layers=[0], ctx_len=16, batch_size=4, k=5, model_id="tiny", source_set="tc")
    db = tmp_path / "compact.duckdb"
    run_ingest(cfg, str(db), progress=False)
    with FeatureStore(db, read_only=True) as store:
        keys = store.con.execute('SELECT "modelId", "layer", "index" FROM features ORDER BY ALL').fetchall()
        assert store.con.execute("SELECT count(*) FROM feature_packs").fetchone()[0]
        assert store.con.execute("SELECT count(*) FROM activation_examples").fetchone()[0]
        want = [store.get_feature(*k).model_dump(mode="json") for k in keys]
    export(db, f"s3://{bucket}/compact")
    s3(endpoint).upload_file(str(db), bucket, "compact.duckdb")
    for url in (f"s3://{bucket}/compact", f"s3://{bucket}/compact.duckdb"):
        with FeatureStore(url, read_only=True) as remote:
            got = [remote.get_feature(*k).model_dump(mode="json") for k in keys]
            copy = remote._local_copy
        assert got == want, url
        assert copy is None if url.endswith(".duckdb") else not Path(copy).exists()  # the temporary store is gone


# --- bad input ------------------------------------------------------------------------------------------------


def test_missing_bucket_object_and_export_are_one_line_errors(local: Path, bucket: str, endpoint: str) -> None:
    res = run("export", "parquet", "s3://no-such-bucket-fdb/x", "--db", str(local))
    assert res.exit_code == 1
    assert "featuredb: error: s3://no-such-bucket-fdb/x/models.parquet: cannot write: the bucket " \
           "'no-such-bucket-fdb' does not exist" in res.stderr
    assert "Traceback" not in res.output and len(res.stderr.strip().splitlines()) == 1
    missing = run("search", "London", "--db", f"s3://{bucket}/stores/missing.duckdb")
    assert missing.exit_code == 1 and f"s3://{bucket}/stores/missing.duckdb: cannot read: no such object" \
        in missing.stderr
    empty = run("search", "London", "--db", f"s3://{bucket}/no/export/here")
    assert empty.exit_code == 1 and f"s3://{bucket}/no/export/here: no featuredb Parquet export here" in empty.stderr
    no_bucket = run("search", "London", "--db", "s3://no-such-bucket-fdb/export")
    assert no_bucket.exit_code == 1 and "the bucket 'no-such-bucket-fdb' does not exist" in no_bucket.stderr
    s3(endpoint).put_object(Bucket=bucket, Key="junk.duckdb", Body=b"not a database" * 100)
    junk = run("search", "London", "--db", f"s3://{bucket}/junk.duckdb")
    assert junk.exit_code == 1 and f"s3://{bucket}/junk.duckdb: cannot read" in junk.stderr
    assert len(junk.stderr.strip().splitlines()) == 1


def test_credentials_come_from_the_environment_and_are_never_printed(
        local: Path, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    export(local, f"s3://{bucket}/exports/demo")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    res = run("search", "London", "--db", f"s3://{bucket}/exports/demo")
    assert res.exit_code == 1 and "no S3 credentials in the environment (set AWS_ACCESS_KEY_ID and " \
                                  "AWS_SECRET_ACCESS_KEY)" in res.stderr
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:1")  # nothing listens there
    down = run("export", "parquet", f"s3://{bucket}/again", "--db", str(local))
    assert down.exit_code == 1 and "could not connect to http://127.0.0.1:1" in down.stderr
    monkeypatch.setitem(sys.modules, "duckdb_extension_httpfs", None)  # the S3 extra is not installed
    with pytest.raises(FeatureDBError, match=r"duckdb-extension-httpfs package is not installed: install "
                                             r"featuredb\[s3\]"):
        FeatureStore(f"s3://{bucket}/exports/demo", read_only=True)
    monkeypatch.delitem(sys.modules, "duckdb_extension_httpfs")
    # a key with a quote in it is passed to DuckDB intact, and still never shown
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET + "'--")
    from featuredb.object_storage import connect_object_storage

    con = duckdb.connect()
    connect_object_storage(con, f"s3://{bucket}")
    shown = str(con.execute("SELECT * FROM duckdb_secrets()").fetchall())
    assert KEY_ID in shown and SECRET not in shown


def test_writing_to_an_s3_store_is_refused(local: Path, bucket: str, endpoint: str, tmp_path: Path) -> None:
    s3(endpoint).upload_file(str(local), bucket, "stores/store.duckdb")
    url = f"s3://{bucket}/stores/store.duckdb"
    with pytest.raises(FeatureDBError, match=r"s3://\S+/stores/store.duckdb: s3:// stores are read-only"):
        FeatureStore(url)
    with FeatureStore(url, read_only=True) as store:
        with pytest.raises(FeatureDBError, match="opened read-only"):
            store.upsert({})
    for args in (["reindex", "--db", url], ["import", "neuronpedia", str(tmp_path), "--db", url]):
        res = run(*args)
        assert res.exit_code == 1 and "s3:// stores are read-only" in res.stderr, args
    served = run_process("serve", "--write-token", "t0ken", "--port", str(free_port()), "--db", url)
    assert served.returncode == 1 and "s3:// stores are read-only" in served.stderr


def test_an_older_store_in_s3_is_not_migrated_in_place(bucket: str, endpoint: str, tmp_path: Path) -> None:
    db = tmp_path / "v6.duckdb"
    con = duckdb.connect(str(db))
    migrate(con, str(db), target=6)
    con.close()
    s3(endpoint).upload_file(str(db), bucket, "old.duckdb")
    with pytest.raises(SchemaVersionError, match="download it and open it locally once to migrate it"):
        FeatureStore(f"s3://{bucket}/old.duckdb", read_only=True)
    s3(endpoint).upload_file(str(db), bucket, "old-too.duckdb")
    res = run_process("serve", "--port", str(free_port()), "--db", f"s3://{bucket}/old-too.duckdb")
    assert res.returncode == 1 and "schema v6" in res.stderr
