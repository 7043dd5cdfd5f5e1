"""CLI: `featuredb label features` (the baseline labeler)."""

from __future__ import annotations

import click

from featuredb.cli.common import FeatureDBGroup, db_option, emit_json, json_option, open_store
from featuredb.labels.baseline import label_features
from featuredb.labels.label_rule import BASELINE_TYPE
from featuredb.store.reads import model_ids


@click.group("label", cls=FeatureDBGroup, short_help="Write labels for features in the store.")
def label_group() -> None:
    """Write labels for the store's features."""


@label_group.command("features", short_help="Baseline labels from top tokens and logits.")
@click.option("--model", help="Only this model.")
@click.option("--source", help="Only this source, e.g. 15-featuredb-skip-4k.")
@click.option("--score/--no-score", default=True, show_default=True,
              help="Score the new labels with the offline embedding score (as `featuredb score` does).")
@db_option
@json_option
def label_features_command(model: str | None, source: str | None, score: bool, db: str, as_json: bool) -> None:
    """Label every feature from its peak tokens, the token after them and its top output logits.

    Writes one explanation of type featuredb-baseline per feature (replacing earlier ones), for example
    '"Texas" after "the"', so search and graphs have labels before any LLM label exists, then scores them
    with the offline embedding score (eleuther_embedding, stored as scoreV2), per model.

    \b
    Example:
      featuredb label features --model smollm2-135m-instruct
    """
    from featuredb.labels.embedding_score import score_embedding

    scores = []
    with open_store(db, read_only=False) as store:
        summary = label_features(store, model=model, source=source)
        if score:
            store.refresh_search(only_if_dirty=True)  # embeds the new labels once; scoring reuses those vectors
            models = [model] if model else model_ids(store, having="explanations", type_name=BASELINE_TYPE)
            scores = [score_embedding(store, model=m, source=source, type_name=BASELINE_TYPE) for m in models]
    scored = [{"model": m, "labels": s.explanations, "mean_score": s.mean_score, "seconds": round(s.seconds, 2)}
              for m, s in zip([model] if model else models, scores)] if score else []
    if as_json:
        emit_json({"labelled": summary.labelled, "unlabelled": summary.unlabelled, "embedding_scores": scored})
    else:
        click.echo(f"labelled {summary.labelled:,} features ({summary.unlabelled:,} without examples or logits)")
        for s in scored:
            mean = f"{s['mean_score']:.3f}" if s["mean_score"] is not None else "n/a"
            click.echo(f"embedding score of {s['model']}'s {s['labels']:,} labels: mean AUROC {mean} "
                       f"({s['seconds']:.1f} s)")
