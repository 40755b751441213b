"""Benchmarks measured on the RTL (``dlfusion bench foundation|scaling|zoo``, part of ``make bench``).

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
(``--executor``, ``--workers``) and measurement cache, so an interrupted run resumes.

Each function writes its results to a directory (``build/bench/`` on the command
line) and returns them; progress goes to the module's logger, the text tables
(:func:`foundation_summary`, :func:`scaling_table`, :func:`zoo_table`) are the
command line's to print.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import platform
import time
from pathlib import Path

import numpy as np

from .compiler import layers
from .hw.binary import atomic_write
from .hw.config import HwConfig
from .hw.errors import AcceleratorFault, InputError, MismatchError
from .sim.runtime import run

__all__ = ["SCALING_LAYERS", "ZOO_PLANS", "ZOO_SIZES", "foundation", "foundation_summary", "scaling",
           "scaling_table", "zoo_bench", "zoo_table"]

_log = logging.getLogger(__name__)


def foundation(hw: HwConfig, out_dir: Path) -> dict:
    """The compute-bound convolution on one core of ``hw``: RTL cycles, utilization, agreement, speed.

    Writes ``foundation.json`` to ``out_dir`` and returns its contents.

    Raises
    ------
    AcceleratorFault
        The RTL stopped with an error.
    """
    hw = dataclasses.replace(hw, cores=1)
    started = time.perf_counter()
    case = layers.build_conv(hw, h=56, w=56, cin=64, cout=64, k=3, seed=1)
    compile_seconds = time.perf_counter() - started
    _log.info("conv 3x3 56x56 64->64: %s MACs, tiles %s of %s rows; compiled in %.2fs", f"{case.macs:,}",
              case.description["tiles"], case.description["tile_rows"], compile_seconds)
    golden = run(case.binary, case.inputs, backend="golden")
    _log.info("golden done; building/running the RTL (first build takes minutes)...")
    rtl = run(case.binary, case.inputs, backend="rtl")
    if rtl.error is not None:
        raise AcceleratorFault(f"RTL run failed: {rtl.error}")
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
    return result


def foundation_summary(result: dict) -> str:
    """The text lines of a :func:`foundation` result."""
    lines = [f"RTL cycles {result['rtl_cycles']:,} (ideal {result['ideal_cycles']:,}), utilization "
             f"{result['utilization']:.3f}, RTL == golden: {result['rtl_equals_golden']}, == numpy: "
             f"{result['matches_reference']}"]
    if result["cycles_per_second"]:
        lines.append(f"RTL simulation speed: {result['cycles_per_second']:,.0f} simulated cycles/s "
                     f"({result['sim_seconds']:.1f}s for the run)")
    lines.append(f"golden cycle estimate {result['golden_estimate_cycles']:,} "
                 f"({100 * result['golden_estimate_error']:+.1f}% vs RTL)")
    return "\n".join(lines)


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
    """Each of :data:`SCALING_LAYERS` split over ``core_counts`` cores by rows and by channels, on the RTL.

    Writes ``scaling.json``, ``scaling.md`` and ``scaling.png`` to ``out_dir``; returns the report.

    Raises
    ------
    MismatchError
        A run stopped with an error or its output differs from the numpy reference.
    """
    from .sim.rtl import RtlSimulator
    from .sim.traffic import dram_traffic
    model = dataclasses.replace(hw, cores=max(core_counts))
    _log.info("scaling on %s (HwConfig %s); a program on k cores leaves the others idle, which do not touch "
              "the port", model.describe(), model.hash)
    simulator = RtlSimulator(model)
    simulator.build()
    rows = []
    for name, build in SCALING_LAYERS.items():
        for split in ("rows", "channels"):
            base = None
            for cores in core_counts:
                case = build(model, cores, split)
                result = simulator.run(case.binary, case.inputs)
                if result.error is not None:
                    raise AcceleratorFault(f"{name} {split} {cores} cores: the RTL stopped: {result.error}")
                if not np.array_equal(result.outputs["y"], case.expected["y"]):
                    raise MismatchError(f"{name} {split} {cores} cores: the RTL output differs from the numpy "
                                        "reference")
                base = base or result.cycles
                traffic = dram_traffic(case.binary)
                row = {"layer": name, "split": split, "cores": cores, "cores_used": case.description["cores"],
                       "cycles": result.cycles, "speedup": base / result.cycles,
                       "utilization": case.macs / (model.macs_per_cycle * cores * result.cycles),
                       "macs": case.macs, "dram_bytes": traffic["total_bytes"],
                       "dma_stall": sum(c["dma_stall"] for c in result.counters),
                       "sim_cycles_per_second": getattr(result, "cycles_per_second", None)}
                rows.append(row)
                _log.info("%-22s %-8s %2d cores: %9s cycles  x%.2f  util %.3f  DRAM %.2f MB", name, split, cores,
                          f"{result.cycles:,}", row["speedup"], row["utilization"], row["dram_bytes"] / 1e6)
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
            _log.info("whole-program RTL speed, default %d-core model, Verilator threads %d: %s cycles/s "
                      "(%s cycles)", hw.cores, threads, f"{speed[-1]['cycles_per_second']:,.0f}", f"{result.cycles:,}")
    report = {"hw": model.to_dict(), "hw_hash": model.hash, "rows": rows, "default_model_speed": speed}
    atomic_write(out_dir / "scaling.json", json.dumps(report, indent=2))
    atomic_write(out_dir / "scaling.md", scaling_table(rows) + "\n")
    _scaling_plot(rows, out_dir / "scaling.png")
    return report


def scaling_table(rows: list[dict]) -> str:
    """The markdown table of :func:`scaling`'s rows."""
    lines = ["| layer | split | cores | RTL cycles | speedup | utilization | DRAM MB | DMA stall cycles |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['layer']} | {r['split']} | {r['cores']} | {r['cycles']:,} | {r['speedup']:.2f} | "
                     f"{r['utilization']:.3f} | {r['dram_bytes'] / 1e6:.2f} | {r['dma_stall']:,} |")
    return "\n".join(lines)


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
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=110)
    plt.close(figure)
    atomic_write(path, image.getvalue())


#: Input resolution per zoo model in the ``zoo`` benchmark: 224 where the slowest plan's RTL run
#: takes under ten minutes here, a smaller one where it would not (VGG-16: ~60 M cycles at 224).
ZOO_SIZES = {"tiny_cnn": 32, "resnet18": 224, "resnet50": 112, "mobilenet_v2": 224, "vgg16": 112,
             "squeezenet1_1": 224, "regnet_x_400mf": 224, "shufflenet_v2_x1_0": 224, "mnasnet1_0": 224,
             "efficientnet_b0": 224, "mobilenet_v3_small": 224, "mobilenet_v3_large": 224, "yolo_tiny": 128}
ZOO_PLANS = (("none", "1"), ("none", "all"), ("max", "all"))


def run_checked(hw: HwConfig, binary, inputs: dict):
    """Run ``binary`` on the golden simulator and the RTL; the RTL's result, once it ended without error
    and every output equals the golden simulator's (else AcceleratorFault, MismatchError)."""
    from .sim.golden import GoldenSimulator
    from .sim.rtl import RtlSimulator
    golden = GoldenSimulator(hw).run(binary, inputs)
    rtl = RtlSimulator(hw).run(binary, inputs)
    if rtl.error is not None:
        raise AcceleratorFault(f"the RTL stopped: {rtl.error}")
    differing = [t.name for t in binary.outputs if not np.array_equal(rtl.outputs[t.name], golden.outputs[t.name])]
    if differing:
        raise MismatchError(f"RTL output(s) {differing} differ from the golden simulator's")
    return rtl, golden


def measurement_failure(error: str) -> type:
    """The error class of a failed measurement's message (an executor job's ``MismatchError: ...``)."""
    return MismatchError if error.startswith(f"{MismatchError.__name__}:") else AcceleratorFault


def _zoo_job(job: dict) -> dict:
    """Run one compiled plan of a model on the golden simulator and the RTL (executor worker)."""
    from .hw.binary import Binary
    from .sim.runtime import group_report
    hw = HwConfig.from_dict(job["hw"])
    binary = Binary.from_bytes(job["binary"])
    x = np.random.default_rng(0).integers(0, 256, size=job["input_shape"]).astype(np.uint8)
    rtl, golden = run_checked(hw, binary, {"input": x})
    result = {"cycles": int(rtl.cycles), "golden_cycles": int(golden.cycles),
              "compile_seconds": job["compile_seconds"], "groups": job["groups"], "fused_groups": job["fused_groups"],
              "instructions": sum(s.instructions for s in binary.streams),
              "sim_seconds": getattr(rtl, "sim_seconds", None)}
    result["group_cycles"] = [g["cycles"] for g in group_report(binary, rtl)]
    return result


def zoo_bench(hw: HwConfig, out_dir: Path, models=None, workers: int | None = None, executor=None, *,
              progress: bool = False) -> dict:
    """Every zoo model (or ``models``) under :data:`ZOO_PLANS` on the RTL, against its roofline bound.

    Parameters
    ----------
    hw : HwConfig
    out_dir : Path
        Where the exported models, the measurement cache, ``zoo.json`` and ``zoo.md`` go.
    models : list of str, optional
        Default: every model of :data:`ZOO_SIZES`.
    workers : int, optional
        Parallel RTL runs of the local executor made when ``executor`` is not given.
    executor : Executor, optional
        Runs the measurements (left open); default a :class:`~.compiler.tune.executor.LocalExecutor`.
    progress : bool
        A progress bar on stderr.

    Raises
    ------
    InputError
        A model not in :data:`ZOO_SIZES`.
    AcceleratorFault
        An RTL run failed.
    MismatchError
        An RTL output differed from the golden simulator's.
    """
    from .compiler.compile import compile_graph
    from .compiler.frontend import load_onnx, zoo
    from .compiler.plan import make_plan
    from .compiler.tune.cache import MeasurementCache, measure, measurement_key
    from .compiler.tune.executor import LocalExecutor
    from .compiler.tune.roofline import roofline
    models = models or list(ZOO_SIZES)
    unknown = [name for name in models if name not in ZOO_SIZES]
    if unknown:
        raise InputError(f"unknown zoo benchmark model(s) {', '.join(map(repr, unknown))}; accepted: "
                         f"{', '.join(ZOO_SIZES)}")
    onnx_dir = out_dir / "zoo-onnx"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    specs, info, graphs = [], {}, {}
    for name in models:
        size = ZOO_SIZES[name]
        path = onnx_dir / f"{name}_{size}.onnx"
        if not path.exists():
            _log.info("exporting %s at %dx%d...", name, size, size)
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
    own_executor = executor is None
    executor = LocalExecutor(workers) if own_executor else executor
    try:
        for m in measure(specs, prepare, _zoo_job, executor=executor, cache=cache, hw_hash=hw.hash,
                         describe=lambda s: {k: s[k] for k in ("model", "size", "fusion", "cores")},
                         progress=progress, label="zoo RTL runs"):
            spec = m.spec
            if not m.ok:
                raise measurement_failure(m.error)(f"{spec['model']} {spec['fusion']} {spec['cores']} cores: {m.error}")
            meta = info[spec["model"]]
            bound = meta["bounds"][spec["cores"]]
            row = {"model": spec["model"], "size": spec["size"], "fusion": spec["fusion"], "cores": spec["cores"],
                   **m.result, "macs": meta["macs"],
                   "utilization": meta["macs"] / (hw.macs_per_cycle * spec["cores"] * m.result["cycles"]),
                   "roofline_cycles": bound["cycles"], "roofline_bound": bound["bound"],
                   "min_dram_bytes": bound["min_dram_bytes"], "measure_seconds": m.seconds}
            rows.append(row)
            _log.info("%-14s %3dpx fusion %-4s %d cores: %11s cycles, util %.3f, roofline %s (%s), compile %.1fs",
                      row["model"], row["size"], row["fusion"], row["cores"], f"{row['cycles']:,}",
                      row["utilization"], f"{row['roofline_cycles']:,}", row["roofline_bound"],
                      row["compile_seconds"])
    finally:
        if own_executor:
            executor.close()
    order = {(f, c): i for i, (f, c) in enumerate(ZOO_PLANS)}
    rows.sort(key=lambda r: (models.index(r["model"]), order[(r["fusion"], "1" if r["cores"] == 1 else "all")]))
    report = {"hw": hw.to_dict(), "hw_hash": hw.hash, "rows": rows}
    atomic_write(out_dir / "zoo.json", json.dumps(report, indent=2))
    atomic_write(out_dir / "zoo.md", zoo_table(rows) + "\n")
    return report


def zoo_table(rows: list[dict]) -> str:
    """The markdown table of :func:`zoo_bench`'s rows."""
    lines = ["| model | input | plan | compile s | RTL cycles | utilization | roofline cycles | RTL / roofline |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        fusion = "no" if r["fusion"] == "none" else r["fusion"]
        plan = f"{fusion} fusion, {r['cores']} core{'s' if r['cores'] > 1 else ''}"
        lines.append(f"| {r['model']} | {r['size']}x{r['size']} | {plan} | {r['compile_seconds']:.1f} | "
                     f"{r['cycles']:,} | {r['utilization']:.3f} | {r['roofline_cycles']:,} ({r['roofline_bound']}) | "
                     f"{r['cycles'] / max(1, r['roofline_cycles']):.2f} |")
    return "\n".join(lines)
