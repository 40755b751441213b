"""Benchmarks measured on the RTL (``make bench``).

``foundation``: a compute-bound 3x3 convolution (56x56, 64 -> 64 channels) on
one core of the default HwConfig: RTL cycles, PE utilization (MACs / (PEs x
cycles)), agreement with the golden simulator and the numpy reference, and the
RTL simulation speed in simulated cycles per wall-clock second.

``scaling``: four layers (a large compute-bound 3x3 convolution, a small late
3x3 layer at 7x7x512, a fully connected layer, a memory-bound depthwise
convolution), each split over 1, 2, 4, 8 (optionally 16) cores by output rows
and by output channels, on the default per-core configuration with enough
cores: cycles from the RTL, speedup over one core, utilization, DRAM bytes
moved; a table, a JSON file and a PNG plot. Also the whole-program simulation
speed of the default 4-core model.

``zoo``: every zoo model on the default HwConfig at 224x224 (or at the
resolution in :data:`ZOO_SIZES` where an RTL run would take over ten
minutes): compile time and RTL cycles for the plans {no fusion, 1 core}, {no
fusion, all cores} and {maximum fusion, all cores}, each with its utilization
(MACs / (PEs x cycles)) and the roofline lower bound (the larger of the compute
time and the time to move the minimum DRAM traffic: weights, parameters, the
network's input and output, once). RTL runs go through the tuner's executor
(``--workers``) and measurement cache, so an interrupted run resumes.

Results go to ``build/bench/`` (``--out``) and stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from .compiler import layers
from .hw.binary import atomic_write
from .hw.config import HwConfig
from .sim.runtime import run


def foundation(hw: HwConfig, out_dir: Path) -> dict:
    hw = dataclasses.replace(hw, cores=1)
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


SCALING_LAYERS = {
    "conv3x3_56x56_64": lambda hw, cores, split: layers.build_conv(
        hw, h=56, w=56, cin=64, cout=64, k=3, cores=cores, split=split, seed=11),
    "conv3x3_7x7_512": lambda hw, cores, split: layers.build_conv(
        hw, h=7, w=7, cin=512, cout=512, k=3, cores=cores, split=split, seed=12),
    "fc_1024_1000": lambda hw, cores, split: layers.build_fc(
        hw, cin=1024, cout=1000, cores=cores, split=split, seed=13),
    "dwconv3x3_56x56_128": lambda hw, cores, split: layers.build_dwconv(
        hw, h=56, w=56, c=128, k=3, cores=cores, split=split, seed=14),
}


def scaling(hw: HwConfig, out_dir: Path, core_counts=(1, 2, 4, 8)) -> dict:
    from .sim.rtl import RtlSimulator
    from .sim.traffic import dram_traffic
    model = dataclasses.replace(hw, cores=max(core_counts))
    print(f"[bench] scaling on {model.describe()} (HwConfig {model.hash}); a program on k cores "
          "leaves the others idle, which do not touch the port", flush=True)
    simulator = RtlSimulator(model)
    simulator.build()
    rows = []
    for name, build in SCALING_LAYERS.items():
        for split in ("rows", "channels"):
            base = None
            for cores in core_counts:
                case = build(model, cores, split)
                result = simulator.run(case.binary, case.inputs)
                if result.error is not None or not np.array_equal(result.outputs["y"], case.expected["y"]):
                    raise SystemExit(f"{name} {split} {cores} cores: wrong result ({result.error})")
                base = base or result.cycles
                traffic = dram_traffic(case.binary)
                row = {"layer": name, "split": split, "cores": cores, "cores_used": case.description["cores"],
                       "cycles": result.cycles, "speedup": base / result.cycles,
                       "utilization": case.macs / (model.macs_per_cycle * cores * result.cycles),
                       "macs": case.macs, "dram_bytes": traffic["total_bytes"],
                       "dma_stall": sum(c["dma_stall"] for c in result.counters),
                       "sim_cycles_per_second": getattr(result, "cycles_per_second", None)}
                rows.append(row)
                print(f"[bench] {name:22} {split:8} {cores:2} cores: {result.cycles:>9,} cycles  "
                      f"x{row['speedup']:.2f}  util {row['utilization']:.3f}  "
                      f"DRAM {row['dram_bytes'] / 1e6:.2f} MB", flush=True)
    speed = []
    if hw.cores >= 4:
        case = SCALING_LAYERS["conv3x3_56x56_64"](hw, 4, "rows")
        for threads in (1, 2):
            sim4 = RtlSimulator(hw, threads=threads)
            sim4.build()
            result = sim4.run(case.binary, case.inputs)
            speed.append({"hw": hw.hash, "cores": hw.cores, "threads": threads, "cycles": result.cycles,
                          "sim_seconds": getattr(result, "sim_seconds", None),
                          "cycles_per_second": getattr(result, "cycles_per_second", None)})
            print(f"[bench] whole-program RTL speed, default {hw.cores}-core model, Verilator threads "
                  f"{threads}: {speed[-1]['cycles_per_second']:,.0f} cycles/s ({result.cycles:,} cycles)", flush=True)
    report = {"hw": model.to_dict(), "hw_hash": model.hash, "rows": rows, "default_model_speed": speed}
    atomic_write(out_dir / "scaling.json", json.dumps(report, indent=2))
    _scaling_table(rows, out_dir / "scaling.md")
    _scaling_plot(rows, out_dir / "scaling.png")
    return report


def _scaling_table(rows, path: Path) -> None:
    lines = ["| layer | split | cores | RTL cycles | speedup | utilization | DRAM MB | DMA stall cycles |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['layer']} | {r['split']} | {r['cores']} | {r['cycles']:,} | {r['speedup']:.2f} | "
                     f"{r['utilization']:.3f} | {r['dram_bytes'] / 1e6:.2f} | {r['dma_stall']:,} |")
    atomic_write(path, "\n".join(lines) + "\n")
    print("\n".join(lines))


def _scaling_plot(rows, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for axis, split in zip(axes, ("rows", "channels"), strict=True):
        for name in SCALING_LAYERS:
            points = [(r["cores"], r["speedup"]) for r in rows if r["layer"] == name and r["split"] == split]
            if points:
                xs, ys = zip(*points, strict=True)
                axis.plot(xs, ys, marker="o", label=name)
        cores = sorted({r["cores"] for r in rows})
        axis.plot(cores, cores, linestyle=":", color="grey", label="linear")
        axis.set_xscale("log", base=2)
        axis.set_xticks(cores, [str(c) for c in cores])
        axis.set_xlabel("cores")
        axis.set_title(f"split by output {split}")
        axis.grid(True, alpha=0.3)
    axes[0].set_ylabel("speedup over 1 core (RTL cycles)")
    axes[1].legend(fontsize=8, loc="upper left")
    figure.suptitle("dlfusion: layer scaling on the shared DRAM port")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


#: Input resolution per zoo model in the ``zoo`` benchmark: 224 where the slowest plan's RTL run
#: takes under ten minutes here, a smaller one where it would not (VGG-16: ~60 M cycles at 224).
ZOO_SIZES = {"tiny_cnn": 32, "resnet18": 224, "resnet50": 112, "mobilenet_v2": 224, "vgg16": 112,
             "squeezenet1_1": 224}
ZOO_PLANS = (("none", "1"), ("none", "all"), ("max", "all"))


def _zoo_job(job: dict) -> dict:
    """Run one compiled plan of a model on the golden simulator and the RTL (executor worker)."""
    from .hw.binary import Binary
    from .sim.golden import GoldenSimulator
    from .sim.rtl import RtlSimulator
    from .sim.runtime import group_report
    hw = HwConfig.from_dict(job["hw"])
    binary = Binary.from_bytes(job["binary"])
    x = np.random.default_rng(0).integers(0, 256, size=job["input_shape"]).astype(np.uint8)
    golden = GoldenSimulator(hw).run(binary, {"input": x})
    rtl = RtlSimulator(hw).run(binary, {"input": x})
    if rtl.error is not None:
        raise RuntimeError(f"the RTL stopped: {rtl.error}")
    if not np.array_equal(rtl.outputs["output"], golden.outputs["output"]):
        raise RuntimeError("RTL output differs from the golden simulator")
    result = {"cycles": int(rtl.cycles), "golden_cycles": int(golden.cycles),
              "compile_seconds": job["compile_seconds"], "groups": job["groups"], "fused_groups": job["fused_groups"],
              "instructions": sum(s.instructions for s in binary.streams),
              "sim_seconds": getattr(rtl, "sim_seconds", None)}
    result["group_cycles"] = [g["cycles"] for g in group_report(binary, rtl)]
    return result


def zoo_bench(hw: HwConfig, out_dir: Path, models=None, workers: int | None = None) -> dict:
    from .compiler.compile import compile_graph
    from .compiler.frontend import load_onnx, zoo
    from .compiler.plan import make_plan
    from .compiler.tune.cache import MeasurementCache, measure, measurement_key
    from .compiler.tune.executor import LocalExecutor
    from .compiler.tune.roofline import roofline
    models = models or list(ZOO_SIZES)
    onnx_dir = out_dir / "zoo-onnx"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    specs, info, graphs = [], {}, {}
    for name in models:
        size = ZOO_SIZES[name]
        path = onnx_dir / f"{name}_{size}.onnx"
        if not path.exists():
            print(f"[bench] exporting {name} at {size}x{size}...", flush=True)
            zoo.export_quantized(name, size, path)
        graph = graphs[name] = load_onnx(path, name=name)
        info[name] = {"size": size, "macs": graph.macs, "layers": len(graph.nodes),
                      "bounds": {c: roofline(graph, hw, c) for c in (1, hw.cores)}}
        for fusion, cores in ZOO_PLANS:
            specs.append({"model": name, "size": size, "onnx": str(path), "fusion": fusion,
                          "cores": 1 if cores == "1" else hw.cores, "hw": hw.to_dict()})
    cache = MeasurementCache(out_dir / "zoo-cache")

    def prepare(spec):
        # Compiled here, once: the measurement is keyed by the binary (and the RTL's sources, in
        # every key), so a compiler change that leaves a model's program alone is not measured again.
        graph = graphs[spec["model"]]
        started = time.perf_counter()
        plan = make_plan(graph, hw, fusion=spec["fusion"], cores=spec["cores"])
        binary = compile_graph(graph, hw, plan).to_bytes()
        job = {"hw": spec["hw"], "binary": binary, "input_shape": graph.tensors[graph.input].shape,
               "compile_seconds": time.perf_counter() - started, "groups": len(plan.groups),
               "fused_groups": sum(len(g.nodes) > 1 for g in plan.groups)}
        return measurement_key(hw, "zoo-bench/2", binary, "input seed 0"), job

    rows = []
    with LocalExecutor(workers) as executor:
        for m in measure(specs, prepare, _zoo_job, executor=executor, cache=cache, hw_hash=hw.hash,
                         describe=lambda s: {k: s[k] for k in ("model", "size", "fusion", "cores")},
                         progress=True, label="zoo RTL runs"):
            spec = m.spec
            if not m.ok:
                raise SystemExit(f"{spec['model']} {spec['fusion']} {spec['cores']} cores: {m.error}")
            meta = info[spec["model"]]
            bound = meta["bounds"][spec["cores"]]
            row = {"model": spec["model"], "size": spec["size"], "fusion": spec["fusion"], "cores": spec["cores"],
                   **m.result, "macs": meta["macs"],
                   "utilization": meta["macs"] / (hw.macs_per_cycle * spec["cores"] * m.result["cycles"]),
                   "roofline_cycles": bound["cycles"], "roofline_bound": bound["bound"],
                   "min_dram_bytes": bound["min_dram_bytes"], "measure_seconds": m.seconds}
            rows.append(row)
            print(f"[bench] {row['model']:14} {row['size']:3}px fusion {row['fusion']:4} {row['cores']} cores: "
                  f"{row['cycles']:>11,} cycles, util {row['utilization']:.3f}, roofline {row['roofline_cycles']:,} "
                  f"({row['roofline_bound']}), compile {row['compile_seconds']:.1f}s", flush=True)
    order = {(f, c): i for i, (f, c) in enumerate(ZOO_PLANS)}
    rows.sort(key=lambda r: (models.index(r["model"]), order[(r["fusion"], "1" if r["cores"] == 1 else "all")]))
    report = {"hw": hw.to_dict(), "hw_hash": hw.hash, "rows": rows}
    atomic_write(out_dir / "zoo.json", json.dumps(report, indent=2))
    _zoo_table(rows, out_dir / "zoo.md")
    return report


def _zoo_table(rows, path: Path) -> None:
    lines = ["| model | input | plan | compile s | RTL cycles | utilization | roofline cycles | RTL / roofline |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        fusion = "no" if r["fusion"] == "none" else r["fusion"]
        plan = f"{fusion} fusion, {r['cores']} core{'s' if r['cores'] > 1 else ''}"
        lines.append(f"| {r['model']} | {r['size']}x{r['size']} | {plan} | {r['compile_seconds']:.1f} | "
                     f"{r['cycles']:,} | {r['utilization']:.3f} | {r['roofline_cycles']:,} ({r['roofline_bound']}) | "
                     f"{r['cycles'] / max(1, r['roofline_cycles']):.2f} |")
    atomic_write(path, "\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dlfusion.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", nargs="*", choices=("foundation", "scaling", "zoo"), default=[],
                        help="benchmarks to run (default: all)")
    parser.add_argument("--hw", help="HwConfig TOML (default: built-in defaults)")
    parser.add_argument("--out", default="build/bench", help="directory for the results")
    parser.add_argument("--max-cores", type=int, default=8, choices=(4, 8, 16),
                        help="largest core count of the scaling study")
    parser.add_argument("--models", nargs="*", default=None, help="zoo benchmark: these models only")
    parser.add_argument("--workers", type=int, default=None, help="parallel RTL runs (default: CPU count)")
    args = parser.parse_args(argv)
    hw = HwConfig.load(args.hw)
    out_dir = Path(args.out)
    which = args.which or ["foundation", "scaling", "zoo"]
    ok = True
    if "foundation" in which:
        result = foundation(hw, out_dir)
        ok &= result["matches_reference"] and result["rtl_equals_golden"]
    if "scaling" in which:
        counts = tuple(c for c in (1, 2, 4, 8, 16) if c <= args.max_cores)
        scaling(hw, out_dir, counts)
    if "zoo" in which:
        zoo_bench(hw, out_dir, args.models, args.workers)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
