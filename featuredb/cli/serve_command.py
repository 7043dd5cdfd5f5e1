"""CLI: `featuredb serve`, the local Neuronpedia-compatible API."""

from __future__ import annotations

import click

from featuredb.cli.common import db_option


@click.command("serve", short_help="Serve the store over Neuronpedia's HTTP API.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind (loopback by default).")
@click.option("--port", default=3000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--write-token", envvar="FEATUREDB_WRITE_TOKEN", help="Allow writes from requests with this x-api-key.")
@db_option
def serve_command(host: str, port: int, write_token: str | None, db: str) -> None:
    """Serve GET /api/feature/..., POST /api/features and /api/explanation/search* like Neuronpedia.

    Point Neuronpedia tools at http://127.0.0.1:3000 instead of https://www.neuronpedia.org.
    OpenAPI is at /openapi.json.

    \b
    Example:
      featuredb serve --port 3000 &
      curl http://127.0.0.1:3000/api/feature/gemma-2-2b/20-gemmascope-transcoder-16k/14110
    """
    import uvicorn

    from featuredb.server.app import create_app

    app = create_app(db, write_token=write_token)
    click.echo(f"serving {db} on http://{host}:{port} (read-only{'' if not write_token else ', writes with token'})",
               err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
