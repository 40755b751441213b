"""Imports point one way: ``hw`` <- ``sim`` and ``compiler`` <- ``compiler.tune`` <- the command line.

Every ``import`` statement of the package counts, those inside functions (lazy imports)
included; the test fails on an import against the layering or on an import cycle.
"""

import ast
from pathlib import Path

import networkx

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"hw": "dlfusion.hw", "sim": "dlfusion.sim", "compiler": "dlfusion.compiler", "dlfusion": "dlfusion"}
#: What each layer may import (besides itself).
ALLOWED = {
    "hw": set(),
    "sim": {"hw"},
    "compiler": {"hw"},
    "tune": {"hw", "sim", "compiler"},
    "cli": {"hw", "sim", "compiler", "tune"},
}


def _modules() -> dict[str, Path]:
    modules = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


def _layer(module: str) -> str:
    if module.startswith("dlfusion.compiler.tune"):
        return "tune"
    for layer in ("hw", "sim", "compiler"):
        if module.startswith(f"dlfusion.{layer}"):
            return layer
    return "cli"


def _imports(module: str, path: Path, modules: dict) -> set[str]:
    is_package = path.name == "__init__.py"
    base = module.split(".") if is_package else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                origin = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                origin = node.module
            # ``from package import module`` imports the module; ``from module import name`` the module
            names = [f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in modules else origin
                     for alias in node.names]
        else:
            continue
        for name in names:
            # the longest module of the package the name is or is inside of
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module and name.startswith("dlfusion"):
                found.add(name)
    return found


def _graph():
    modules = _modules()
    graph = networkx.DiGraph()
    for module, path in modules.items():
        graph.add_node(module)
        for target in _imports(module, path, modules):
            graph.add_edge(module, target)
    return graph


def test_imports_follow_the_layers():
    graph = _graph()
    assert graph.number_of_nodes() > 50
    wrong = [f"{a} -> {b}" for a, b in graph.edges
             if _layer(a) != _layer(b) and _layer(b) not in ALLOWED[_layer(a)]]
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles():
    graph = _graph()
    # A package's __init__ importing its own modules is not a cycle of the design.
    for a, b in list(graph.edges):
        if b.startswith(a + ".") or a.startswith(b + "."):
            graph.remove_edge(a, b)
    cycles = list(networkx.simple_cycles(graph))
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles[:10])
