"""Fingerprint of the RTL's behaviour: what a refactoring of ``hw/`` must leave cycle for cycle alone.

A fixed set of binaries (random programs, one of every layer kind split over the cores,
barriers, malformed programs) runs on the Verilated accelerator of each configuration;
per binary it records the cycles, the per-core counters, the error, the DRAM lines read
and written, the barrier log and the SHA-256 of every output.

    python tests/hw/rtl_fingerprint.py --write tests/hw/rtl_fingerprint.json   # record
    python tests/hw/rtl_fingerprint.py --check tests/hw/rtl_fingerprint.json   # compare (exit 1 on a change)

The binaries and inputs are saved beside the build (``--cases``, default
``build/hw-fingerprint``) and reused by ``--check``, so that a change of the compiler made
meanwhile does not change what is measured; the SHA-256 of each binary is recorded too.
Not collected by pytest (the name does not start with ``test_``): it builds Verilator models.

The record was made before lookup tables existed: its configurations have ``lut_tables = 0``
(which elaborates the hardware and writes the binaries as then). ``--check --lut-tables N``
measures the same programs (none looks anything up) on the configurations with ``N`` tables,
which must not change them either; only what names the configuration differs by design there
(each binary's header, hence its SHA-256, which is then not compared) and the one case whose
meaning depends on it (``malformed_bad_buffer``: buffer 3 is the table store when there are
tables, so its LOAD is no longer malformed; reported as expected). ``--sparse 2:4,1:4`` does the
same with the sparse PE array (none of the programs is sparse): the dense programs must keep their
cycles, counters and outputs on it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from dlfusion.hw.config import HwConfig

ROOT = Path(__file__).resolve().parents[2]

CONFIGS = {
    "small2": HwConfig(cores=2, pe_rows=4, pe_cols=4, act_lines=2048, weight_blocks=1024, acc_entries=256,
                       param_entries=64, dram_bytes=1 << 20, dram_bytes_per_cycle=4, dram_latency=8,
                       watchdog_cycles=3000).baseline(),
    "default": HwConfig().baseline(),
}
#: The cases whose meaning depends on the lookup tables (see the module docstring).
DEPENDS_ON_TABLES = {"malformed_bad_buffer"}


def _malformed(hw):
    """Single-core programs that stop with an error (as in ``tests/sim/test_rtl.py``)."""
    try:
        from dlfusion.hw.asm import DramAllocator, StreamBuilder, assemble
    except ImportError:     # before the stream builder moved below the compiler
        from dlfusion.compiler.program import DramAllocator, StreamBuilder, assemble
    from dlfusion.hw.isa import _PAYLOAD_FIELDS, Buffer, MatmulMode, Opcode, Unit, encode

    def with_field(word, opcode, field, value):
        offset, width, _ = _PAYLOAD_FIELDS[opcode][field]
        return (word & ~(((1 << width) - 1) << offset)) | (value << offset)

    def bad_opcode(s):
        s.sync(Unit.DMA)
        s.words.append(encode(Opcode.END) & ~0x3F | 0x3F)

    def bad_buffer(s):
        s.sync(Unit.PE)
        s.words.append(with_field(encode(Opcode.LOAD, n0=1, n1=1, n2=1), Opcode.LOAD, "buffer", 3))
        s.end()

    def store_from_weights(s):
        s.words.append(encode(Opcode.STORE, buffer=Buffer.WEIGHT, n0=1, n1=1, n2=1))
        s.end()

    def sram_range(s):
        s.sync(Unit.PPU)
        s.emit(Opcode.MATMUL, mode=MatmulMode.MATMUL, act_addr=hw.act_lines - 2, act_s0=1, n1=1, n0=4)
        s.end()

    def dram_range(s):
        s.emit(Opcode.LOAD, buffer=Buffer.ACT, dram_addr=hw.dram_lines - 3, n0=5, n1=1, n2=1)
        s.end()

    def deadlock(s):
        s.emit(Opcode.LOAD, buffer=Buffer.ACT, n0=4, n1=1, n2=1)
        s.emit(Opcode.MATMUL, wait=1 << 5, n1=1, n0=1)
        s.end()

    def semaphore_overflow(s):
        for _ in range(256):
            s.sync(Unit.PPU, signal=1 << 2)
        s.end()

    def bad_barrier(s):
        s.emit(Opcode.BARRIER, core_mask=1 << 15)
        s.end()

    cases = {}
    for build in (bad_opcode, bad_buffer, store_from_weights, sram_range, dram_range, deadlock,
                  semaphore_overflow, bad_barrier):
        stream = StreamBuilder(0)
        build(stream)
        dram = DramAllocator(hw)
        cases[f"malformed_{build.__name__}"] = (assemble(hw, [stream], [], dram, [], [], {}), {})
    return cases


def make_cases(hw: HwConfig) -> dict:
    """name -> (binary, inputs) for ``hw``."""
    from dlfusion.compiler import layers
    from dlfusion.sim.random_program import random_program

    cases = {}
    for seed in range(6):
        cases[f"random_{seed}"] = random_program(hw, seed, length=30, lookups=False, sparse=False)
    full = hw.cores
    small = hw.lanes <= 4
    size = 7 if small else 9
    layer_specs = {
        "conv3": (layers.build_conv, dict(h=size, w=size + 1, cin=2 * hw.lanes - 1, cout=3 * hw.lanes - 2, k=3,
                                          seed=1)),
        "conv1_stride2": (layers.build_conv, dict(h=size, w=size, cin=hw.lanes + 3, cout=hw.lanes, k=1, stride=2,
                                                  seed=2)),
        "conv5": (layers.build_conv, dict(h=size, w=size, cin=3, cout=hw.lanes + 1, k=5, seed=3)),
        "dwconv": (layers.build_dwconv, dict(h=size, w=size, c=2 * hw.lanes + 1, k=3, seed=4)),
        "fc": (layers.build_fc, dict(cin=5 * hw.lanes + 3, cout=2 * hw.lanes + 5, seed=5)),
        "maxpool": (layers.build_pool, dict(h=size + 1, w=size + 1, c=hw.lanes + 2, k=2, stride=2, mode="max",
                                            seed=6)),
        "avgpool": (layers.build_pool, dict(h=size + 1, w=size + 1, c=hw.lanes + 2, k=2, stride=2, mode="avg",
                                            seed=7)),
        "add": (layers.build_add, dict(h=size, w=size, c=2 * hw.lanes + 3, seed=8)),
    }
    for name, (build, parameters) in layer_specs.items():
        cases[f"{name}_1core"] = _layer(build(hw, **parameters))
        if full > 1:
            for split in ("rows", "channels"):
                cases[f"{name}_{full}cores_{split}"] = _layer(build(hw, cores=full, split=split, **parameters))
    if small:
        # Input-channel chunks (weights beyond half the weight scratchpad), as in test_rtl_multicore.
        cases["conv_chunks"] = _layer(layers.build_conv(hw, h=5, w=3, cin=240, cout=9, k=3, pad=1, cores=full,
                                                        split="channels", seed=11))
    cases.update(_malformed(hw))
    return cases


def _layer(case):
    return case.binary, case.inputs


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _save(cases_dir: Path, name: str, binary, inputs) -> None:
    binary.write(cases_dir / f"{name}.dlfb")
    np.savez(cases_dir / f"{name}.npz", **inputs)


def _load(cases_dir: Path, name: str):
    from dlfusion.hw.binary import Binary
    binary = Binary.read(cases_dir / f"{name}.dlfb")
    with np.load(cases_dir / f"{name}.npz") as archive:
        inputs = {key: archive[key] for key in archive.files}
    return binary, inputs


def config_named(config: str, lut_tables: int, sparse: tuple[str, ...] = ()) -> HwConfig:
    return dataclasses.replace(CONFIGS[config], lut_tables=lut_tables, sparse_patterns=sparse)


def prepare(config: str, cases_dir: Path, *, reuse: bool, lut_tables: int = 0,
            sparse: tuple[str, ...] = ()) -> tuple[dict, str]:
    """The cases of ``config`` (made, or read back with ``reuse``) and the Verilog of the current ``hw/``."""
    from dlfusion.hw.top import generate_verilog

    hw = config_named(config, lut_tables, sparse)
    suffix = (f"-lut{lut_tables}" if lut_tables else "") + "".join(f"-s{p.replace(':', 'of')}" for p in sparse)
    cases_dir = cases_dir / f"{config}{suffix}"
    index_path = cases_dir / "index.json"
    if reuse and index_path.exists():
        names = json.loads(index_path.read_text())
        cases = {name: _load(cases_dir, name) for name in names}
    else:
        cases = make_cases(hw)
        cases_dir.mkdir(parents=True, exist_ok=True)
        for name, (binary, inputs) in cases.items():
            _save(cases_dir, name, binary, inputs)
        index_path.write_text(json.dumps(list(cases)))
    verilog = generate_verilog(hw)
    (cases_dir / f"accel-{'check' if reuse else 'write'}.v").write_text(verilog)
    return cases, verilog


def measure(config: str, cases: dict, verilog: str, build_dir: Path, *, log, lut_tables: int = 0,
            sparse: tuple[str, ...] = ()) -> dict:
    from dlfusion.sim.rtl import RtlSimulator

    hw = config_named(config, lut_tables, sparse)
    # A build root of its own, with the Verilog generated before any simulation: edits of hw/
    # made while the models build cannot leak into the measurement, and the shared
    # build/rtl models of the other users are not replaced.
    simulator = RtlSimulator(hw, build_dir=build_dir, verilog=verilog)
    start = time.perf_counter()
    simulator.build()
    log(f"{config}: model {'built' if simulator.compiled else 'reused'} in {time.perf_counter() - start:.0f} s")
    results = {}
    for name, (binary, inputs) in cases.items():
        result = simulator.run(binary, inputs)
        results[name] = {
            "binary_sha256": _sha(binary.to_bytes()),
            "cycles": result.cycles,
            "counters": result.counters,
            "error": None if result.error is None else
            [result.error.code.name, result.error.core, result.error.pc],
            "dram_read_lines": result.dram_read_lines,
            "dram_write_lines": result.dram_write_lines,
            "barriers": result.barriers,
            "outputs": {key: _sha(np.ascontiguousarray(value).tobytes())
                        for key, value in sorted(result.outputs.items())},
        }
        log(f"{config}/{name}: {result.cycles} cycles, error {results[name]['error']}")
    return {"hw": hw.to_dict(), "verilog_sha256": _sha(verilog.encode()), "cases": results}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", metavar="JSON")
    action.add_argument("--check", metavar="JSON")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated, of: " + ", ".join(CONFIGS))
    parser.add_argument("--cases", default=str(ROOT / "build" / "hw-fingerprint"),
                        help="where the binaries and inputs are kept")
    parser.add_argument("--lut-tables", type=int, default=0,
                        help="with --check: lookup tables of the configurations (the record's: 0)")
    parser.add_argument("--sparse", default="",
                        help="with --check: sparse patterns of the configurations, e.g. 2:4,1:4 (the record's: none)")
    args = parser.parse_args(argv)
    if (args.lut_tables or args.sparse) and args.write:
        parser.error("--lut-tables and --sparse are for --check: the record is of configurations without them")
    sparse = tuple(p for p in args.sparse.split(",") if p)
    configs = args.configs.split(",")
    unknown = sorted(set(configs) - set(CONFIGS))
    if unknown:
        parser.error(f"unknown config(s) {', '.join(unknown)}; accepted: {', '.join(CONFIGS)}")

    def log(message):
        print(message, file=sys.stderr, flush=True)

    cases_dir = Path(args.cases)
    build_dir = cases_dir / ("rtl-write" if args.write else "rtl-check")
    tables = args.lut_tables
    prepared = {config: prepare(config, cases_dir, reuse=bool(args.check), lut_tables=tables, sparse=sparse)
                for config in configs}
    log("cases and Verilog ready: " + ", ".join(f"{config} ({len(cases)} binaries)"
                                                for config, (cases, _) in prepared.items()))
    if args.write:
        path = Path(args.write)
        recorded = json.loads(path.read_text()) if path.exists() else {}
        for config in configs:
            recorded[config] = measure(config, *prepared[config], build_dir, log=log)
            path.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
        return 0
    recorded = json.loads(Path(args.check).read_text())
    changed = 0
    expected = 0
    total = 0

    def compared(case):
        # With tables or sparsity the header of every binary names them: its SHA-256 differs by design.
        return {key: value for key, value in case.items() if not ((tables or sparse) and key == "binary_sha256")} \
            if case is not None else None

    for config in configs:
        now = measure(config, *prepared[config], build_dir, log=log, lut_tables=tables, sparse=sparse)
        before = recorded[config]["cases"]
        for name in sorted(set(before) | set(now["cases"])):
            total += 1
            if compared(before.get(name)) != compared(now["cases"].get(name)):
                if tables and name in DEPENDS_ON_TABLES:
                    expected += 1
                    log(f"EXPECTED {config}/{name} (its meaning depends on the tables): now {now['cases'][name]}")
                    continue
                changed += 1
                log(f"CHANGED {config}/{name}:\n  before {before.get(name)}\n  now    {now['cases'].get(name)}")
        same_verilog = recorded[config].get("verilog_sha256") == now["verilog_sha256"]
        log(f"{config}: Verilog {'identical' if same_verilog else 'changed'}")
    print(f"{total - changed - expected} of {total} binaries identical, {changed} changed"
          + (f", {expected} changed as expected with {tables} lookup tables" if expected else ""))
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
