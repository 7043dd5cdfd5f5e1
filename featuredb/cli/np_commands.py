"""CLI: `featuredb np ...`, syncing the store with Neuronpedia (or any Neuronpedia-compatible server)."""

from __future__ import annotations

from typing import Any, Callable

import click

from featuredb.cli.common import FeatureDBGroup, db_option, emit_json, json_option, neuronpedia_options, open_store
from featuredb.formats.graph_json import load_graph
from featuredb.neuronpedia.sync import (PullReport, graph_features, make_client, parse_indices, pull_features,
                                        subgraph_body, upload_payload)


def _connection(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--dry-run", is_flag=True, help="Print the requests instead of sending them.")(f)
    f = click.option("--concurrency", default=8, show_default=True, type=click.IntRange(1, 64),
                     help="Requests in flight for batch pulls.")(f)
    return neuronpedia_options(f)


def _pull(wanted: list[tuple[str, str, int]], summary: Callable[[PullReport], str], *, refresh: bool, base_url: str,
          api_key: str | None, concurrency: int, dry_run: bool, db: str, as_json: bool) -> None:
    """Pull the `wanted` features into the store; print the report as JSON or as the line `summary` makes of it."""
    with make_client(base_url, api_key, dry_run=dry_run, concurrency=concurrency) as client, \
            open_store(db, read_only=False) as store:
        report = pull_features(client, store, wanted, refresh=refresh)
    if as_json:
        emit_json(report.as_dict())
    else:
        click.echo(summary(report))


@click.group("np", cls=FeatureDBGroup, short_help="Sync features and labels with Neuronpedia.")
def np_group() -> None:
    """Pull features and labels from Neuronpedia; push labels, features and graphs to it."""


@np_group.command("pull", short_help="Pull features, activations and explanations into the store.")
@click.argument("model")
@click.argument("source")
@click.option("--indices", required=True, help="A-B, A,B,C or a file of indices.")
@click.option("--refresh", is_flag=True, help="Fetch again features the store already has.")
@_connection
@db_option
@json_option
def np_pull(model: str, source: str, indices: str, refresh: bool, base_url: str, api_key: str | None,
            concurrency: int, dry_run: bool, db: str, as_json: bool) -> None:
    """Pull features of MODEL SOURCE into the store, incrementally and resumably (one commit per batch).

    \b
    Example:
      featuredb np pull gpt2-small 8-res-jb --indices 0-999
    """
    def summary(report: PullReport) -> str:
        return (f"pulled {report.fetched} feature(s), skipped {report.skipped} already stored, "
                f"{len(report.missing)} not found, in {report.seconds:.1f}s")

    _pull([(model, source, i) for i in parse_indices(indices)], summary, refresh=refresh, base_url=base_url,
          api_key=api_key, concurrency=concurrency, dry_run=dry_run, db=db, as_json=as_json)


@np_group.command("pull-graph-labels", short_help="Pull explanations for the features a graph uses.")
@click.argument("graph", type=click.Path(dir_okay=False))
@click.option("--model", help="Model id (default: from metadata.scan).")
@click.option("--source-set", help="Source set (default: metadata.feature_details.neuronpedia_source_set).")
@click.option("--refresh", is_flag=True, help="Fetch again features the store already has.")
@_connection
@db_option
@json_option
def np_pull_graph_labels(graph: str, model: str | None, source_set: str | None, refresh: bool, base_url: str,
                         api_key: str | None, concurrency: int, dry_run: bool, db: str, as_json: bool) -> None:
    """Fetch, through POST /api/features, exactly the features GRAPH's nodes use.

    \b
    Example:
      featuredb np pull-graph-labels austin-dallas.json
    """
    wanted = graph_features(load_graph(graph), model, source_set)

    def summary(report: PullReport) -> str:
        return (f"{len(wanted)} feature(s) in the graph: pulled {report.fetched}, had {report.skipped}, "
                f"{len(report.missing)} not on the server")

    _pull(wanted, summary, refresh=refresh, base_url=base_url, api_key=api_key, concurrency=concurrency,
          dry_run=dry_run, db=db, as_json=as_json)


@np_group.command("push-labels", short_help="Save a graph's labels and supernodes as a Neuronpedia subgraph.")
@click.argument("graph", type=click.Path(dir_okay=False))
@click.option("--model", help="Model id (default: from metadata.scan).")
@click.option("--name", "display_name", help="Subgraph display name.")
@_connection
@json_option
def np_push_labels(graph: str, model: str | None, display_name: str | None, base_url: str, api_key: str | None,
                   concurrency: int, dry_run: bool, as_json: bool) -> None:
    """POST /api/graph/subgraph/save with the graph's clerps, qParams.supernodes and pinnedIds.

    \b
    Example:
      featuredb np push-labels labelled.json --dry-run
    """
    body = subgraph_body(load_graph(graph), model)
    with make_client(base_url, api_key, dry_run=dry_run) as client:
        result = client.save_subgraph(body["modelId"], body["slug"], pinned_ids=body["pinnedIds"],
                                      supernodes=body["supernodes"], clerps=body["clerps"],
                                      display_name=display_name)
    if as_json:
        emit_json({"clerps": len(body["clerps"]), "supernodes": len(body["supernodes"]), "response": result})
    else:
        click.echo(f"saved {len(body['clerps'])} label(s) and {len(body['supernodes'])} supernode(s) "
                   f"for {body['modelId']}/{body['slug']}")


@np_group.command("upload-features", short_help="Upload a source's features and explanations.")
@click.argument("model")
@click.argument("source")
@_connection
@db_option
@json_option
def np_upload_features(model: str, source: str, base_url: str, api_key: str | None, concurrency: int,
                       dry_run: bool, db: str, as_json: bool) -> None:
    """POST /api/feature/upload-batch (128 features a call) to a source set you own on Neuronpedia.

    \b
    Example:
      featuredb np upload-features smollm2-135m-instruct 6-featuredb-tc --dry-run
    """
    with open_store(db, read_only=True) as store:
        payload = upload_payload(store, model, source)
    with make_client(base_url, api_key, dry_run=dry_run) as client:
        client.upload_features(model, source, payload)
    if as_json:
        emit_json({"features": len(payload), "calls": -(-len(payload) // 128)})
    else:
        click.echo(f"uploaded {len(payload)} feature(s) of {model}/{source} in {-(-len(payload) // 128)} call(s)")


@np_group.command("upload-graph", short_help="Upload a graph JSON to Neuronpedia.")
@click.argument("graph", type=click.Path(dir_okay=False))
@_connection
@json_option
def np_upload_graph(graph: str, base_url: str, api_key: str | None, concurrency: int, dry_run: bool,
                    as_json: bool) -> None:
    """Upload GRAPH: signed-put, PUT to the signed URL, then save-to-db.

    \b
    Example:
      featuredb np upload-graph labelled.json --dry-run
    """
    g = load_graph(graph)
    with make_client(base_url, api_key, dry_run=dry_run) as client:
        result = client.upload_graph(g)
    if as_json:
        emit_json(result)
    else:
        click.echo(f"uploaded graph {g['metadata']['slug']}")
