"""CLI: `featuredb train`."""

from __future__ import annotations

import click

from featuredb.cli.common import emit_json, json_option
from featuredb.errors import FeatureDBError
from featuredb.search.filters import parse_layers
from ingest.cli import corpus_options
from ingest.train_run import TrainConfig, TrainRun, TrainSummary
from ingest.training_table import print_training_table
from ingest.transcoder_training import TrainSettings


def _print_summary(s: TrainSummary) -> None:
    click.echo(f"{s.model_id} / {s.set_name}: {s.train_tokens:,} training and {s.test_tokens:,} held-out tokens, "
               f"{s.tokens_per_second:,.0f} training token-layers/s, {s.timings['total']:.1f}s")
    print_training_table(s)
    click.echo(f"saved to {s.out} (circuit-tracer format); index it with: "
               f"featuredb ingest --model default --transcoders {s.out}")


@click.command("train", short_help="Train skip-transcoders for a model (circuit-tracer format).")
@click.option("--model", help="Hugging Face folder or id, a .gguf file, or 'default' (SmolLM2-135M-Instruct).")
@click.option("--layers", help="Layers to train, e.g. 3,5 or 0-29 (default: all).")
@click.option("--out", default="data/transcoders/smollm2", show_default=True, help="Output folder.")
@corpus_options
@click.option("--train-tokens", default=40_000, show_default=True, type=click.IntRange(128))
@click.option("--test-tokens", default=8_000, show_default=True, type=click.IntRange(128),
              help="Held-out tokens for FVU, L0 and dead fraction.")
@click.option("--features", "n_features", default=4096, show_default=True, type=click.IntRange(16))
@click.option("--activation", type=click.Choice(["topk", "jumprelu"]), default="topk", show_default=True,
              help="topk trains BatchTopK and saves a JumpReLU threshold; jumprelu trains thresholds directly.")
@click.option("--k", default=32, show_default=True, type=click.IntRange(1), help="Active features per token (target).")
@click.option("--epochs", default=4, show_default=True, type=click.IntRange(1))
@click.option("--lr", default=1e-3, show_default=True, type=float)
@click.option("--batch-tokens", default=512, show_default=True, type=click.IntRange(16))
@click.option("--no-skip", is_flag=True, help="Train without the linear skip connection.")
@click.option("--set-name", help="Source-set name (default featuredb-skip-4k for 4096 features).")
@click.option("--ctx-len", default=128, show_default=True, type=click.IntRange(2))
@click.option("--memory-gb", default=6.0, show_default=True, type=float,
              help="Activation memory per group of layers that share one harvest.")
@click.option("--ce-tokens", default=1024, show_default=True, type=click.IntRange(0),
              help="Held-out tokens for the spliced-in next-token loss (0: skip it).")
@click.option("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--checkpoint-every", default=50, show_default=True, type=click.IntRange(1), help="Optimiser steps.")
@click.option("--resume", is_flag=True, help="Continue from OUT/train-checkpoint.pt.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", metavar="[ADDRESS]",
              help="Train each layer group as a Ray task on the cluster at ADDRESS, or on a local cluster when none "
                   "is given (lower --memory-gb for more, smaller groups); needs featuredb[ray].")
@click.option("--workers", type=click.IntRange(1), help="With --ray and no ADDRESS: CPUs of the local cluster.")
@json_option
def train_command(model: str | None, layers: str | None, out: str, corpus: str | None, text_field: str,
                  text_column: str, split: str,
                  train_tokens: int, test_tokens: int, n_features: int, activation: str, k: int, epochs: int,
                  lr: float, batch_tokens: int, no_skip: bool, set_name: str | None, ctx_len: int, memory_gb: float,
                  ce_tokens: int, device: str | None, seed: int, checkpoint_every: int, resume: bool,
                  ray_address: str | None, workers: int | None, as_json: bool) -> None:
    """Train per-layer skip-transcoders (MLP input to MLP output) and save them in circuit-tracer's format.

    All requested layers are read from one forward pass per batch. Position 0 of every window (the attention
    sink) and residual-norm outliers are never trained or evaluated on. Per layer, OUT/training_report.json
    and the printed table give held-out FVU, skip-only FVU, L0, dead and duplicate fractions, and the
    spliced-in next-token loss against the clean and zero-ablated model (plus all layers at once). A layer
    that does not beat its skip path is retrained, or the command fails naming it.

    With --ray each group of layers that shares one harvest (see --memory-gb) is trained as a Ray task, a GPU
    each when the cluster has GPUs; OUT then holds what a one-process run with the same groups writes.

    \b
    Examples:
      featuredb train --model default --layers 10,15,20 --out data/transcoders/smollm2
      featuredb train --model default --out data/transcoders/smollm2 --ray --memory-gb 0.5
    """
    settings = TrainSettings(n_features=n_features, activation=activation, k=k, epochs=epochs, lr=lr,
                             batch_tokens=batch_tokens, skip=not no_skip, seed=seed)
    chosen = parse_layers(layers)
    cfg = TrainConfig(out=out, model=model, layers=list(chosen) if chosen else None, corpus=corpus,
                      text_field=text_field, text_column=text_column, split=split,
                      train_tokens=train_tokens, test_tokens=test_tokens, ctx_len=ctx_len, set_name=set_name,
                      settings=settings, memory_gb=memory_gb, device=device, ce_tokens=ce_tokens)
    if ray_address is not None:
        if resume:
            raise FeatureDBError("--resume is not supported with --ray: a failed layer group is retried by Ray")
        from ingest.ray_train import run_ray_train

        summary = run_ray_train(cfg, address=ray_address, workers=workers)
    elif workers:
        raise FeatureDBError("--workers goes with --ray")
    else:
        summary = TrainRun(cfg).run(resume=resume, checkpoint_every=checkpoint_every)
    if as_json:
        emit_json(summary.as_dict())
    else:
        _print_summary(summary)
