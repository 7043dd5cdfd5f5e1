"""CLI: `featuredb demo`, the main job: ingest's steps (train, index, label, search) plus the circuit-tracing loop.

This is the one place where the tracer drives the pipeline (the optional bridge of DESIGN.md): it hands ingest's
demo an extra step that makes, labels and groups attribution graphs with circuit-tracer.
"""

from __future__ import annotations

from pathlib import Path

import click

from featuredb.cli.common import db_option, emit_json, json_option
from ingest.demo import DemoSummary, ExtraStep, run_demo
from ingest.demo_profiles import PROFILES
from tracer.demo_graphs import DEMO_PROMPTS, make_demo_graphs
from tracer.graph_explainer import graph_explainer


@click.command("demo", short_help="The whole loop on the default model: train, index, label, search, graphs.")
@click.option("--profile", type=click.Choice(sorted(PROFILES)), default="demo", show_default=True,
              help="demo: all 30 layers in minutes on 2 CPU cores; full: more features and tokens (use a GPU).")
@click.option("--data-dir", default="data", show_default=True, help="Where the corpus, transcoders and graphs go.")
@click.option("--corpus", default="auto", show_default=True,
              help="auto: WikiText-2 from ../shared/corpus/wikitext-2 (or $FEATUREDB_WIKITEXT) when present, else "
                   "installed-docs; or wikitext, installed-docs, or any corpus spec `featuredb ingest` takes.")
@click.option("--no-graphs", is_flag=True, help="Skip the attribution graphs (circuit-tracer).")
@click.option("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present).")
@click.option("--endpoint", help="An OpenAI-compatible chat endpoint (e.g. http://localhost:11434/v1): explain the "
                                 "graphs' features with it (np_max-act-logits) and score them before labelling.")
@click.option("--explainer-model", help="With --endpoint: the chat model, e.g. gpt-4o-mini or qwen2.5:7b.")
@click.option("--key-env", default="OPENAI_API_KEY", show_default=True,
              help="With --endpoint: the environment variable holding the API key (unset: no key is sent).")
@db_option
@json_option
def demo_command(profile: str, data_dir: str, corpus: str, no_graphs: bool, device: str | None,
                 endpoint: str | None, explainer_model: str | None, key_env: str, db: str, as_json: bool) -> None:
    """Run the main job offline on the embedded defaults (SmolLM2-135M-Instruct; WikiText-2 or installed docs).

    Fetches the default model, picks the corpus (natural WikiText-2 articles where a copy is at hand, else
    the installed packages' docs), trains skip-transcoders for all 30 layers,
    indexes their features, writes baseline labels, runs two concept searches, then makes attribution
    graphs with circuit-tracer for two prompts, labels and groups them from the store, and prints their
    top predictions, scores and supernodes. Each step says what it does and how long it took. Running it
    again reuses the trained transcoders.

    \b
    Example:
      featuredb demo                   # about 20 minutes on 2 CPU cores
      featuredb demo --profile full --device cuda
      featuredb demo --endpoint http://localhost:11434/v1 --explainer-model qwen2.5:7b   # LLM labels too
    """
    if endpoint and not explainer_model:
        raise click.UsageError("--endpoint needs --explainer-model (the chat model to ask)")

    def graphs(summary: DemoSummary) -> dict:  # type: ignore[type-arg]
        explain = None
        if endpoint:
            explain = graph_explainer(summary.db, summary.model_id, endpoint, explainer_model or "", key_env,
                                      quiet=as_json)
        return make_demo_graphs(summary.transcoders, summary.db, summary.graphs_dir, echo=click.echo,
                                quiet=as_json, device=device, before_label=explain)

    extra = () if no_graphs else (ExtraStep("graphs", "attribution graphs with circuit-tracer for "
                                            + " and ".join(f'"{p}"' for p in DEMO_PROMPTS.values())
                                            + ", labelled and grouped from the store", graphs),)
    summary = run_demo(PROFILES[profile], db=db, data_dir=data_dir, device=device, quiet=as_json, extra_steps=extra,
                       corpus_choice=corpus)
    if as_json:
        emit_json(summary.as_dict())
        return
    total = sum(summary.steps.values())
    click.echo(f"\nDone in {total / 60:.1f} min. The store is {summary.db}; transcoders are in {summary.transcoders} "
               f"(circuit-tracer format); graphs are in {summary.graphs_dir}.")
    if not no_graphs:
        slug = next(iter(DEMO_PROMPTS))
        click.echo("Open the graphs in circuit-tracer's frontend, with feature panels from the store:\n"
                   f"  featuredb trace frontend && featuredb trace serve {summary.graphs_dir} --db {summary.db}\n"
                   f"  then http://127.0.0.1:8032/index.html?slug={slug}\n"
                   f"  and the supernodes' causal evidence at http://127.0.0.1:8032/evidence/{slug}")
    click.echo("Try next:\n"
               f"  featuredb info --db {summary.db}\n"
               f'  featuredb search "capital city" --db {summary.db}\n'
               f'  featuredb search "The hurricane hit Florida" --mode inference --db {summary.db}\n'
               f'  featuredb trace attribute "The capital of Texas is" --transcoders {summary.transcoders} '
               f"-o {Path(summary.graphs_dir) / 'texas.json'} --label --db {summary.db}\n"
               f"  featuredb serve --db {summary.db}        # feature pages at http://127.0.0.1:3000/ "
               "and Neuronpedia's API")
