"""Where the Verilator model's time goes: one binary on a profiling build of the accelerator, under ``perf``.

Not a test (pytest does not collect it); run by hand::

    .venv/bin/python tests/sim/profile_rtl.py BINARY.dlfb [--hw TOML] [--out DIR]

The model is built in its own build root (default ``build/rtl-profile``, never the
cached model of ``build/rtl``) with the accelerator's Verilator options plus
``--prof-cfuncs`` (every C++ function of the model holds one Verilog statement or
block and is named after its module and line; Verilator's documented profiling
mode, meant for gprof or perf). The binary then runs once on it,
with a random raw input (seed 0), inside ``perf record`` (user-space cycles,
which ``perf_event_paranoid`` 2 allows); the samples of the simulator process
(``tb_top``) are attributed:

* per module: the Verilog line in the function's name, mapped to the module of
  ``dlfusion_accel.v`` that holds it, with the core number folded
  (``core*.pe.multipliers``) and, separately, per core;
* per kind of logic: Verilator's function kinds (``nba_sequent``: clocked
  blocks; ``nba_comb``/``ico``/``act``: combinational settling after a clock
  edge or an input change; ``eval``/``triggers``: the scheduler) and the Verilog
  statement at that line (``assign``, ``always @(posedge``, ``always @*`` /
  ``case``, memory arrays);
* the rest: Verilator's runtime (timing/coroutines), cocotb and Python (the
  cocotb test and its start-up run in the simulator process), libc.

Prints the tables and writes ``profile.json`` in ``--out``.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from dlfusion.hw.binary import Binary
from dlfusion.hw.config import HwConfig
from dlfusion.sim.rtl import ACCEL_TOP, TOPLEVEL, RtlSimulator

#: ``-fno-inline`` would keep every statement's function apart but makes the model about 12 times slower
#: (measured: 2,400 instead of ~30,000 cycles/s), which distorts the shares; what gcc inlines anyway is
#: reported under its caller (``(no --prof-cfuncs)`` in the per-module table).
PROFILE_ARGS = ("--prof-cfuncs",)
_SAMPLE = re.compile(r"^\s*[0-9a-f]+\s+(.*?)\s+\((.*)\)\s*$")
_PROF = re.compile(r"__PROF__(\w+?)__l(\d+)")
_KIND = re.compile(r"___024root___(\w+?)(?:__TOP|__PROF|__\d|\(|$)")


class ProfiledRtlSimulator(RtlSimulator):
    """The accelerator's model with :data:`PROFILE_ARGS` added (a separate build root: another model)."""

    def _verilator_args(self) -> list[str]:
        return super()._verilator_args() + list(PROFILE_ARGS)


def _modules_by_line(verilog: Path) -> list[tuple[int, str]]:
    starts = []
    for number, line in enumerate(verilog.read_text().splitlines(), 1):
        if line.startswith("module "):
            name = line.split()[1].split("(")[0].lstrip("\\")
            starts.append((number, name))
    return starts


def _module_at(starts, line: int) -> str:
    name = "?"
    for start, module in starts:
        if start > line:
            break
        name = module
    return name


def _block_kinds(lines: list[str]) -> list[str]:
    """Per Verilog line, the kind of logic it belongs to: a continuous ``assign``, or the body of the
    last ``always``/``initial`` block opened above it (Yosys writes one statement per line)."""
    kinds, block = [], "module header"
    for line in lines:
        text = line.strip()
        if text.startswith("module "):
            block = "module header"
        elif text.startswith(("always @(posedge", "always_ff")):
            block = "always @(posedge) (registers)"
        elif text.startswith(("always @*", "always_comb", "always @(")):
            block = "always @* (combinational process)"
        elif text.startswith("initial"):
            block = "initial"
        elif text.startswith("reg ") and text.rstrip(";").endswith("]") and "] " in text:
            kinds.append("memory array")
            continue
        kinds.append("assign (combinational wire)" if text.startswith("assign") else block)
    return kinds


def _statement_kind(text: str) -> str:
    text = text.strip()
    if text.startswith("assign"):
        return "assign (combinational wire)"
    if text.startswith("always @(posedge") or text.startswith("always_ff"):
        return "always @(posedge) (register)"
    if text.startswith("always @*") or text.startswith("always_comb") or text.startswith("always @("):
        return "always @* (combinational process)"
    if text.startswith("reg") and "[" in text.split("=")[0] and text.rstrip(";").endswith("]"):
        return "memory array"
    if text.startswith(("case", "casez", "if", "begin", "end")):
        return "process body (case/if)"
    return text.split(" ")[0][:30] or "?"


def _run_child(args) -> int:
    """The profiled run itself (in the ``perf record`` child)."""
    hw = HwConfig.load(args.hw)
    binary = Binary.read(args.binary)
    (tensor,) = binary.inputs
    info = np.iinfo(np.dtype(tensor.dtype))
    x = np.random.default_rng(0).integers(info.min, info.max, size=tensor.shape, endpoint=True).astype(tensor.dtype)
    simulator = (RtlSimulator if args.as_built else ProfiledRtlSimulator)(hw, build_dir=args.build_dir)
    started = time.perf_counter()
    result = simulator.run(binary, {tensor.name: x})
    print(json.dumps({"cycles": result.cycles, "wall_seconds": time.perf_counter() - started,
                      "sim_seconds": result.sim_seconds, "error": str(result.error)}))
    return 0


def _attribute(perf_data: Path, model_dir: Path) -> dict:
    script = subprocess.run(["perf", "script", "-i", str(perf_data), "--comms", TOPLEVEL, "-F", "ip,sym,dso"],
                            capture_output=True, text=True, check=True).stdout
    verilog = model_dir / f"{ACCEL_TOP}.v"
    starts = _modules_by_line(verilog)
    lines = verilog.read_text().splitlines()
    kinds = _block_kinds(lines)
    tb_lines = (Path(__file__).resolve().parents[2] / "sim" / "tb_top.sv").read_text().splitlines()
    by_module, by_unit, by_core, by_kind, by_statement, by_dso, outside = (collections.Counter() for _ in range(7))
    total = 0
    for sample in script.splitlines():
        parsed = _SAMPLE.match(sample)
        if parsed is None:
            continue
        total += 1
        symbol, dso = parsed.group(1), Path(parsed.group(2)).name
        by_dso[dso] += 1
        if dso != TOPLEVEL:
            outside[f"{dso}: {symbol[:80]}"] += 1
            continue
        kind = _KIND.search(symbol) if symbol.startswith("Vtop_") else None
        if kind is None:
            by_kind[f"{'model' if symbol.startswith('Vtop_') else 'runtime'}: {symbol.split('(')[0][:60]}"] += 1
        else:
            by_kind[kind.group(1)] += 1
        match = _PROF.search(symbol)
        if match is None:          # Verilator's runtime, or a model built without --prof-cfuncs
            by_module["(not a Verilog statement)" if kind is None else "(no --prof-cfuncs)"] += 1
            continue
        module_token, line = match.group(1), int(match.group(2))
        if module_token == TOPLEVEL:
            module = "tb_top (testbench)"
            statement = _statement_kind(tb_lines[line - 1] if line <= len(tb_lines) else "")
        else:
            module = _module_at(starts, line)
            statement = kinds[line - 1] if line <= len(kinds) else "?"
        core = re.search(r"\.core(\d+)", module)
        by_core[f"core{core.group(1)}" if core else module.split(".")[0]] += 1
        folded = re.sub(r"\.lane\d+", ".lane*", re.sub(r"\.core\d+", ".core*", module))
        by_module[folded] += 1
        unit = re.match(r"dlfusion_accel\.core\*\.([a-z_]+)", folded)
        by_unit[unit.group(1) if unit else folded] += 1
        by_statement[statement] += 1

    def shares(counter, limit=None):
        return [{"name": name, "share": count / total} for name, count in counter.most_common(limit)]
    return {"samples": total, "by_dso": shares(by_dso), "by_core": shares(by_core), "by_unit": shares(by_unit),
            "by_module": shares(by_module, 40), "by_kind": shares(by_kind), "by_statement": shares(by_statement),
            "outside_model": shares(outside, 25)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("binary")
    parser.add_argument("--hw", help="HwConfig TOML (default: the built-in defaults)")
    parser.add_argument("--build-dir", default=None,
                        help="build root of the model (default build/rtl-profile; --as-built: dlfusion's own)")
    parser.add_argument("--out", default="build/profile", help="where perf.data and profile.json go")
    parser.add_argument("--frequency", type=int, default=1000, help="perf sampling frequency (Hz)")
    parser.add_argument("--as-built", action="store_true",
                        help="profile the model as dlfusion builds it (no --prof-cfuncs: per function kind only)")
    parser.add_argument("--report-only", action="store_true",
                        help="attribute the perf.data and profile.json already in --out again (no build, no run)")
    parser.add_argument("--run-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.build_dir is None and not args.as_built:
        args.build_dir = "build/rtl-profile"
    if args.run_child:
        return _run_child(args)
    hw = HwConfig.load(args.hw)
    simulator = (RtlSimulator if args.as_built else ProfiledRtlSimulator)(hw, build_dir=args.build_dir)
    out = Path(args.out)
    perf_data = out / "perf.data"
    if args.report_only:
        previous = json.loads((out / "profile.json").read_text())
        measured = {key: previous[key] for key in ("cycles", "wall_seconds", "sim_seconds", "error")}
        return _print(out, {**{key: previous[key] for key in ("binary", "hw_hash", "build_seconds", "model_dir")},
                            **measured, **_attribute(perf_data, Path(previous["model_dir"]))})
    simulator.build()
    out.mkdir(parents=True, exist_ok=True)
    child = [sys.executable, __file__, args.binary, *(["--build-dir", args.build_dir] if args.build_dir else []),
             "--run-child",
             *(["--hw", args.hw] if args.hw else []), *(["--as-built"] if args.as_built else [])]
    run = subprocess.run(["perf", "record", "-e", "cycles:u", "-F", str(args.frequency), "-o", str(perf_data),
                          "--", *child], capture_output=True, text=True, check=True)
    measured = json.loads(run.stdout.strip().splitlines()[-1])
    return _print(out, {"binary": args.binary, "hw_hash": hw.hash, "build_seconds": simulator.build_seconds,
                        "model_dir": str(simulator.model_dir), **measured,
                        **_attribute(perf_data, simulator.model_dir)})


def _print(out: Path, report: dict) -> int:
    (out / "profile.json").write_text(json.dumps(report, indent=2))
    print(f"{report['binary']}: {report['cycles']:,} cycles, {report['sim_seconds']:.1f} s simulated "
          f"(profiling model), {report['samples']:,} samples")
    for key in ("by_dso", "by_core", "by_unit", "by_module", "by_kind", "by_statement", "outside_model"):
        print(f"\n{key}:")
        for entry in report[key][:25]:
            print(f"  {100 * entry['share']:6.2f} %  {entry['name']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
