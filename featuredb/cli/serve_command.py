"""CLI: `featuredb serve`, the local Neuronpedia-compatible API."""

from __future__ import annotations

import click

from featuredb.cli.common import db_option


@click.command("serve", short_help="Serve the store over Neuronpedia's HTTP API.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind (loopback by default).")
@click.option("--port", default=3000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--write-token", envvar="FEATUREDB_WRITE_TOKEN", help="Allow writes from requests with this x-api-key.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Worker processes (read-only servers only; one per core serves the most requests).")
@db_option
def serve_command(host: str, port: int, write_token: str | None, workers: int, db: str) -> None:
    """Serve Neuronpedia's API over the store: features, explanation search, inference search, graphs.

    Web pages: search at / (every mode), a dashboard per feature at /{model}/{source}/{index}
    (Neuronpedia's URL shapes; open http://127.0.0.1:3000/ in a browser).

    Routes: GET /api/feature/{model}/{source}/{index}, POST /api/features, POST /api/explanation/search*,
    POST /api/search-topk-by-token, /api/activation/new and /api/search-all (models ingested here),
    GET /api/graph/{model}/{slug} (graphs from `featuredb import graph`); with --write-token also graph
    upload (signed-put, PUT, save-to-db) and /api/graph/subgraph/*. Point Neuronpedia tools at
    http://127.0.0.1:3000 instead of https://www.neuronpedia.org. OpenAPI is at /openapi.json.

    --db may name a store in object storage, served read-only: s3://bucket/store.duckdb, or the s3:// prefix
    `featuredb export parquet` wrote (read into a temporary local store first). Credentials come from the
    environment only (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL_S3, ...).

    Requests over the limits (1 MiB bodies, 256 features per POST /api/features, ...: see the README)
    get a 4xx with a JSON message; SIGTERM stops the server within a few seconds even when it is busy.

    \b
    Example:
      featuredb serve --port 3000 &
      curl http://127.0.0.1:3000/api/feature/gemma-2-2b/20-gemmascope-transcoder-16k/14110
    """
    import os
    import tempfile
    from contextlib import ExitStack

    import uvicorn

    from featuredb.errors import BadInputError
    from featuredb.store.feature_store import materialise_export
    from featuredb.object_storage import is_remote, is_remote_file
    from featuredb.server.app import DB_ENV_FOR_WORKERS, create_app
    from featuredb.server.limits import SHUTDOWN_GRACE_S
    from featuredb.store.feature_store import FeatureStore

    mode = "read-only" if not write_token else "writes with the token"
    if workers > 1:
        if write_token:
            raise BadInputError("--workers: a writable server (--write-token) runs one worker (DuckDB has one writer)")
        with ExitStack() as stack:
            if is_remote(db) and not is_remote_file(db):
                # a Parquet export in object storage: read once here, and every worker opens the local copy
                copy = stack.enter_context(tempfile.TemporaryDirectory(prefix="featuredb-s3-"))
                os.environ[DB_ENV_FOR_WORKERS] = str(materialise_export(db, copy))
            else:
                FeatureStore(db, read_only=True).close()  # fail fast, and migrate once, before the workers start
                os.environ[DB_ENV_FOR_WORKERS] = db if is_remote(db) else os.path.abspath(db)
            click.echo(f"serving {db} on http://{host}:{port} ({mode}, {workers} workers)", err=True)
            uvicorn.run("featuredb.server.app:app_from_env", factory=True, workers=workers, host=host, port=port,
                        log_level="warning", timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
        return
    app = create_app(db, write_token=write_token)
    click.echo(f"serving {db} on http://{host}:{port} ({mode})", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
