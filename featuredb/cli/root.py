"""The `featuredb` console script: the root group that composes every sub-command."""

from __future__ import annotations

import importlib

import click

from featuredb.cli.common import FeatureDBGroup
from featuredb.cli.explain_command import explain_command
from featuredb.cli.score_command import score_command
from featuredb.cli.label_commands import label_group
from featuredb.cli.np_commands import np_group
from featuredb.cli.search_command import reindex_command, search_command
from featuredb.cli.serve_command import serve_command
from featuredb.cli.store_commands import feature, info, query
from featuredb.cli.transfer_commands import export_group, import_group, sample_export


# Sub-commands from the other packages, imported only when used: featuredb itself never imports them.
LAZY_COMMANDS = {
    "ingest": ("ingest.cli", "ingest_command", "Index transcoder features of a model over a corpus."),
    "merge": ("ingest.cli", "merge_command", "Combine ingest shard states into the store."),
    "train": ("ingest.train_cli", "train_command", "Train skip-transcoders for a model (circuit-tracer format)."),
    "demo": ("tracer.demo_cli", "demo_command", "The whole loop on the default model: train, index, label, search, graphs."),
    "trace": ("tracer.cli", "trace_group", "Make (circuit-tracer), label, group and serve attribution graphs."),
}


class RootGroup(FeatureDBGroup):
    """The root group: eager store commands plus lazily imported ingest/tracer commands."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAZY_COMMANDS])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS:
            module, attr, _ = LAZY_COMMANDS[name]
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(n, self.commands[n].get_short_help_str(80)) for n in super().list_commands(ctx)]
        rows += [(n, help_) for n, (_, _, help_) in LAZY_COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(sorted(rows))


@click.group(cls=RootGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120})
@click.version_option(package_name="featuredb")
def cli() -> None:
    """featuredb: a local, Neuronpedia-compatible database of transcoder features.

    \b
    Example:
      featuredb import neuronpedia exports/ && featuredb info
    """


for command in (info, feature, query, import_group, export_group, sample_export, serve_command, np_group,
                search_command, reindex_command, label_group, explain_command, score_command):
    cli.add_command(command)


def main() -> None:
    """Entry point of the console script."""
    cli(prog_name="featuredb")
