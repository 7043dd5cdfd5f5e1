"""Shared CLI pieces: the --db and --json options, output, and one-line errors."""

from __future__ import annotations

import json
import math
import sys
from typing import Any, Callable

import click

from featuredb.errors import FeatureDBError
from featuredb.neuronpedia.client import API_KEY_ENV, BASE_URL_ENV, DEFAULT_BASE_URL
from featuredb.store.feature_store import DB_ENV, DEFAULT_DB, FeatureStore


def db_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """--db PATH (env FEATUREDB_DB, default data/featuredb.duckdb); an s3:// URL reads a remote store."""
    return click.option("--db", "db", envvar=DB_ENV, default=DEFAULT_DB, show_default=True,
                        type=click.Path(dir_okay=False),
                        help=f"DuckDB store file (env {DB_ENV}); read-only commands also take "
                             "s3://bucket/store.duckdb or the s3:// prefix of a Parquet export.")(f)


def neuronpedia_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--base-url and --api-key, the same for every command that talks to Neuronpedia (np, trace label --online)."""
    f = click.option("--api-key", envvar=API_KEY_ENV, help=f"Neuronpedia API key (env {API_KEY_ENV}).")(f)
    return click.option("--base-url", envvar=BASE_URL_ENV, default=DEFAULT_BASE_URL, show_default=True,
                        help=f"Neuronpedia (or `featuredb serve`) address (env {BASE_URL_ENV}).")(f)


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """--json: machine-readable output on stdout."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(f)


def open_store(db: str, read_only: bool) -> FeatureStore:
    """Open the store; errors surface as one-line FeatureDBError messages."""
    return FeatureStore(db, read_only=read_only)


def json_safe(data: Any) -> Any:
    """`data` with NaN and infinite floats as null: JSON has no such numbers and strict parsers refuse them."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: json_safe(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [json_safe(v) for v in data]
    return data


def emit_json(data: Any) -> None:
    """Print `data` as indented, strictly valid JSON on stdout."""
    click.echo(json.dumps(json_safe(data), indent=2, default=str, allow_nan=False))


class FeatureDBGroup(click.Group):
    """A click group that turns FeatureDBError (and Ctrl-C) into one line on stderr and exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FeatureDBError as e:
            click.echo(f"featuredb: error: {e}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("featuredb: interrupted (nothing half-written was committed)", err=True)
            sys.exit(130)
