"""CLI: `featuredb trace label` (labels and supernodes for an attribution graph)."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import click

from featuredb.cli.common import FeatureDBGroup, db_option, emit_json, json_option, open_store
from featuredb.errors import BadInputError


@click.group("trace", cls=FeatureDBGroup, short_help="Label attribution graphs and propose supernodes.")
def trace_group() -> None:
    """Attribution graphs: label their features from the store and propose supernodes."""


def write_json_atomically(path: str, data: object) -> None:
    """Write JSON to a temporary file beside `path`, then rename it into place (never half-written)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, separators=(",", ":"))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@trace_group.command("label", short_help="Fill clerps from the store and propose supernodes.")
@click.argument("graph_file", metavar="GRAPH.json", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False), help="Labelled graph file.")
@click.option("--model", help="Model id in the store (default: from metadata.scan).")
@click.option("--source-set", help="Source set in the store (default: metadata.feature_details / transcoder_list).")
@click.option("--overwrite", is_flag=True, help="Replace clerps that are already there.")
@click.option("--online", is_flag=True, help="Ask Neuronpedia for features the store has no label for.")
@click.option("--api-key", envvar="NEURONPEDIA_API_KEY", help="Neuronpedia API key for --online.")
@click.option("--base-url", default="https://www.neuronpedia.org", show_default=True, help="Neuronpedia for --online.")
@click.option("--max-supernodes", default=50, show_default=True, type=click.IntRange(0))
@click.option("--min-size", default=2, show_default=True, type=click.IntRange(2))
@click.option("--threshold", default=0.35, show_default=True, type=click.FloatRange(-1, 1),
              help="Similarity a group must keep (average linkage) to be one supernode.")
@click.option("--no-decoders", is_flag=True, help="Leave decoder-direction cosine out of the similarity.")
@db_option
@json_option
def label_command(graph_file: str, out: str, model: str | None, source_set: str | None, overwrite: bool, online: bool,
                  api_key: str | None, base_url: str, max_supernodes: int, min_size: int, threshold: float,
                  no_decoders: bool, db: str, as_json: bool) -> None:
    """Label every feature node of GRAPH.json (circuit-tracer or Neuronpedia) and propose supernodes.

    Each mapped feature node gets a clerp: the store's explanation (np_max-act-logits, then
    np_max-act, then the best score), else its featuredb-baseline label, else with --online
    Neuronpedia's. Supernodes go to qParams.supernodes, their members to qParams.pinnedIds, and
    every label to qParams.clerps (Neuronpedia subgraph form).

    \b
    Example:
      featuredb trace label graphs/dallas-austin.json -o graphs/dallas-austin.labelled.json
    """
    from featuredb.formats.graph_json import load_graph
    from tracer.supernodes import SupernodeOptions
    from tracer.trace_label import trace_label

    if Path(out).resolve() == Path(graph_file).resolve():
        raise BadInputError(f"{out}: write the labelled graph to another file than its input")
    start = time.perf_counter()
    graph = load_graph(graph_file)
    client = None
    if online:
        from featuredb.neuronpedia import NeuronpediaClient

        client = NeuronpediaClient(base_url, api_key=api_key)
    options = SupernodeOptions(threshold=threshold, min_size=min_size, max_supernodes=max_supernodes)
    try:
        with open_store(db, read_only=True) as store:
            result = trace_label(store, graph, where=graph_file, model=model, source_set=source_set,
                                 overwrite=overwrite, online=client, options=options, use_decoders=not no_decoders)
    finally:
        if client is not None:
            client.close()
    write_json_atomically(out, result.graph)
    seconds = time.perf_counter() - start
    if as_json:
        emit_json({**result.as_dict(), "output": out, "seconds": round(seconds, 3)})
        return
    r = result.report
    click.echo(f"{r.model} / {r.source_set}: {r.feature_nodes} feature nodes, {r.mapped} in the store, "
               f"{r.labelled} labelled, {r.kept} kept, {len(r.unlabelled)} without a label")
    if r.by_type:
        click.echo("labels by type: " + ", ".join(f"{t} {n}" for t, n in r.by_type.items()))
    if r.unmapped:
        shown = ", ".join(f"{n} ({why})" for n, why in r.unmapped[:5])
        click.echo(f"{len(r.unmapped)} node(s) map to no store feature: {shown}{' ...' if len(r.unmapped) > 5 else ''}")
    click.echo(f"{len(result.supernodes)} supernode(s) proposed:")
    for s in result.supernodes[:10]:
        click.echo(f"  {s.label!r}: {len(s.node_ids)} nodes ({', '.join(s.node_ids[:4])}{' ...' if len(s.node_ids) > 4 else ''})")
    click.echo(f"wrote {out} in {seconds:.2f}s")


@trace_group.command("serve", short_help="Serve a folder of graphs with circuit-tracer's frontend, offline.")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8032, show_default=True, type=click.IntRange(0, 65535))
@click.option("--frontend", type=click.Path(file_okay=False, exists=True),
              help="Folder of the page to serve (default: the copy `trace frontend` built, else circuit-tracer's "
                   "installed assets, else featuredb's viewer).")
@db_option
def serve_command(directory: str, host: str, port: int, frontend: str | None, db: str) -> None:
    """Serve the graphs in DIRECTORY (e.g. written by `trace label`) and feature files built from the store.

    The page is circuit-tracer's frontend, offline, once `featuredb trace frontend` has fetched it;
    else circuit-tracer's installed assets; else featuredb's small viewer.
    Open http://127.0.0.1:8032/index.html?slug=SLUG (SLUG is the file name without .json).

    \b
    Example:
      featuredb trace frontend && featuredb trace serve graphs/ --port 8032
    """
    import uvicorn

    from tracer.graph_server import create_graph_app, default_frontend

    page, which = (Path(frontend), f"the page in {frontend}") if frontend else default_frontend()
    app = create_graph_app(directory, db if Path(db).exists() else None, frontend=page)
    click.echo(f"serving graphs in {directory} with {which} on http://{host}:{port}/index.html", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


@trace_group.command("frontend", short_help="Fetch circuit-tracer's frontend and its libraries for offline use.")
@click.option("--out", default=str(Path("data") / "circuit-tracer-frontend"), show_default=True,
              type=click.Path(file_okay=False), help="Where to build it (`trace serve` looks in the default).")
@json_option
def frontend_command(out: str, as_json: bool) -> None:
    """Fetch circuit-tracer's graph frontend (its wheel, from PyPI) and the JavaScript libraries its page
    loads from CDNs (d3, d3-jetpack, dagre, pako, from npm), and point its feature panel at the local
    server, so `trace serve` shows graphs and feature examples with no internet. Needs pip and npm.

    \b
    Example:
      featuredb trace frontend
      featuredb trace serve graphs/      # now with circuit-tracer's frontend
    """
    from tracer.offline_frontend import describe, prepare_offline_frontend

    start = time.perf_counter()
    click.echo("fetching circuit-tracer's wheel (PyPI) and d3, d3-jetpack, dagre, pako (npm) ...", err=True)
    site = prepare_offline_frontend(out)
    seconds = time.perf_counter() - start
    if as_json:
        emit_json({"site": str(site), "seconds": round(seconds, 2)})
        return
    click.echo(f"built {describe(site)} in {seconds:.1f}s")
