"""The `featuredb` console script: the root group that composes every sub-command."""

from __future__ import annotations

import click

from featuredb.cli.common import FeatureDBGroup
from featuredb.cli.store_commands import feature, info, query
from featuredb.cli.transfer_commands import export_group, import_group, sample_export


@click.group(cls=FeatureDBGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120})
@click.version_option(package_name="featuredb")
def cli() -> None:
    """featuredb: a local, Neuronpedia-compatible database of transcoder features.

    \b
    Example:
      featuredb import neuronpedia exports/ && featuredb info
    """


for command in (info, feature, query, import_group, export_group, sample_export):
    cli.add_command(command)


def main() -> None:
    """Entry point of the console script."""
    cli(prog_name="featuredb")
