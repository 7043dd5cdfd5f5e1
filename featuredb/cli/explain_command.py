"""CLI: `featuredb explain` (LLM explanations through an OpenAI-compatible chat endpoint)."""

from __future__ import annotations

import sys

import click

from featuredb.cli.common import db_option, emit_json, json_option, open_store
from featuredb.labels.chat_endpoint import ChatEndpoint
from featuredb.labels.explain import ExplainReport, explain_features, parse_index_spec, request_json
from featuredb.labels.explain_prompts import MAX_TOKENS, NP_MAX_ACT_LOGITS, TYPE_NAMES


def _graph_keys(path: str, model: str, source_set: str | None) -> list[str]:
    from featuredb.formats.graph_json import load_graph
    from featuredb.neuronpedia.sync import graph_features

    return [f"{m}/{s}/{i}" for m, s, i in graph_features(load_graph(path), model, source_set)]


def _summary(r: ExplainReport) -> str:
    parts = [f"explained {r.explained:,} feature(s) with {r.explanation_model} ({r.type_name})",
             f"{r.skipped:,} already explained", f"{r.failed:,} failed"]
    if r.not_sent:
        parts.append(f"{r.not_sent:,} not sent")
    if r.without_examples:
        parts.append(f"{r.without_examples:,} without examples")
    if r.not_found:
        parts.append(f"{r.not_found:,} not in the store")
    tokens = f"{r.prompt_tokens:,} prompt + {r.completion_tokens:,} completion tokens"
    return f"{'; '.join(parts)}; {tokens} in {r.seconds:.1f}s ({r.features_per_second:.1f} features/s)"


@click.command("explain", short_help="Explain features with an LLM (any OpenAI-compatible endpoint).")
@click.option("--model", required=True, help="Model id in the store, e.g. smollm2-135m-instruct.")
@click.option("--source", help="Only this source, e.g. 15-featuredb-skip-4k.")
@click.option("--indices", help="Only these feature indices: 1,2,5-9.")
@click.option("--graph", "graph", type=click.Path(dir_okay=False),
              help="Only the features an attribution graph JSON uses.")
@click.option("--source-set", help="With --graph: the source set when the graph's metadata does not name one.")
@click.option("--endpoint", required=True,
              help="OpenAI-compatible base URL: https://api.openai.com/v1, http://localhost:11434/v1 (Ollama), "
                   "http://127.0.0.1:8000/v1 (vLLM).")
@click.option("--explainer-model", required=True, help="Model name the endpoint serves, e.g. gpt-4o-mini; stored "
              "as the explanation's explanationModelName.")
@click.option("--key-env", default="OPENAI_API_KEY", show_default=True,
              help="Environment variable holding the API key (unset: no key is sent, fine for local servers).")
@click.option("--type", "type_name", type=click.Choice(TYPE_NAMES), default=NP_MAX_ACT_LOGITS, show_default=True,
              help="Prompt, and the typeName the explanations are stored under.")
@click.option("--concurrency", type=click.IntRange(1, 256), default=8, show_default=True,
              help="Requests in flight at once.")
@click.option("--max-features", type=click.IntRange(0), help="Send at most this many features (the rest next run).")
@click.option("--retries", type=click.IntRange(0, 20), default=5, show_default=True,
              help="Retries per request on 429, 5xx, timeouts and connection errors.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
              help="Seconds per request.")
@click.option("--dry-run", is_flag=True, help="Print the first request and the estimated tokens; send nothing.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@click.option("--score/--no-score", default=True, show_default=True,
              help="Then give this type's explanations the offline embedding score, which the label rule ranks "
                   "by (without it a scored baseline label stays the feature's label).")
@db_option
@json_option
def explain_command(model: str, source: str | None, indices: str | None, graph: str | None, source_set: str | None,
                    endpoint: str, explainer_model: str, key_env: str, type_name: str, concurrency: int,
                    max_features: int | None, retries: int, timeout: float, dry_run: bool, progress: bool | None,
                    score: bool, db: str, as_json: bool) -> None:
    """Write LLM explanations for features that have examples, through any OpenAI-compatible chat endpoint.

    Each request shows the feature's top and interval examples (max-activating token marked) and its top output
    logits, in the manner of Neuronpedia's np_max-act-logits or oai_token-act-pair prompts. Explanations are
    stored as they arrive with typeName = --type and explanationModelName = --explainer-model; features that
    already have one of that type and model are skipped, so an interrupted run just resumes. The API key is
    read from --key-env and sent only to the endpoint's own host.

    \b
    Example:
      export OPENAI_API_KEY=...
      featuredb explain --model smollm2-135m-instruct --source 15-featuredb-skip-4k --indices 0-99 \\
          --endpoint https://api.openai.com/v1 --explainer-model gpt-4o-mini --dry-run
      featuredb explain --model smollm2-135m-instruct --graph austin.json \\
          --endpoint http://localhost:11434/v1 --explainer-model qwen2.5:7b
    """
    wanted = parse_index_spec(indices) if indices is not None else None
    keys = _graph_keys(graph, model, source_set) if graph else None
    chat = ChatEndpoint(endpoint, explainer_model, key_env=key_env, concurrency=concurrency, timeout=timeout,
                        max_retries=retries)
    shown = progress if progress is not None else (None if not as_json else False)
    scored = None
    with open_store(db, read_only=dry_run) as store:
        report = explain_features(store, chat, model=model, source=source, indices=wanted, keys=keys,
                                  type_name=type_name, max_features=max_features, dry_run=dry_run, progress=shown)
        if score and not dry_run and report.explained:
            from featuredb.labels.embedding_score import score_embedding

            scored = score_embedding(store, model=model, source=source, type_name=type_name, progress=shown)
    if as_json:
        emit_json({**report.as_dict(), "mean_embedding_score": scored.mean_score if scored else None})
    elif dry_run:
        if report.first_request is not None:
            click.echo(request_json(report))
        n = report.would_send
        click.echo(f"dry run: would send {n:,} request(s) to {chat.url}/chat/completions, about "
                   f"{report.estimated_prompt_tokens:,} prompt tokens (characters/4) and at most "
                   f"{n * MAX_TOKENS[type_name]:,} completion tokens; {report.skipped:,} already explained; "
                   "nothing sent")
    else:
        click.echo(_summary(report))
        if scored is not None and scored.mean_score is not None:
            click.echo(f"embedding score of {scored.explanations:,} {type_name} explanation(s): mean AUROC "
                       f"{scored.mean_score:.3f}")
    if report.failed:
        why = "the endpoint kept failing, so the run stopped; " if report.stopped_early else ""
        click.echo(f"featuredb: error: {report.failed:,} feature(s) failed ({why}run again to retry them); "
                   f"first: {report.first_error}", err=True)
        sys.exit(1)
