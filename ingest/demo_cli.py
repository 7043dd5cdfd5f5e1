"""CLI: `featuredb demo`, the main job."""

from __future__ import annotations

import click

from featuredb.cli.common import db_option, emit_json, json_option
from ingest.demo import run_demo
from ingest.demo_profiles import PROFILES


@click.command("demo", short_help="The whole loop on the default model: train, index, label, search, export.")
@click.option("--profile", type=click.Choice(sorted(PROFILES)), default="demo", show_default=True,
              help="demo: 3 layers in minutes on a laptop CPU; full: all 30 layers, more tokens (what the tracer needs).")
@click.option("--data-dir", default="data", show_default=True, help="Where the corpus, transcoders and exports go.")
@click.option("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present).")
@db_option
@json_option
def demo_command(profile: str, data_dir: str, device: str | None, db: str, as_json: bool) -> None:
    """Run the main job offline on the embedded defaults (SmolLM2-135M-Instruct, installed packages' docs).

    Fetches the default model, builds the offline corpus, trains skip-transcoders, indexes their features,
    writes baseline labels, runs two concept searches and exports circuit-tracer feature files. Each step
    says what it does and how long it took. Running it again reuses the trained transcoders.

    \b
    Example:
      featuredb demo                   # about 6-8 minutes on 2 CPU cores
      featuredb demo --profile full --device cuda
    """
    summary = run_demo(PROFILES[profile], db=db, data_dir=data_dir, device=device, quiet=as_json)
    if as_json:
        emit_json(summary.as_dict())
        return
    total = sum(summary.steps.values())
    click.echo(f"\nDone in {total / 60:.1f} min. The store is {summary.db}; transcoders are in {summary.transcoders} "
               f"(circuit-tracer format); feature files are in {summary.features_dir}.")
    click.echo("Try next:\n"
               f"  featuredb info --db {summary.db}\n"
               f'  featuredb search "numbers and versions" --db {summary.db}\n'
               f'  featuredb search " Python" --mode token --db {summary.db}\n'
               f'  featuredb search "pip install torch" --mode inference --db {summary.db}\n'
               f"  featuredb serve --db {summary.db}        # Neuronpedia-compatible API on 127.0.0.1:3000")
