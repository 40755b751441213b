"""The backend interface (sim/backend.py): backends resolved by name, their options checked,
and the sim modules' imports free of cycles (function-level imports included)."""

import ast
from pathlib import Path

import pytest

from dlfusion.hw.binary import Binary, Segment, Stream
from dlfusion.hw.config import HwConfig
from dlfusion.hw.errors import InputError
from dlfusion.hw.isa import Opcode, encode, encode_program
from dlfusion.sim import backend as backend_module
from dlfusion.sim.backend import BACKENDS, REGISTRY, Backend, backend_class, open_backend
from dlfusion.sim.golden import GoldenSimulator
from dlfusion.sim.rtl import RtlSimulator
from dlfusion.sim.runtime import run

HW = HwConfig(pe_rows=4, pe_cols=4, act_lines=256, weight_blocks=16, acc_entries=64, param_entries=16,
              dram_bytes=65536, dram_bytes_per_cycle=4)
SIM_DIR = Path(backend_module.__file__).resolve().parent


def _end_only() -> Binary:
    return Binary(HW, [Stream(0, 0, 1)], [Segment("program", 0, encode_program([encode(Opcode.END)]))])


def test_backends_are_resolved_by_name():
    assert BACKENDS == ("golden", "rtl")
    assert backend_class("golden") is GoldenSimulator
    assert backend_class("rtl") is RtlSimulator
    golden = open_backend("golden", HW)
    assert isinstance(golden, GoldenSimulator) and isinstance(golden, Backend)
    assert golden.backend == "golden" and golden.hw == HW
    rtl = open_backend("rtl", HW, max_cycles=1000, waves=False)   # built lazily: nothing runs here
    assert isinstance(rtl, Backend) and rtl.backend == "rtl" and rtl.max_cycles == 1000
    assert all(spec.summary for spec in REGISTRY.values())


def test_unknown_backends_and_options_are_input_errors():
    with pytest.raises(InputError, match=r"^unknown backend 'verilog'; accepted: golden, rtl$"):
        open_backend("verilog", HW)
    with pytest.raises(InputError, match=r"^the golden backend does not take the option\(s\) waves; "
                                         r"it takes no options$"):
        open_backend("golden", HW, waves=True)
    with pytest.raises(InputError, match=r"^the rtl backend does not take the option\(s\) wave; "
                                         r"it takes waves, build_dir, verbose, max_cycles, "):
        open_backend("rtl", HW, wave=True)


def test_runtime_runs_through_the_registry():
    binary = _end_only()
    through_runtime = run(binary, backend="golden")
    direct = GoldenSimulator(HW).run(binary, {})
    assert through_runtime.to_json() == direct.to_json()
    assert through_runtime.backend == "golden" and through_runtime.ok


def _imports(path: Path) -> set[str]:
    """The ``dlfusion.sim`` modules ``path`` imports, at any depth of its code (lazy imports too)."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                imported.add(node.module.split(".")[0])
            else:
                imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("dlfusion.sim."):
            imported.add(node.module.split(".")[2])
    return imported


def test_sim_imports_have_no_cycle():
    modules = {path.stem: path for path in SIM_DIR.glob("*.py") if path.stem != "__init__"}
    graph = {name: _imports(path) & set(modules) for name, path in modules.items()}
    graph["backend"] |= {spec.module for spec in REGISTRY.values()}     # imported by name
    # the backends sit below the runtime and the registry, next to nothing above them
    for name in ("golden", "rtl"):
        assert not graph[name] & {"runtime", "backend"}, (name, graph[name])
    assert graph["result"] == set() and graph["image"] == set()

    def visit(name, path):
        if name in path:
            raise AssertionError(f"import cycle: {' -> '.join([*path[path.index(name):], name])}")
        for imported in sorted(graph[name]):
            visit(imported, [*path, name])

    for name in graph:
        visit(name, [])

