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


TABLES = ("models", "releases", "source_sets", "sources", "features", "activations", "explanations",
          "explanation_scores", "feature_packs", "feature_docs", "example_windows", "activation_examples", "graphs",
          "subgraphs", "search_state", r"search_[a-z_]+")
TABLE_SQL = re.compile(r'\b(?:FROM|JOIN|INTO|UPDATE|TABLE)\s+"?(?:' + "|".join(TABLES) + r')\b"?(?![\w.(])')
PACKAGES = ("featuredb", "ingest", "tracer")


def _code_strings(tree: ast.AST) -> list[tuple[int, str]]:
    """Every string constant (f-string parts included) that is not a docstring, with its line."""
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_sql_against_the_tables_is_written_only_in_the_store_package() -> None:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.is_relative_to(ROOT / "featuredb" / "store"):
                continue
            for line, text in _code_strings(ast.parse(path.read_text(), str(path))):
                if TABLE_SQL.search(text):
                    found.append(f"{path.relative_to(ROOT)}:{line}: {TABLE_SQL.search(text).group(0)}")
    assert not found, "\n".join(found)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules a file imports, at the top or inside functions (type-checking-only imports left out)."""
    tree = ast.parse(path.read_text(), str(path))
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING") for n in ast.walk(node)}
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out |= {m for m in [node.module, *(f"{node.module}.{a.name}" for a in node.names)] if m in modules}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
    return out


def test_no_module_imports_itself_round_a_cycle_even_inside_a_function() -> None:
    paths = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
             for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    graph = {m: _imports(p, set(paths)) - {m} for m, p in paths.items()}
    cycles = []
    for start in graph:  # a path from a module's imports back to itself
        seen, todo = set(), list(graph[start])
        while todo:
            m = todo.pop()
            if m == start:
                cycles.append(start)
                break
            if m not in seen:
                seen.add(m)
                todo.extend(graph[m])
    assert not cycles, f"modules on an import cycle: {sorted(cycles)}"
