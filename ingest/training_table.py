"""The per-layer training table a researcher reads: FVU, skip-only FVU, L0, dead, duplicates, outliers, CE loss."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Callable

import click

from ingest.train_run import LayerReport, TrainSummary


def summary_from_report(report: dict[str, Any]) -> TrainSummary:
    """A TrainSummary from training_report.json's dict."""
    known = {f.name for f in fields(TrainSummary)}
    return TrainSummary(**{**{k: v for k, v in report.items() if k in known},
                           "layers": [LayerReport(**r) for r in report["layers"]]})


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def print_training_table(s: TrainSummary, echo: Callable[[str], None] = click.echo) -> None:
    """The per-layer quality table: FVU, skip-only FVU, L0, dead, duplicates, outliers and CE loss recovered."""
    echo(f"{'layer':>5}  {'FVU':>6}  {'skip FVU':>8}  {'L0':>5}  {'dead':>6}  {'dup':>5}  {'outl.':>5}  "
         f"{'CE spliced':>10}  {'CE zero':>7}  {'recovered':>9}")
    for r in s.layers:
        echo(f"{r.layer:>5}  {r.fvu:>6.3f}  {r.skip_only_fvu:>8.3f}  {r.l0:>5.1f}  {r.dead_fraction:>6.1%}  "
             f"{r.duplicate_fraction:>5.1%}  {r.outlier_tokens:>5}  {_num(r.ce_spliced):>10}  "
             f"{_num(r.ce_zero_ablated):>7}  {_pct(r.ce_recovered):>9}")
    if s.ce_clean is not None and s.all_layers:
        a = s.all_layers
        echo(f"clean next-token loss {s.ce_clean:.3f} on {s.ce_tokens:,} held-out tokens; all {len(s.layers)} layers "
             f"spliced in at once: {a['spliced']:.3f} (zero-ablated {a['zero_ablated']:.3f}), "
             f"CE loss recovered {_pct(a['recovered'])}")
    echo(f"left out: {s.sink_tokens:,} position-0 (sink) tokens and {s.outlier_tokens:,} outlier tokens "
         f"(residual norm > 10x the median)")
