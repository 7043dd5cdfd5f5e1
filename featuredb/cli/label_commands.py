"""CLI: `featuredb label features` (the baseline labeler)."""

from __future__ import annotations

import click

from featuredb.cli.common import FeatureDBGroup, db_option, emit_json, json_option, open_store
from featuredb.labels.baseline import label_features


@click.group("label", cls=FeatureDBGroup, short_help="Write labels for features in the store.")
def label_group() -> None:
    """Write labels for the store's features."""


@label_group.command("features", short_help="Baseline labels from top tokens and logits.")
@click.option("--model", help="Only this model.")
@click.option("--source", help="Only this source, e.g. 15-featuredb-skip-4k.")
@db_option
@json_option
def label_features_command(model: str | None, source: str | None, db: str, as_json: bool) -> None:
    """Label every feature from its peak tokens, the token after them and its top output logits.

    Writes one explanation of type featuredb-baseline per feature (replacing earlier ones), for example
    '"Texas" → says "Austin"', so search and graphs have labels before any LLM label exists.

    \b
    Example:
      featuredb label features --model smollm2-135m-instruct
    """
    with open_store(db, read_only=False) as store:
        summary = label_features(store, model=model, source=source)
    if as_json:
        emit_json({"labelled": summary.labelled, "unlabelled": summary.unlabelled})
    else:
        click.echo(f"labelled {summary.labelled:,} features ({summary.unlabelled:,} without examples or logits)")
