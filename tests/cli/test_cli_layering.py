"""The command line is the only layer with an argument parser."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ("hw", "sim", "compiler", "dlfusion")


def _imports_argparse(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import) and any(alias.name.split(".")[0] == "argparse" for alias in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "argparse":
            return True
    return False


def _library_modules():
    for folder in LIBRARY:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if (ROOT / "dlfusion" / "cli") not in path.parents:
                yield path


def test_the_library_has_modules():
    modules = {path.relative_to(ROOT).as_posix() for path in _library_modules()}
    assert {"dlfusion/bench.py", "compiler/tune/bench.py", "sim/rtl.py", "sim/verilator_tool.py"} <= modules


@pytest.mark.parametrize("path", list(_library_modules()), ids=lambda path: path.relative_to(ROOT).as_posix())
def test_no_argparse_outside_the_cli(path):
    assert not _imports_argparse(path), f"{path.relative_to(ROOT)} imports argparse: parsers live in dlfusion/cli/"


def test_the_cli_parses():
    from dlfusion.cli import build_parser
    commands = build_parser()._subparsers._group_actions[0].choices
    assert {"verilog", "synth", "run", "layer", "compile", "models", "export", "prune", "demo", "characterize",
            "tune", "bench", "lint"} == set(commands)
    benchmarks = commands["bench"]._subparsers._group_actions[0].choices
    assert set(benchmarks) == {"foundation", "scaling", "zoo", "sparse", "tune", "simspeed"}
