"""The source files the accelerator's Verilog is generated from: what names RTL builds and measurements.

A Verilator model (``sim/rtl.py``) and a cached RTL measurement
(``compiler/tune/cache.py``) are valid as long as these files are unchanged:
``top.py`` and every module of this package it imports, directly or through
another (found from the import statements). The package's other modules (the
assembler, the container, the numerics) do not change the hardware, so editing
them rebuilds nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

__all__ = ["gateware_sources"]

_PACKAGE = Path(__file__).resolve().parent


def _local_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                names.add(node.module.split(".")[0])
            else:
                names.update(alias.name for alias in node.names)
    return {name for name in names if (_PACKAGE / f"{name}.py").exists()}


def gateware_sources() -> list[Path]:
    """``hw/top.py`` and the modules of ``hw`` it imports, transitively, sorted by name."""
    seen, todo = set(), ["top"]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(_local_imports(_PACKAGE / f"{name}.py"))
    return sorted(_PACKAGE / f"{name}.py" for name in seen)
