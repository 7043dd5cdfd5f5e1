"""The `featuredb` console script: the root group that composes every sub-command."""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

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


COMMANDS_GROUP = "featuredb.commands"  # entry points: commands other packages (ingest, tracer) plug in


def plugin_commands() -> dict[str, EntryPoint]:
    """The commands installed packages register under COMMANDS_GROUP, by name (loaded only when used)."""
    return {ep.name: ep for ep in entry_points(group=COMMANDS_GROUP)}


class RootGroup(FeatureDBGroup):
    """The root group: the store's own commands plus those ingest and tracer register as entry points; the help
    lists each with its own short help."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *plugin_commands()})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is None and name in (plugins := plugin_commands()):
            command = plugins[name].load()
        return command


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
