"""The packages' layering: featuredb never reaches ingest or tracer, ingest never reaches tracer; the commands and the
inference backend they add come in through entry points, and the root help is the commands' own."""

from __future__ import annotations

import ast
import re
from importlib.metadata import entry_points
from pathlib import Path

from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]


def _reached(package: str) -> dict[str, set[str]]:
    """Top-level packages each module of `package` imports, or names in a string as a dotted module path."""
    out: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names |= {m.group(1) for m in re.finditer(r"^(ingest|tracer)\.[a-z_]+$", node.value)}
        out[str(path.relative_to(ROOT))] = names
    return out


def test_featuredb_never_reaches_ingest_or_tracer_and_ingest_never_reaches_tracer() -> None:
    bad = {m: n & {"ingest", "tracer"} for m, n in _reached("featuredb").items() if n & {"ingest", "tracer"}}
    bad |= {m: n & {"tracer"} for m, n in _reached("ingest").items() if "tracer" in n}
    assert not bad


def test_ingest_and_tracer_plug_in_through_entry_points_and_the_help_is_their_own() -> None:
    from featuredb.cli.root import cli

    commands = {ep.name: ep.value for ep in entry_points(group="featuredb.commands")}
    assert {"ingest", "merge", "train", "demo", "trace"} <= set(commands)
    backends = [ep.value for ep in entry_points(group="featuredb.inference_backends")]
    assert backends == ["ingest.inference_backend:StoreInferenceBackend"]
    out = CliRunner().invoke(cli, ["--help"], terminal_width=200).output
    for name, value in commands.items():
        module, attr = value.split(":")
        command = getattr(__import__(module, fromlist=[attr]), attr)
        line = next(l for l in out.splitlines() if l.strip().startswith(name + " "))
        assert line.split(None, 1)[1].strip() == command.get_short_help_str(200)
