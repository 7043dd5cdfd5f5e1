"""CLI commands that read the store: info, feature, query."""

from __future__ import annotations

import click

from featuredb.cli.common import db_option, emit_json, json_option, open_store
from featuredb.errors import FeatureDBError
from featuredb.store.server_reads import run_user_query


@click.command(short_help="Show the store: schema version, size, rows per source.")
@db_option
@json_option
def info(db: str, as_json: bool) -> None:
    """Show the store's path, schema version, size and rows per source.

    \b
    Example:
      featuredb info --json
    """
    with open_store(db, read_only=True) as store:
        data = store.info()
    if as_json:
        emit_json(data)
        return
    click.echo(f"{data['path']}  (schema v{data['schema_version']}, {data['size_bytes'] / 1e6:.1f} MB)")
    click.echo("  " + ", ".join(f"{k} {v}" for k, v in data["tables"].items()))
    if data["sources"]:
        width = max(len(f"{s['model']}/{s['source']}") for s in data["sources"])
        click.echo(f"  {'model/source':<{width}}  {'features':>9} {'dead':>7} {'activations':>12} {'explanations':>12}")
        for s in data["sources"]:
            name = f"{s['model']}/{s['source']}"
            click.echo(f"  {name:<{width}}  {s['features']:>9} {s['dead_features']:>7} {s['activations']:>12} "
                       f"{s['explanations']:>12}")


@click.command(short_help="Print one feature as Neuronpedia's feature JSON.")
@click.argument("model")
@click.argument("source")
@click.argument("index")
@db_option
def feature(model: str, source: str, index: str, db: str) -> None:
    """Print one feature as the JSON of Neuronpedia's GET /api/feature/MODEL/SOURCE/INDEX.

    \b
    Example:
      featuredb feature gemma-2-2b 20-gemmascope-transcoder-16k 14110
    """
    with open_store(db, read_only=True) as store:
        try:
            record = store.get_feature(model, source, index)
        except ValueError as e:
            raise FeatureDBError(str(e)) from None
    click.echo(record.model_dump_json(indent=2))


@click.command(short_help="Run a read-only SQL query against the store.")
@click.argument("sql")
@db_option
@json_option
def query(sql: str, db: str, as_json: bool) -> None:
    """Run a read-only SQL query against the store (Neuronpedia field names).

    The query sees only the store: it cannot write, read or list files (COPY, EXPORT DATABASE, read_csv,
    read_text, ATTACH), reach the network, load extensions or change settings.

    \b
    Example:
      featuredb query "SELECT \\"index\\", description FROM explanations WHERE description ILIKE '%texas%' LIMIT 5"
    """
    with open_store(db, read_only=True) as store:
        result = run_user_query(store, sql)
    if result is None:  # an empty query, or a statement without rows
        return
    names, rows = result
    if as_json:
        emit_json([dict(zip(names, r)) for r in rows])
        return
    cells = [[str(v) if not isinstance(v, str) else v for v in r] for r in rows]
    cells = [[c if len(c) <= 60 else c[:57] + "..." for c in r] for r in cells]
    widths = [max([len(n), *(len(r[i]) for r in cells)]) for i, n in enumerate(names)]
    click.echo("  ".join(n.ljust(w) for n, w in zip(names, widths)))
    for r in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)))
