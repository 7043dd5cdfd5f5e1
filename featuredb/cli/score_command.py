"""CLI: `featuredb score` (explanation scores: delphi's embedding score offline; detection and fuzzing via an LLM)."""

from __future__ import annotations

from pathlib import Path

import click

from featuredb.cli.common import db_option, emit_json, json_option, open_store
from featuredb.errors import FeatureDBError, NotFoundError

KINDS = ("embedding", "detection", "fuzz")
NO_ENDPOINT_NOTE = "detection and fuzzing need --endpoint and --scorer-model (an OpenAI-compatible chat endpoint)"


def _kinds(text: str | None, endpoint: str | None) -> list[str]:
    if text is None:
        return list(KINDS) if endpoint else ["embedding"]
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    for k in kinds:
        if k not in KINDS:
            raise FeatureDBError(f"unknown score kind {k!r}; expected some of {', '.join(KINDS)}")
    if not kinds:
        raise FeatureDBError(f"--kinds is empty; expected some of {', '.join(KINDS)}")
    llm = [k for k in kinds if k != "embedding"]
    if endpoint is None and llm:
        raise FeatureDBError(f"{' and '.join(llm)} need --endpoint and --scorer-model (an OpenAI-compatible chat "
                             "endpoint)")
    return list(dict.fromkeys(kinds))


@click.command("score", short_help="Score explanations (embedding; detection and fuzzing with an LLM).")
@click.option("--model", required=True, help="Model id in the store, e.g. smollm2-135m-instruct.")
@click.option("--source", help="Only this source, e.g. 15-featuredb-skip-4k.")
@click.option("--type", "type_name", help="Only explanations of this typeName (default: every type), "
              "e.g. featuredb-baseline or np_max-act-logits.")
@click.option("--kinds", help="Comma-separated: embedding, detection, fuzz (default: embedding; all three with "
              "--endpoint).")
@click.option("--endpoint", help="OpenAI-compatible base URL for detection and fuzzing, e.g. "
              "https://api.openai.com/v1 or http://localhost:11434/v1.")
@click.option("--scorer-model", help="Model name the endpoint serves; stored as explanationScoreModelName.")
@click.option("--key-env", default="OPENAI_API_KEY", show_default=True,
              help="Environment variable holding the API key (unset: no key is sent).")
@click.option("--concurrency", type=click.IntRange(1, 256), default=8, show_default=True,
              help="Requests in flight at once.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@db_option
@json_option
def score_command(model: str, source: str | None, type_name: str | None, kinds: str | None, endpoint: str | None,
                  scorer_model: str | None, key_env: str, concurrency: int, progress: bool | None, db: str,
                  as_json: bool) -> None:
    """Score how well each explanation picks out its feature's activating text, as Neuronpedia's ExplanationScore.

    embedding (eleuther_embedding, offline, all-MiniLM-L6-v2): AUROC of the explanation's cosine similarity to
    windows of the feature's top and interval examples against windows of other features' examples; it also
    becomes the explanation's scoreV2, which the label rule ranks by. detection (eleuther_recall) and fuzz
    (eleuther_fuzz) ask an LLM, with delphi's prompts, which examples fit the explanation (detection) or whether
    the marked tokens fit it (fuzzing); score = balanced accuracy. Scoring again replaces earlier scores.

    \b
    Example:
      featuredb score --model smollm2-135m-instruct --type featuredb-baseline
      featuredb score --model smollm2-135m-instruct --source 15-featuredb-skip-4k --kinds detection,fuzz \\
          --endpoint http://localhost:11434/v1 --scorer-model qwen2.5:7b
    """
    wanted = _kinds(kinds, endpoint)
    if not Path(db).exists():
        raise NotFoundError(f"{db}: no featuredb store here (import or ingest into it first)")
    endpoint_kinds = tuple(k for k in wanted if k != "embedding")
    chat = None
    if endpoint is not None:
        if not scorer_model:
            raise FeatureDBError("--endpoint needs --scorer-model (the model name the endpoint serves)")
        from featuredb.labels.chat_endpoint import ChatEndpoint

        chat = ChatEndpoint(endpoint, scorer_model, key_env=key_env, concurrency=concurrency)
    bar = progress if progress is not None else (False if as_json else None)
    summaries = []
    with open_store(db, read_only=False) as store:
        if "embedding" in wanted:
            from featuredb.labels.embedding_score import score_embedding

            summaries.append(score_embedding(store, model=model, source=source, type_name=type_name, progress=bar))
        if endpoint_kinds and chat is not None:
            from featuredb.labels.llm_scoring import score_with_llm

            summaries += score_with_llm(store, chat, model=model, source=source, type_name=type_name,
                                        kinds=endpoint_kinds, progress=bar)
    note = "" if endpoint is not None else NO_ENDPOINT_NOTE
    if as_json:
        emit_json({"scores": [{"type": s.type_name, "model": s.model_name, "features": s.features,
                               "explanations": s.explanations, "skipped": s.skipped, "mean": s.mean_score,
                               "seconds": round(s.seconds, 3), **({"texts_embedded": s.texts_embedded}
                                                                  if s.kind == "embedding" else {})}
                              for s in summaries], "note": note})
        return
    for s in summaries:
        mean = f"mean {s.mean_score:.3f}" if s.mean_score is not None else "no scores"
        extra = f", {s.texts_embedded:,} texts embedded" if s.kind == "embedding" else ""
        click.echo(f"{s.type_name} ({s.model_name}): scored {s.explanations:,} explanation(s) of {s.features:,} "
                   f"feature(s), {mean}, {s.skipped:,} without examples to score against, {s.seconds:.1f} s{extra}")
    if note:
        click.echo(f"note: {note}")

