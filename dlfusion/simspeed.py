"""Simulator speed (``dlfusion bench simspeed``): the accelerator's Verilator model against its bare MAC array.

The *reference* is the bare MAC array of the configuration
(:func:`~dlfusion.hw.mac_reference.mac_array_verilog`: ``cores x pe_rows x
pe_cols`` int8 MACs into int32 accumulators, LFSR-fed, nothing else), built with
the same Verilator and the same options as the accelerator's model
(:data:`~dlfusion.sim.rtl.VERILATOR_ARGS`, the packaged Verilator with the
makefile fixes of :mod:`~dlfusion.sim.verilator_tool`) into a standalone
``--binary`` executable: an SystemVerilog testbench generates the clock (as
``tb_top.sv`` does), runs ``+CYCLES=<n>`` cycles and prints a checksum of every
accumulator, read once at the end so that Verilator cannot drop the MACs.

The *programs* (:data:`PROGRAMS`) are compiled with ``dlfusion compile`` and run
with ``dlfusion run --backend rtl`` as separate processes, timed from outside:
simulated cycles per wall-clock second of the whole process, start-up (Python,
imports, image, simulator process, dumps) included. The accelerator's model is
built first, in this process, so that its build time is reported apart
(``build_seconds``, None when the model was cached) and not counted in a run.

Each speed is also given as a ratio to the reference's cycles per second.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .hw.binary import Binary, atomic_write
from .hw.config import HwConfig
from .hw.errors import AcceleratorFault
from .hw.mac_reference import MODULE, mac_array_verilog
from .sim import verilator_tool
from .sim.rtl import VERILATOR_ARGS, default_build_root

__all__ = ["PROGRAMS", "ReferenceModel", "SimspeedError", "build_reference", "run_reference", "reference_speed",
           "program_speed", "simspeed", "simspeed_table"]

_log = logging.getLogger(__name__)

#: The whole programs measured: (zoo model, input size, ``dlfusion compile`` options, plan label).
#: No options: the compiler's own choice (a tuned plan if a rule exists, else the per-layer default);
#: the report records which (``plan_source``).
PROGRAMS = (
    ("resnet18", 64, ("--cores", "1", "--fusion", "none"), "1 core, no fusion"),
    ("resnet18", 64, (), "compile's plan"),
    ("mobilenet_v2", 224, (), "compile's plan"),
)
#: Wall-clock seconds the timed reference run aims at (after a short calibration run).
REFERENCE_SECONDS = 5.0
CALIBRATION_CYCLES = 20_000
BENCH_TOP = "mac_bench"
_CHECKSUM = re.compile(r"^simspeed cycles (\d+) checksum ([0-9a-f]{8})$", re.MULTILINE)

_BENCH_SV = """\
// Standalone driver of the bare MAC array: the clock from SystemVerilog (--timing), as tb_top.sv.
`timescale 1ns/1ps
module {top};
    logic clk = 1'b0;
    always #5 clk = ~clk;
    {module} dut (.clk(clk));
    longint unsigned cycles;
    int unsigned checksum;
    initial begin
        if (!$value$plusargs("CYCLES=%d", cycles)) cycles = 1000;
        repeat (cycles) @(posedge clk);
        #1;
        checksum = 32'd0;
        for (int i = 0; i < {accumulators}; i++) checksum = (checksum * 32'd31) ^ dut.acc[i];
        $display("simspeed cycles %0d checksum %08x", cycles, checksum);
        $finish;
    end
endmodule
"""


class SimspeedError(AcceleratorFault):
    """Building or running the reference, or a measured program, failed (status 3)."""


@dataclass(frozen=True)
class ReferenceModel:
    """A built bare-MAC-array executable.

    Attributes
    ----------
    executable : Path
    hw : HwConfig
    build_seconds : float or None
        Seconds the build took, None when an identical build was reused.
    """

    executable: Path
    hw: HwConfig
    build_seconds: float | None


def build_reference(hw: HwConfig, build_root: str | Path | None = None, jobs: int = 2) -> ReferenceModel:
    """Build (or reuse) the bare MAC array of ``hw`` with the accelerator's Verilator options.

    The build lives in ``<build root>/mac-reference-<key>/`` (build root as the accelerator's,
    :func:`~dlfusion.sim.rtl.default_build_root`), the key a hash of the Verilog, the testbench,
    the options and the Verilator version.

    Raises
    ------
    SimspeedError
        Verilator or the C++ compiler failed (the message ends with the log tail).
    """
    verilog = mac_array_verilog(hw)
    bench = _BENCH_SV.format(top=BENCH_TOP, module=MODULE, accumulators=hw.cores * hw.pe_rows * hw.pe_cols)
    args = [*VERILATOR_ARGS, "--binary", "--top-module", BENCH_TOP, "-o", BENCH_TOP, "--build-jobs", str(jobs)]
    key = hashlib.sha256("\0".join([verilog, bench, *args, verilator_tool.version(),
                                    *verilator_tool.MAKE_VARIABLES]).encode()).hexdigest()[:16]
    root = Path(build_root) if build_root is not None else default_build_root()
    model_dir = (root / f"mac-reference-{key}").resolve()
    executable = model_dir / BENCH_TOP
    if executable.exists():
        return ReferenceModel(executable, hw, None)
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / f"{MODULE}.v").write_text(verilog)
    (model_dir / f"{BENCH_TOP}.sv").write_text(bench)
    log = model_dir / "build.log"
    command = [str(verilator_tool.verilator_bin()), *args, "-Mdir", str(model_dir),
               str(model_dir / f"{MODULE}.v"), str(model_dir / f"{BENCH_TOP}.sv")]
    _log.info("building the bare MAC array reference (%d x %d x %d) in %s", hw.cores, hw.pe_rows, hw.pe_cols,
              model_dir)
    started = time.perf_counter()
    with open(log, "w") as log_file:
        status = subprocess.run(command, env=verilator_tool.verilator_env(jobs=jobs), stdout=log_file,
                                stderr=subprocess.STDOUT, cwd=model_dir).returncode
    seconds = time.perf_counter() - started
    if status != 0 or not executable.exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise SimspeedError(f"building the MAC array reference in {model_dir} failed (status {status}); "
                            f"log {log}, last lines:\n{tail}")
    return ReferenceModel(executable, hw, seconds)


def run_reference(model: ReferenceModel, cycles: int) -> tuple[int, float]:
    """Clock the reference ``cycles`` cycles; returns ``(checksum of the accumulators, wall seconds)``.

    Raises
    ------
    SimspeedError
        The executable failed or printed no checksum.
    """
    if cycles < 1:
        raise ValueError(f"cycles must be at least 1, not {cycles!r}")
    started = time.perf_counter()
    result = subprocess.run([str(model.executable), f"+CYCLES={cycles}"], capture_output=True, text=True,
                            cwd=model.executable.parent)
    seconds = time.perf_counter() - started
    match = _CHECKSUM.search(result.stdout)
    if result.returncode != 0 or match is None or int(match.group(1)) != cycles:
        raise SimspeedError(f"the MAC array reference {model.executable} +CYCLES={cycles} failed "
                            f"(status {result.returncode}); output:\n{(result.stdout + result.stderr)[-2000:]}")
    return int(match.group(2), 16), seconds


def reference_speed(hw: HwConfig, cycles: int | None = None, *, build_root: str | Path | None = None,
                    seconds: float = REFERENCE_SECONDS, jobs: int = 2) -> dict:
    """Cycles per second of the bare MAC array of ``hw``.

    ``cycles`` fixes the cycle count; by default a calibration run of
    :data:`CALIBRATION_CYCLES` picks the count that takes about ``seconds``.

    Returns
    -------
    dict
        ``cores``, ``pe_rows``, ``pe_cols``, ``macs``, ``cycles``, ``wall_seconds``,
        ``cycles_per_second``, ``checksum`` (hex), ``build_seconds`` (None when reused),
        ``executable``.
    """
    model = build_reference(hw, build_root, jobs)
    if cycles is None:
        _, calibration = run_reference(model, CALIBRATION_CYCLES)
        cycles = max(CALIBRATION_CYCLES, int(CALIBRATION_CYCLES * seconds / max(calibration, 1e-3)))
    checksum, wall = run_reference(model, cycles)
    return {"cores": hw.cores, "pe_rows": hw.pe_rows, "pe_cols": hw.pe_cols,
            "macs": hw.cores * hw.pe_rows * hw.pe_cols, "cycles": cycles, "wall_seconds": round(wall, 3),
            "cycles_per_second": cycles / wall, "checksum": f"{checksum:08x}",
            "build_seconds": None if model.build_seconds is None else round(model.build_seconds, 3),
            "executable": str(model.executable)}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dlfusion.cli", *args]


def _hw_options(hw_path: str | Path | None) -> list[str]:
    return ["--hw", str(hw_path)] if hw_path else []


def program_speed(model: str, size: int, compile_options, out_dir: Path, hw_path: str | Path | None = None,
                  label: str = "") -> dict:
    """Compile a zoo model, then time ``dlfusion run --backend rtl`` on it as a whole process.

    The input is random (seed 0), given as the accelerator's raw tensor (``--raw``).

    Returns
    -------
    dict
        ``model``, ``size``, ``plan`` (``label`` and the compiler's ``plan_source``),
        ``plan_source``, ``cycles``, ``wall_seconds`` (the ``dlfusion run`` process),
        ``cycles_per_second`` (``cycles / wall_seconds``), ``binary``.

    Raises
    ------
    SimspeedError
        ``dlfusion compile`` or ``dlfusion run`` failed, or the accelerator stopped with an error.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{model}_{size}" + ("_" + "_".join(o.lstrip("-") for o in compile_options) if compile_options else "")
    binary_path = out_dir / f"{stem}.dlfb"
    compiled = _run_json(_cli("compile", model, "--input-size", str(size), *_hw_options(hw_path),
                              *compile_options, "-o", str(binary_path), "--json"), f"compiling {stem}")
    binary = Binary.read(binary_path)
    (tensor,) = binary.inputs
    rng = np.random.default_rng(0)
    info = np.iinfo(np.dtype(tensor.dtype))
    x = rng.integers(info.min, info.max, size=tensor.shape, endpoint=True).astype(tensor.dtype)
    input_path = out_dir / f"{stem}.input.npy"
    np.save(input_path, x)
    _log.info("running %s (%s) on the RTL...", stem, compiled["plan_source"])
    started = time.perf_counter()
    ran = _run_json(_cli("run", str(binary_path), "--backend", "rtl", *_hw_options(hw_path), "--raw",
                         "--input", str(input_path), "--json"), f"running {stem} on the RTL")
    wall = time.perf_counter() - started
    cycles = int(ran["cycles"])
    return {"model": model, "size": size, "plan": f"{label} ({compiled['plan_source']})" if label
            else compiled["plan_source"], "plan_source": compiled["plan_source"], "cycles": cycles,
            "wall_seconds": round(wall, 3), "cycles_per_second": cycles / wall, "binary": str(binary_path)}


def _run_json(command: list[str], what: str) -> dict:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SimspeedError(f"{what} failed (status {result.returncode}): {' '.join(command)}\n"
                            f"{result.stderr[-3000:]}")
    try:
        return json.loads(result.stdout)
    except ValueError:
        raise SimspeedError(f"{what}: expected JSON on stdout, got {result.stdout[-500:]!r}") from None


def _accelerator_build_seconds(hw: HwConfig) -> float | None:
    """Build the accelerator's model of ``hw`` unless cached; the build's seconds, or None."""
    from .sim.rtl import RtlSimulator
    simulator = RtlSimulator(hw)
    simulator.build()
    return round(simulator.build_seconds, 3) if simulator.compiled else None


def simspeed(hw: HwConfig, out_dir: Path, hw_path: str | Path | None = None, *, programs=PROGRAMS,
             reference_cycles: int | None = None, program_runner=None) -> dict:
    """The reference's speed and every program's, each as a ratio to the reference.

    Parameters
    ----------
    hw : HwConfig
        The configuration (``hw_path`` its TOML file, passed on to ``dlfusion compile|run``; None: the
        defaults).
    out_dir : Path
        Binaries, inputs and ``simspeed.json`` go here.
    programs : sequence of (model, size, compile options, label)
        Default :data:`PROGRAMS`; empty: the reference only.
    reference_cycles : int, optional
        Cycles of the reference run (default: about :data:`REFERENCE_SECONDS` of simulation).
    program_runner : callable, optional
        A stand-in for :func:`program_speed` (the default), with its signature.

    Returns
    -------
    dict
        ``hw``, ``hw_hash``, ``load_average`` (1, 5, 15 min at the start), ``reference`` (see
        :func:`reference_speed`), ``build_seconds`` (the accelerator's model; None when cached or when
        no program was run) and ``programs``: :func:`program_speed`'s dicts with ``ratio_to_reference``.
    """
    load = [round(v, 2) for v in os.getloadavg()]
    program_runner = program_runner or program_speed
    reference = reference_speed(hw, reference_cycles)
    _log.info("reference %d x %d x %d MACs: %.0f cycles/s", hw.cores, hw.pe_rows, hw.pe_cols,
              reference["cycles_per_second"])
    build_seconds = _accelerator_build_seconds(hw) if programs else None
    rows = []
    for model, size, options, label in programs:
        row = program_runner(model, size, tuple(options), out_dir, hw_path, label)
        row["ratio_to_reference"] = row["cycles_per_second"] / reference["cycles_per_second"]
        _log.info("%s %d px %s: %d cycles in %.1f s, %.0f cycles/s (%.4f of the reference)", model, size,
                  row["plan"], row["cycles"], row["wall_seconds"], row["cycles_per_second"],
                  row["ratio_to_reference"])
        rows.append(row)
    report = {"hw": hw.to_dict(), "hw_hash": hw.hash, "load_average": load, "reference": reference,
              "build_seconds": build_seconds, "programs": rows}
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "simspeed.json", json.dumps(report, indent=2))
    return report


def simspeed_table(report: dict) -> str:
    """The markdown table of :func:`simspeed`'s report, and the accelerator's build time."""
    reference = report["reference"]
    lines = ["| simulation | cycles | wall s | cycles/s | ratio to the bare array |",
             "| --- | --- | --- | --- | --- |",
             f"| bare MAC array ({reference['cores']} x {reference['pe_rows']} x {reference['pe_cols']} int8 MACs) | "
             f"{reference['cycles']:,} | {reference['wall_seconds']:.2f} | {reference['cycles_per_second']:,.0f} | 1 |"]
    for row in report["programs"]:
        lines.append(f"| {row['model']} {row['size']} px, {row['plan']} | {row['cycles']:,} | "
                     f"{row['wall_seconds']:.2f} | {row['cycles_per_second']:,.0f} | {row['ratio_to_reference']:.4f} |")
    build = report["build_seconds"]
    lines.append("")
    if report["programs"]:
        lines.append("accelerator model build: " + (f"{build:.1f} s" if build is not None else "cached"))
    lines.append("load average at start: " + ", ".join(f"{v:.2f}" for v in report["load_average"]))
    return "\n".join(lines)
