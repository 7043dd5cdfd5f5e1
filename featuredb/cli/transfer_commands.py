"""CLI commands that move records in and out: import, export, sample-export."""

from __future__ import annotations

from typing import Any, Callable

import click

from featuredb.cli.common import FeatureDBGroup, db_option, emit_json, json_option, open_store
from featuredb.formats.circuit_tracer_export import export_circuit_tracer
from featuredb.formats.neuronpedia_export import export_neuronpedia
from featuredb.formats.neuronpedia_import import import_neuronpedia
from featuredb.formats.parquet_export import export_parquet
from featuredb.synthetic_export import generate_export


@click.group("import", cls=FeatureDBGroup, short_help="Import a Neuronpedia export or a graph into the store.")
def import_group() -> None:
    """Import records into the store."""


@import_group.command("neuronpedia", short_help="Import a Neuronpedia export folder.")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--skip-bad-lines", is_flag=True, help="Skip and count malformed lines instead of aborting.")
@db_option
@json_option
def import_neuronpedia_command(directory: str, skip_bad_lines: bool, db: str, as_json: bool) -> None:
    """Import a Neuronpedia export folder ({modelId}/{sourceId}/features/batch-N.jsonl.gz ...).

    Everything commits in one transaction; a malformed line aborts naming its file and line.

    \b
    Example:
      featuredb import neuronpedia exports/gemma-2-2b --db data/featuredb.duckdb
    """
    with open_store(db, read_only=False) as store:
        report = import_neuronpedia(store, directory, skip_bad_lines=skip_bad_lines)
    if as_json:
        emit_json(report.as_dict())
        return
    rows = ", ".join(f"{k} {v}" for k, v in report.rows.items())
    click.echo(f"imported {len(report.sources)} source(s) from {report.files} file(s) in {report.seconds:.1f}s: {rows}")
    if report.skipped_lines:
        click.echo(f"skipped {report.skipped_lines} bad line(s), e.g. {report.skipped_examples[0]}")


@import_group.command("graph", short_help="Store an attribution graph (served at /api/graph/{model}/{slug}).")
@click.argument("graph_file", metavar="GRAPH.json", type=click.Path(dir_okay=False))
@click.option("--slug", help="Store under this slug instead of metadata.slug.")
@click.option("--overwrite/--no-overwrite", default=True, show_default=True,
              help="Replace a graph with this model and slug, or refuse.")
@db_option
@json_option
def import_graph_command(graph_file: str, slug: str | None, overwrite: bool, db: str, as_json: bool) -> None:
    """Store a circuit-tracer / Neuronpedia graph JSON so `featuredb serve` answers GET /api/graph/{model}/{slug}.

    \b
    Example:
      featuredb import graph graphs/dallas-austin.json && featuredb serve
    """
    from featuredb.formats.graph_json import load_graph
    from featuredb.store.graph_store import save_graph

    graph = load_graph(graph_file)
    with open_store(db, read_only=False) as store:
        rec = save_graph(store, graph, slug=slug, overwrite=overwrite)
    if as_json:
        emit_json(rec)
        return
    click.echo(f"stored graph {rec['modelId']}/{rec['slug']} ({len(graph['nodes'])} nodes, "
               f"{len(graph['links'])} links) in {db}")


@click.group("export", cls=FeatureDBGroup, short_help="Export as Neuronpedia, circuit-tracer or Parquet files.")
def export_group() -> None:
    """Export the store as Neuronpedia, circuit-tracer or Parquet files."""


def _filters(f):  # type: ignore[no-untyped-def]
    f = click.option("--source", help="Only this source id, e.g. 20-gemmascope-transcoder-16k.")(f)
    return click.option("--model", help="Only this model id.")(f)


def _export_command(name: str, short_help: str) -> Callable[[Callable[..., Any]], click.Command]:
    """An `export` subcommand taking OUT, --model, --source, --db and --json."""
    def wrap(f: Callable[..., Any]) -> click.Command:
        f = _filters(db_option(json_option(f)))
        f = click.argument("out", type=click.Path(file_okay=False))(f)
        return export_group.command(name, short_help=short_help)(f)
    return wrap


@_export_command("neuronpedia", short_help="Neuronpedia export layout (batch-N.jsonl.gz).")
def export_neuronpedia_command(out: str, model: str | None, source: str | None, db: str, as_json: bool) -> None:
    """Write Neuronpedia's export layout (1024 rows per batch-N.jsonl.gz) under OUT.

    \b
    Example:
      featuredb export neuronpedia exports/ --model gemma-2-2b
    """
    with open_store(db, read_only=True) as store:
        report = export_neuronpedia(store, out, model=model, source=source)
    if as_json:
        emit_json(report.as_dict())
        return
    click.echo(f"wrote {report.files} file(s) for {len(report.sources)} source(s) to {out} in {report.seconds:.1f}s")


@export_group.command("circuit-tracer", short_help="circuit-tracer feature files ({scan}/{cantor}.json or compact).")
@click.argument("out", type=click.Path(file_okay=False))
@_filters
@click.option("--layout", type=click.Choice(["json", "compact"]), default="json", show_default=True,
              help="json: one OUT/{scan}/{cantor}.json per feature; compact: OUT/index.json.gz + OUT/layer_{L}.bin "
                   "(one model, one source per layer).")
@click.option("--scan", help="Folder name under OUT for --layout json (the graph's metadata.scan); default: the "
                             "model id.")
@db_option
@json_option
def export_circuit_tracer_command(out: str, model: str | None, source: str | None, layout: str, scan: str | None,
                                  db: str, as_json: bool) -> None:
    """Write circuit-tracer feature files: OUT/{scan}/{cantor(layer, index)}.json, or the compact layout.

    The json layout is what `trace serve` and circuit-tracer's local frontend read per feature. The compact
    layout (OUT/index.json.gz mapping each layer to OUT/layer_{L}.bin and byte offsets, one zlib record per
    feature) is what circuit-tracer's own frontend reads with HTTP Range requests: from a Hugging Face repo's
    features/ folder (graph metadata.scan = "owner/repo"), or, in circuit-tracer releases whose
    `start-server` takes --features_dir, from `--features_dir OUT` (metadata.scan starting with "/").
    The compact export is written to a temporary folder and renamed into place.

    \b
    Example:
      featuredb export circuit-tracer graphs/features --model smollm2-135m
      featuredb export circuit-tracer hf-repo/features --layout compact --model smollm2-135m
    """
    if layout == "compact" and scan:
        raise click.UsageError("--scan applies to --layout json only (the compact layout has no scan folders)")
    with open_store(db, read_only=True) as store:
        if layout == "compact":
            from featuredb.formats.circuit_tracer_compact import export_circuit_tracer_compact

            report = export_circuit_tracer_compact(store, out, model=model, source=source)
        else:
            report = {**export_circuit_tracer(store, out, model=model, source=source, scan=scan), "layout": "json"}
    if as_json:
        emit_json(report)
        return
    if layout == "compact":
        click.echo(f"wrote {report['features']} feature(s) of {report['model']} ({len(report['layers'])} layer(s), "
                   f"{report['bytes'] / 1e6:.1f} MB) to {out}/ (index.json.gz + layer_{{L}}.bin) "
                   f"in {report['seconds']:.1f}s")
        return
    click.echo(f"wrote {report['features']} feature file(s) to {out}/{{{','.join(report['scans'])}}}/ "
               f"in {report['seconds']:.1f}s")


@_export_command("parquet", short_help="One Parquet file per table.")
def export_parquet_command(out: str, model: str | None, source: str | None, db: str, as_json: bool) -> None:
    """Write every table as OUT/{table}.parquet; OUT may be an s3:// prefix.

    For s3:// the credentials come from the environment only: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    AWS_SESSION_TOKEN, AWS_REGION, and AWS_ENDPOINT_URL_S3 for an S3-compatible server. `featuredb serve` and
    `featuredb search` read the export back with --db s3://bucket/prefix.

    \b
    Example:
      featuredb export parquet dump/ --model gemma-2-2b
      featuredb export parquet s3://my-bucket/featuredb/gemma-2-2b --model gemma-2-2b
    """
    with open_store(db, read_only=True) as store:
        rows = export_parquet(store, out, model=model, source=source)
    if as_json:
        emit_json({"out": out, "rows": rows})
        return
    click.echo(f"wrote {len(rows)} parquet file(s) to {out}: " + ", ".join(f"{k} {v}" for k, v in rows.items()))


@click.command("sample-export", short_help="Write a synthetic Neuronpedia export for demos.")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--model", default="demo-model", show_default=True)
@click.option("--source", default="6-demo-transcoder", show_default=True)
@click.option("--features", "n_features", default=2048, show_default=True, type=click.IntRange(1))
@click.option("--activations", "n_activations", default=20, show_default=True, type=click.IntRange(1))
@click.option("--ctx-len", default=64, show_default=True, type=click.IntRange(1))
@json_option
def sample_export(out: str, model: str, source: str, n_features: int, n_activations: int, ctx_len: int,
                  as_json: bool) -> None:
    """Write a synthetic Neuronpedia export (concept features) to OUT.

    \b
    Example:
      featuredb sample-export data/demo-export --features 2048
    """
    generate_export(out, model=model, source=source, n_features=n_features, n_activations=n_activations,
                    ctx_len=ctx_len)
    if as_json:
        emit_json({"out": out, "model": model, "source": source, "features": n_features})
        return
    click.echo(f"wrote a synthetic export of {n_features} features to {out}/{model}/{source}")
