"""Benchmarks measured on the RTL (``make bench``).

Foundation benchmark: a compute-bound 3x3 convolution (56x56, 64 -> 64
channels) on the default single-core HwConfig: RTL cycles, PE utilization
(MACs / (PEs x cycles)), agreement with the golden simulator and the numpy
reference, and the RTL simulation speed in simulated cycles per wall-clock
second. Results go to ``build/bench/foundation.json`` and stdout.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from .compiler import layers
from .hw.config import HwConfig
from .sim.binary import atomic_write
from .sim.runtime import run


def foundation(hw: HwConfig, out_dir: Path) -> dict:
    started = time.perf_counter()
    case = layers.build_conv(hw, h=56, w=56, cin=64, cout=64, k=3, seed=1)
    compile_seconds = time.perf_counter() - started
    print(f"[bench] conv 3x3 56x56 64->64: {case.macs:,} MACs, tiles {case.description['tiles']} "
          f"of {case.description['tile_rows']} rows; compiled in {compile_seconds:.2f}s", flush=True)
    golden = run(case.binary, case.inputs, backend="golden")
    print("[bench] golden done; building/running the RTL (first build takes minutes)...", flush=True)
    rtl = run(case.binary, case.inputs, backend="rtl")
    if rtl.error is not None:
        raise SystemExit(f"RTL run failed: {rtl.error}")
    matches_reference = bool(np.array_equal(rtl.outputs["y"], case.expected["y"]))
    matches_golden = bool(np.array_equal(rtl.outputs["y"], golden.outputs["y"]))
    utilization = case.macs / (hw.peak_macs_per_cycle * rtl.cycles)
    result = {
        "benchmark": "conv3x3_56x56_64to64",
        "hw": hw.to_dict(), "hw_hash": hw.hash,
        "macs": case.macs,
        "rtl_cycles": rtl.cycles,
        "ideal_cycles": -(-case.macs // hw.peak_macs_per_cycle),
        "utilization": utilization,
        "golden_estimate_cycles": golden.cycles,
        "golden_estimate_error": (golden.cycles - rtl.cycles) / rtl.cycles,
        "matches_reference": matches_reference,
        "rtl_equals_golden": matches_golden,
        "counters": rtl.counters[0],
        "sim_seconds": getattr(rtl, "sim_seconds", None),
        "cycles_per_second": getattr(rtl, "cycles_per_second", None),
        "machine": platform.processor() or platform.machine(),
    }
    atomic_write(out_dir / "foundation.json", json.dumps(result, indent=2))
    print(f"[bench] RTL cycles {rtl.cycles:,} (ideal {result['ideal_cycles']:,}), utilization {utilization:.3f}, "
          f"RTL == golden: {matches_golden}, == numpy: {matches_reference}")
    if result["cycles_per_second"]:
        print(f"[bench] RTL simulation speed: {result['cycles_per_second']:,.0f} simulated cycles/s "
              f"({result['sim_seconds']:.1f}s for the run)")
    print(f"[bench] golden cycle estimate {golden.cycles:,} ({100 * result['golden_estimate_error']:+.1f}% vs RTL)")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dlfusion.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hw", help="HwConfig TOML (default: built-in defaults)")
    parser.add_argument("--out", default="build/bench", help="directory for the JSON results")
    args = parser.parse_args(argv)
    hw = HwConfig.load(args.hw)
    out_dir = Path(args.out)
    result = foundation(hw, out_dir)
    return 0 if result["matches_reference"] and result["rtl_equals_golden"] else 1


if __name__ == "__main__":
    sys.exit(main())
