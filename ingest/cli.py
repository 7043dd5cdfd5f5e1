"""CLI: `featuredb ingest` and `featuredb merge`."""

from __future__ import annotations

from typing import Any, Callable

import click

from featuredb.cli.common import db_option, emit_json, json_option
from featuredb.errors import FeatureDBError
from featuredb.search.filters import parse_layers
from ingest.run import IngestConfig, IngestSummary, merge_shards, run_ingest




def _shard(value: str | None) -> tuple[int, int] | None:
    if not value:
        return None
    try:
        i, n = (int(x) for x in value.split("/"))
    except ValueError:
        raise FeatureDBError(f"--shard {value!r}: expected i/n, e.g. 0/4") from None
    return i, n


def _print_summary(s: IngestSummary) -> None:
    rate = s.tokens / s.seconds if s.seconds else 0.0
    click.echo(f"{s.model_id}: {s.tokens:,} tokens in {s.windows:,} windows, {s.seconds:.1f}s ({rate:,.0f} tok/s)")
    if s.state_file:
        click.echo(f"shard state written to {s.state_file}; combine the shards with `featuredb merge`")
    else:
        click.echo(f"sources {', '.join(s.sources)}: {s.live_features:,} live and {s.dead_features:,} dead features")
    if s.ray:
        r = s.ray
        rate = f", {r['tokens_per_s']:,.0f} tok/s across workers" if r["tokens_per_s"] else ""
        click.echo(f"ray: {len(r['ran'])} of {r['shards']} shard(s) run, {len(r['reused'])} reused{rate}; "
                   f"merge {s.timings['merge']:.1f}s")
    c = s.corpus
    if c.get("empty_documents") or c.get("replaced_bytes"):
        click.echo(f"corpus: skipped {c.get('empty_documents', 0)} empty document(s), "
                   f"replaced {c.get('replaced_bytes', 0)} undecodable byte(s)")


def corpus_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--corpus and how to read its text, the same for ingest and train."""
    f = click.option("--split", default="train", show_default=True, help="Split of an hf: dataset.")(f)
    f = click.option("--text-column", default="text", show_default=True, help="Parquet column holding the text.")(f)
    f = click.option("--text-field", default="text", show_default=True, help="JSONL field holding the text.")(f)
    return click.option("--corpus", help="Text file/folder, .jsonl, .parquet, hf:NAME, wikitext:PATH (WikiText, "
                                         "detokenised), or 'installed-docs' (default).")(f)


@click.command("ingest", short_help="Index transcoder features of a model over a corpus.")
@click.option("--model", help="Hugging Face folder or id, a .gguf file, or 'default' (SmolLM2-135M-Instruct).")
@click.option("--transcoders", "transcoders", multiple=True, required=True,
              help="Transcoder folder/file (circuit-tracer, SAELens, GemmaScope npz, sparsify); repeatable.")
@corpus_options
@click.option("--layers", help="Only these layers, e.g. 3,5 or 2-6 or 0-3,10.")
@click.option("--model-id", help="Model id in the store (default: from the model).")
@click.option("--source-set", help="Source-set name; sources are {layer}-{source-set}.")
@click.option("--max-tokens", type=click.IntRange(1), help="Stop after this many tokens.")
@click.option("--ctx-len", default=128, show_default=True, type=click.IntRange(2))
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1))
@click.option("--top-examples", "k", default=20, show_default=True, type=click.IntRange(1),
              help="Top activating examples kept per feature (train's --k is active features per token).")
@click.option("--dtype", help="Model dtype: float32, bfloat16, float16 (default: fp32 on CPU, bf16 on GPU).")
@click.option("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present).")
@click.option("--checkpoint", default="data/ingest-checkpoint.pt", show_default=True, help="Checkpoint file.")
@click.option("--checkpoint-every", default=50, show_default=True, type=click.IntRange(1), help="Batches.")
@click.option("--resume", is_flag=True, help="Continue from --checkpoint.")
@click.option("--shard", help="Process batch b only when b %% n == i (i/n); merge the shard states later.")
@click.option("--state-out", help="Where a shard writes its state (default data/ingest-shard-i-of-n.pt).")
@click.option("--memory-gb", type=click.FloatRange(0.5), help="Keep memory under this many GB; layers are split "
              "into passes over the corpus when their state does not fit (default: half of this machine).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", metavar="[ADDRESS]",
              help="Run corpus shards as Ray tasks on the cluster at ADDRESS (e.g. ray://head:10001), or on a "
                   "local cluster when none is given; needs featuredb[ray].")
@click.option("--shards", type=click.IntRange(1), help="With --ray: how many shards (default: 2 per GPU, else per CPU).")
@click.option("--workers", type=click.IntRange(1), help="With --ray and no ADDRESS: CPUs of the local cluster "
              "(default: all).")
@click.option("--state-dir", default="data/ray-ingest", show_default=True,
              help="With --ray: where finished shard states wait for the merge (and --resume finds them).")
@db_option
@json_option
def ingest_command(model: str | None, transcoders: tuple[str, ...], corpus: str | None, text_field: str,
                   text_column: str, split: str, layers: str | None, model_id: str | None, source_set: str | None,
                   max_tokens: int | None, ctx_len: int, batch_size: int, k: int, dtype: str | None,
                   device: str | None, checkpoint: str, checkpoint_every: int, resume: bool, shard: str | None,
                   state_out: str | None, memory_gb: float | None, ray_address: str | None, shards: int | None,
                   workers: int | None, state_dir: str, db: str, as_json: bool) -> None:
    """Run a model and its transcoders over a corpus and store every feature's Neuronpedia records.

    Per feature: top-k activating windows, interval examples, frac_nonzero, maxActApprox, an activation
    histogram, and the top/bottom output logits of its decoder direction.

    With --ray the corpus is split into shards run as Ray tasks (a GPU each when the cluster has GPUs); their
    states are merged exactly, so the store equals a one-process ingest. A task whose worker dies is retried;
    a killed driver restarted with --resume runs only the shards that had not finished.

    \b
    Examples:
      featuredb ingest --model default --transcoders data/transcoders/smollm2 --max-tokens 50000 --memory-gb 8
      featuredb ingest --model default --transcoders data/transcoders/smollm2 --ray --shards 8
      featuredb ingest --model default --transcoders data/transcoders/smollm2 --ray ray://head:10001 --resume
    """
    chosen = parse_layers(layers)
    cfg = IngestConfig(transcoders=list(transcoders), model=model, corpus=corpus,
                       layers=list(chosen) if chosen else None, model_id=model_id, source_set=source_set,
                       text_field=text_field, text_column=text_column, split=split, max_tokens=max_tokens,
                       ctx_len=ctx_len, batch_size=batch_size, k=k,
                       dtype=dtype, device=device)
    if ray_address is not None:
        if shard or state_out:
            raise FeatureDBError("--ray splits the corpus itself; leave out --shard and --state-out")
        from ingest.ray_ingest import run_ray_ingest

        summary = run_ray_ingest(cfg, db, address=ray_address, shards=shards, workers=workers, resume=resume,
                                 state_dir=state_dir, memory_gb=memory_gb)
    elif shards or workers:
        raise FeatureDBError("--shards and --workers go with --ray")
    else:
        summary = run_ingest(cfg, db, resume=resume, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                             shard=_shard(shard), state_out=state_out, memory_gb=memory_gb)
    if as_json:
        emit_json(summary.as_dict())
    else:
        _print_summary(summary)


@click.command("merge", short_help="Combine ingest shard states into the store.")
@click.argument("states", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--device", help="Device for the logit computation.")
@db_option
@json_option
def merge_command(states: tuple[str, ...], device: str | None, db: str, as_json: bool) -> None:
    """Merge the states of `featuredb ingest --shard i/n` runs: the same rows as one unsharded run.

    \b
    Example:
      featuredb merge data/ingest-shard-0-of-2.pt data/ingest-shard-1-of-2.pt
    """
    summary = merge_shards(list(states), db, device=device)
    if as_json:
        emit_json(summary.as_dict())
    else:
        _print_summary(summary)
