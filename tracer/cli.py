"""CLI: `featuredb trace` (make, label, group and serve attribution graphs)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from featuredb.atomic_write import write_json_atomically
from featuredb.cli.common import FeatureDBGroup, db_option, emit_json, json_option, neuronpedia_options, open_store
from featuredb.errors import BadInputError


@click.group("trace", cls=FeatureDBGroup, short_help="Make (circuit-tracer), label, group and serve attribution graphs.")
def trace_group() -> None:
    """Attribution graphs: make them with circuit-tracer, label their features from the store, propose
    supernodes and serve them with circuit-tracer's frontend."""


@trace_group.command("label", short_help="Fill clerps from the store and propose supernodes.")
@click.argument("graph_file", metavar="GRAPH.json", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False), help="Labelled graph file.")
@click.option("--model", help="Model id in the store (default: from metadata.scan).")
@click.option("--source-set", help="Source set in the store (default: metadata.feature_details / transcoder_list).")
@click.option("--overwrite/--no-overwrite", default=False, show_default=True,
              help="Replace clerps that are already there, or keep them.")
@click.option("--online", is_flag=True, help="Ask Neuronpedia for features the store has no label for.")
@neuronpedia_options
@click.option("--max-supernodes", default=50, show_default=True, type=click.IntRange(0))
@click.option("--min-size", default=2, show_default=True, type=click.IntRange(2))
@click.option("--max-size", default=8, show_default=True, type=click.IntRange(2),
              help="Most features in one supernode.")
@click.option("--max-per-position", default=4, show_default=True, type=click.IntRange(1),
              help="Most supernodes at one token position.")
@click.option("--influence", default=0.95, show_default=True, type=click.FloatRange(0, 1),
              help="Group only the most influential feature nodes carrying this share of their influence.")
@click.option("--threshold", default=0.4, show_default=True, type=click.FloatRange(-1, 1),
              help="Similarity a group must keep (average linkage) to be one supernode.")
@click.option("--no-decoders", is_flag=True, help="Leave decoder-direction cosine out of the similarity.")
@click.option("--transcoders", type=click.Path(file_okay=False),
              help="Transcoder folder for the evidence (default: the one `trace attribute` recorded in the graph).")
@click.option("--evidence/--no-evidence", default=True, show_default=True,
              help="Zero each supernode in the model against random matched sets (needs the transcoders).")
@click.option("--random-sets", default=8, show_default=True, type=click.IntRange(2),
              help="Random feature sets per supernode for the evidence.")
@click.option("--keep-weak", is_flag=True, help="Keep supernodes whose effect is not beyond random, marked (weak).")
@click.option("--device", help="cpu, cuda ... for the evidence (default: cuda when present).")
@db_option
@json_option
def label_command(graph_file: str, out: str, model: str | None, source_set: str | None, overwrite: bool, online: bool,
                  api_key: str | None, base_url: str, max_supernodes: int, min_size: int, max_size: int,
                  max_per_position: int, influence: float, threshold: float, no_decoders: bool,
                  transcoders: str | None, evidence: bool, random_sets: int, keep_weak: bool, device: str | None,
                  db: str, as_json: bool) -> None:
    """Label every feature node of GRAPH.json (circuit-tracer or Neuronpedia) and propose supernodes.

    Each mapped feature node gets a clerp: the store's label (the best scoreV2/scoreV1, then
    np_max-act-logits, np_max-act, other types, featuredb-baseline), else with --online
    Neuronpedia's. Supernodes go to qParams.supernodes, their members to qParams.pinnedIds, and
    every label to qParams.clerps (Neuronpedia subgraph form). Only the most influential nodes off
    the sink position are grouped (at most --max-size per group, --max-per-position per position).
    With the transcoders the graph was made with, each proposal is zeroed against random matched
    feature sets; those not beyond random are dropped, and the evidence goes to OUT.evidence.json.

    \b
    Example:
      featuredb trace label graphs/dallas-austin.json -o graphs/dallas-austin.labelled.json
    """
    from featuredb.formats.graph_json import load_graph_model

    if Path(out).resolve() == Path(graph_file).resolve():
        raise BadInputError(f"{out}: write the labelled graph to another file than its input")
    start = time.perf_counter()
    graph = load_graph_model(graph_file)  # a malformed graph is refused before the labelling machinery loads
    from tracer.supernodes import SupernodeOptions
    from tracer.trace_label import trace_label

    client = None
    if online:
        from featuredb.neuronpedia import NeuronpediaClient

        client = NeuronpediaClient(base_url, api_key=api_key)
    options = SupernodeOptions(threshold=threshold, min_size=min_size, max_size=max_size,
                               max_per_position=max_per_position, influence=influence, max_supernodes=max_supernodes)
    ev_model, ev_note = evidence_model(graph, transcoders, device) if evidence else (None, "not computed (--no-evidence)")
    ev = {"evidence_model": ev_model, "keep_weak": keep_weak, "n_random": random_sets}
    try:
        if not Path(db).exists():  # a graph from elsewhere: grouped from its own clerps, edges and influence
            result = trace_label(None, graph, where=graph_file, options=options, **ev)
        else:
            with open_store(db, read_only=True) as store:
                result = trace_label(store, graph, where=graph_file, model=model, source_set=source_set,
                                     overwrite=overwrite, online=client, options=options,
                                     use_decoders=not no_decoders, **ev)
    finally:
        if client is not None:
            client.close()
    if ev_model is None:
        result.evidence_note = ev_note
    write_json_atomically(out, result.graph.to_json())
    if result.evidence is not None:
        write_json_atomically(evidence_path(out), result.evidence.as_dict())
    seconds = time.perf_counter() - start
    if as_json:
        emit_json({**result.as_dict(), **graph_scores(result.graph), "output": out, "seconds": round(seconds, 3)})
        return
    print_label_result(result)
    click.echo(f"wrote {out} in {seconds:.2f}s")
    if result.evidence is not None:
        slug = Path(out).name.removesuffix(".json")
        click.echo(f"wrote {evidence_path(out)}; see it with: featuredb trace serve {Path(out).parent} "
                   f"(then open http://127.0.0.1:8032/evidence/{slug})")


def evidence_path(graph_path: str | Path) -> Path:
    """GRAPH.evidence.json beside GRAPH.json."""
    p = Path(graph_path)
    return p.with_name((p.name[:-5] if p.name.endswith(".json") else p.name) + ".evidence.json")


def evidence_model(graph: Any, transcoders: str | None, device: str | None) -> tuple[object, str]:
    """(circuit-tracer's ReplacementModel for the graph, "") or (None, why the evidence is not computed)."""
    from featuredb.formats.graph_json import graph_metadata

    folder = transcoders or (graph_metadata(graph).get("generation_settings") or {}).get("transcoders")
    if not folder:
        return None, "not computed: the graph names no transcoders (a graph from elsewhere); pass --transcoders"
    if not (Path(str(folder)) / "config.yaml").is_file():
        return None, f"not computed: no transcoder folder at {folder}; pass --transcoders"
    try:
        import circuit_tracer  # noqa: F401
    except ImportError:
        return None, "not computed: circuit-tracer is not installed (pip install 'featuredb[circuit-tracer]')"
    from tracer.attribution_bridge import CircuitTracerSession, model_for_transcoders, transcoder_config

    cfg = transcoder_config(str(folder))
    model_path, model_id = model_for_transcoders(cfg)
    session = CircuitTracerSession(str(folder), model_path=model_path, model_id=model_id,
                                   set_name=str(cfg.get("set_name") or ""), device=device)
    return session.model, ""


def graph_scores(graph: Any) -> dict[str, float]:
    """circuit-tracer's replacement and completeness scores from a graph's metadata (a Graph or JSON), if present."""
    from featuredb.formats.graph_json import graph_metadata

    meta = graph_metadata(graph)
    return {k: float(meta[k]) for k in ("replacement_score", "completeness_score")
            if isinstance(meta.get(k), (int, float))}


def print_label_result(result: Any, echo: Any = click.echo) -> None:
    """What `trace label` did: mapping, labels by type, unmapped nodes, scores and supernodes."""
    r = result.report
    if getattr(result, "store_note", ""):
        echo(f"{r.model}: {r.feature_nodes} feature nodes; {result.store_note}, so nothing was labelled and the "
             "groups come from the graph's own clerps, edges and influence")
    else:
        echo(f"{r.model} / {r.source_set}: {r.feature_nodes} feature nodes, {r.mapped} in the store, "
             f"{r.labelled} labelled, {r.kept} kept, {len(r.unlabelled)} without a label")
    if r.by_type:
        echo("labels by type: " + ", ".join(f"{t} {n}" for t, n in r.by_type.items()))
    if r.unmapped:
        shown = ", ".join(f"{n} ({why})" for n, why in r.unmapped[:5])
        echo(f"{len(r.unmapped)} node(s) map to no store feature: {shown}{' ...' if len(r.unmapped) > 5 else ''}")
    scores = graph_scores(result.graph)
    if scores:
        echo("graph scores (circuit-tracer): " + ", ".join(f"{k.replace('_score', '')} {v:.3f}"
                                                           for k, v in scores.items()))
    g = getattr(result, "grouping", None)
    if g is not None:
        echo("signals: " + ", ".join(f"{k} on {v} of {g.considered} nodes" for k, v in g.signals.items()))
        if g.ungrouped:
            echo("left ungrouped: " + ", ".join(f"{v} {k}" for k, v in g.ungrouped.items()))
    ev = getattr(result, "evidence", None)
    if ev is None:
        echo(f"evidence: {getattr(result, 'evidence_note', 'not computed')}")
    else:
        echo(f"evidence: zeroing each proposal vs {ev.n_random} random matched sets, target {ev.target!r} "
             f"p={ev.p_target:.3f} ({ev.seconds:.1f}s)")
        for e in ev.supernodes:
            verdict = "beyond random" if e.beyond_random else "NOT beyond random"
            echo(f"  {e.label!r}: dp {e.delta_p:+.4f} vs random |dp| {e.random_mean:.4f} ± {e.random_sd:.4f} "
                 f"-> {verdict}; top-5 after: {', '.join(f'{t!r} {p:.2f}' for t, p in e.top5_after)}")
        if result.dropped:
            echo(f"dropped {len(result.dropped)} proposal(s) not beyond random (--keep-weak keeps them)")
    echo(f"{len(result.supernodes)} supernode(s) proposed:")
    for s in result.supernodes[:10]:
        where = f"positions {s.positions[0]}-{s.positions[-1]}" if len(s.positions) > 1 else \
            f"position {s.positions[0]}" if s.positions else ""
        echo(f"  {s.label!r}: {len(s.node_ids)} nodes at {where} ({', '.join(s.node_ids[:4])}"
             f"{' ...' if len(s.node_ids) > 4 else ''})")


@trace_group.command("attribute", short_help="Make an attribution graph with circuit-tracer, offline.")
@click.argument("prompt")
@click.option("--transcoders", required=True, type=click.Path(file_okay=False),
              help="A featuredb train folder (circuit-tracer per-layer set covering every layer).")
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False), help="Graph JSON to write.")
@click.option("--model", help="Model folder, .gguf or 'default' (default: the one the transcoders were trained on).")
@click.option("--slug", help="Graph slug (default: the output file's name, which trace serve lists it by).")
@click.option("--max-feature-nodes", default=2000, show_default=True, type=click.IntRange(0),
              help="Most feature nodes attributed (0: every active feature, circuit-tracer's own default).")
@click.option("--max-n-logits", default=10, show_default=True, type=click.IntRange(1))
@click.option("--desired-logit-prob", default=0.95, show_default=True, type=click.FloatRange(0, 1))
@click.option("--node-threshold", default=0.8, show_default=True, type=click.FloatRange(0, 1))
@click.option("--edge-threshold", default=0.98, show_default=True, type=click.FloatRange(0, 1))
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(1))
@click.option("--label", "then_label", is_flag=True, help="Also label and group it from the store (as trace label).")
@click.option("--device", help="cpu, cuda ... (default: cuda when present).")
@db_option
@json_option
def attribute_command(prompt: str, transcoders: str, out: str, model: str | None, slug: str | None,
                      max_feature_nodes: int, max_n_logits: int, desired_logit_prob: float, node_threshold: float,
                      edge_threshold: float, batch_size: int, then_label: bool, device: str | None, db: str,
                      as_json: bool) -> None:
    """Run circuit-tracer's attribution for PROMPT on the transcoders, prune it and write the graph JSON.

    The graph carries circuit-tracer's replacement and completeness scores and the metadata
    (scan, feature_details.neuronpedia_source_set) that `trace label` and `trace serve` map with no
    flags. Needs circuit-tracer (`pip install 'featuredb[circuit-tracer]'`; make demo/test install it).

    \b
    Example:
      featuredb trace attribute "Fact: Dallas is in the state of" --transcoders data/transcoders/smollm2-demo \\
          -o graphs/dallas.json --label
    """
    from tracer.attribution_bridge import AttributeOptions, CircuitTracerSession, model_for_transcoders, transcoder_config

    start = time.perf_counter()
    cfg = transcoder_config(transcoders)
    model_path, model_id = model_for_transcoders(cfg, model)
    set_name = str(cfg.get("set_name") or str(cfg.get("scan", "")).split("/")[-1] or Path(transcoders).name)
    slug = slug or Path(out).stem  # circuit-tracer's {slug}.json: trace serve lists a graph by its file name
    options = AttributeOptions(max_feature_nodes=max_feature_nodes or None, max_n_logits=max_n_logits,
                               desired_logit_prob=desired_logit_prob, batch_size=batch_size,
                               node_threshold=node_threshold, edge_threshold=edge_threshold)
    session = CircuitTracerSession(transcoders, model_path=model_path, model_id=model_id, set_name=set_name,
                                   options=options, device=device)
    made = session.attribute(prompt, slug)
    made.timings["load"] = session.load_seconds
    labelled = None
    if then_label:
        from tracer.trace_label import trace_label

        t0 = time.perf_counter()
        with open_store(db, read_only=True) as store:
            labelled = trace_label(store, made.graph, where=out, evidence_model=session.model)
        made.timings["label_and_group"] = time.perf_counter() - t0
    write_json_atomically(out, made.graph.to_json())
    if labelled is not None and labelled.evidence is not None:
        write_json_atomically(evidence_path(out), labelled.evidence.as_dict())
    made.timings["total"] = time.perf_counter() - start
    if as_json:
        emit_json({**made.summary(), "output": out, **({"labels": labelled.as_dict()} if labelled else {})})
        return
    s = made.summary()
    click.echo(f"{s['slug']}: {s['nodes']} nodes ({s['feature_nodes']} features from {len(s['feature_layers'])} "
               f"layers), {s['links']} links; attribution {made.timings['attribute']:.1f}s")
    click.echo("top predictions: " + ", ".join(f"{t!r} {p:.2f}" for t, p in made.top_predictions[:5]))
    click.echo(f"graph scores (circuit-tracer): replacement {made.replacement_score:.3f}, "
               f"completeness {made.completeness_score:.3f}")
    if labelled is not None:
        print_label_result(labelled)
    click.echo(f"wrote {out}; view it with: featuredb trace serve {Path(out).parent or '.'} "
               f"(then open http://127.0.0.1:8032/index.html?slug={slug})")


@trace_group.command("intervene", short_help="Scale a supernode in the model and compare top predictions.")
@click.argument("graph_file", metavar="GRAPH.json", type=click.Path(dir_okay=False, exists=True))
@click.option("--supernode", "label", required=True, help="The supernode's label in qParams (or a unique prefix).")
@click.option("--scale", default=0.0, show_default=True, type=float,
              help="Set each member to SCALE x its activation: 0 zeroes (ablates), -2 inhibits, 2 amplifies.")
@click.option("--prompt", help="Run this prompt instead of the graph's (members keep their positions).")
@click.option("--transcoders", type=click.Path(file_okay=False),
              help="Transcoder folder (default: the one `trace attribute` recorded in the graph).")
@click.option("--device", help="cpu, cuda ... (default: cuda when present).")
@json_option
def intervene_command(graph_file: str, label: str, scale: float, prompt: str | None, transcoders: str | None,
                      device: str | None, as_json: bool) -> None:
    """Steer a supernode of GRAPH.json and print the model's top predictions before and after.

    Uses circuit-tracer's feature interventions on the graph's own model and transcoders.

    \b
    Example:
      featuredb trace intervene data/graphs/dallas-texas.json --supernode '"Texas"' --scale -2
    """
    from featuredb.errors import FeatureDBError
    from featuredb.formats.graph_json import load_graph_model
    from tracer.supernode_intervention import find_supernode, intervene

    graph = load_graph_model(graph_file)  # supernodes saved by a frontend as a string too are decoded
    label, members = find_supernode(graph, label)
    model, why = evidence_model(graph, transcoders, device)
    if model is None:
        raise FeatureDBError(f"{graph_file}: cannot intervene: " + why.replace("not computed: ", ""))
    res = intervene(model, graph, members, scale, prompt)
    if as_json:
        emit_json({"supernode": label, "node_ids": members, **res})
        return
    click.echo(f"{label!r}: {res['members']} features ({res['active_members']} active) x {scale:g} on "
               f"{res['prompt']!r}")
    click.echo(f"  p({res['target']!r}): {res['p_target_before']:.4f} -> {res['p_target_after']:.4f}")
    click.echo("  before: " + ", ".join(f"{t!r} {p:.3f}" for t, p in res["before"]))
    click.echo("  after:  " + ", ".join(f"{t!r} {p:.3f}" for t, p in res["after"]))


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
    Open http://127.0.0.1:8032/index.html?slug=SLUG (SLUG is the file name without .json), and
    http://127.0.0.1:8032/evidence/SLUG for the supernodes' causal evidence, where trace label wrote it.
    With the store, feature pages are served here too (/{model}/{source}/{index}, /search): a node's
    title in the feature panel links to its page, and the page lists the folder's graphs using it.

    \b
    Example:
      featuredb trace frontend && featuredb trace serve graphs/ --port 8032
    """
    import uvicorn

    from tracer.graph_server import create_graph_app, default_frontend

    page, which = (Path(frontend), f"the page in {frontend}") if frontend else default_frontend()
    app = create_graph_app(directory, db if Path(db).exists() else None, frontend=page)
    click.echo(f"serving graphs in {directory} with {which} on http://{host}:{port}/index.html", err=True)
    from featuredb.server.limits import SHUTDOWN_GRACE_S

    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=SHUTDOWN_GRACE_S)


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
