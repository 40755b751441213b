"""The ``dlfusion`` command line."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from .compiler.errors import CompileError
from .hw.binary import Binary, BinaryError, atomic_write
from .hw.config import HwConfig, HwConfigError
from .hw.isa import IsaError

__all__ = ["main"]

KNOWN_ERRORS = (HwConfigError, BinaryError, CompileError, IsaError)


class UsageError(ValueError):
    """Bad command-line input."""


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _print_json(payload: dict) -> None:
    print(json.dumps(payload, indent=2, sort_keys=True))


def _load_hw(path) -> HwConfig:
    return HwConfig.load(path)


def _run_backend(binary, inputs, backend, *, waves=False, progress=False):
    from .sim.runtime import run
    options = {"waves": waves} if backend == "rtl" else {}
    if progress and backend == "rtl":
        print(f"[dlfusion] building/running the RTL model for HwConfig {binary.hw.hash} "
              "(first build of a configuration takes a few minutes)...", file=sys.stderr, flush=True)
    return run(binary, inputs, backend=backend, **options)


# -- verilog ------------------------------------------------------------------------------------

def cmd_verilog(args) -> int:
    from .hw.top import generate_verilog
    hw = _load_hw(args.hw)
    # Without Amaranth's unread alias wires (simulation builds keep them): lint-clean Verilog.
    text = generate_verilog(hw, debug_names=False)
    atomic_write(args.output, text)
    print(f"wrote {args.output}: {hw.describe()} (HwConfig {hw.hash})", file=sys.stderr)
    return 0


# -- run ------------------------------------------------------------------------------------------

def _parse_inputs(binary: Binary, specs: list[str]) -> dict:
    names = [t.name for t in binary.inputs]
    inputs = {}
    for spec in specs or []:
        if "=" in spec:
            name, path = spec.split("=", 1)
        elif len(names) == 1:
            name, path = names[0], spec
        else:
            raise UsageError(f"--input {spec!r}: this binary has inputs {names}; write NAME=FILE.npy")
        try:
            array = np.load(path)
        except (OSError, ValueError) as error:
            raise UsageError(f"--input {spec!r}: cannot read a .npy array ({error})") from None
        quant = binary.metadata.get("input_quant")
        if quant and np.issubdtype(array.dtype, np.floating):
            # A float model input: quantize it as the model's QuantizeLinear does.
            array = np.asarray(array, np.float32).reshape(quant["shape"])[0]
            info = np.iinfo(np.dtype(quant["dtype"]))
            array = np.clip(np.rint(array / np.float32(quant["scale"])) + quant["zero_point"], info.min,
                            info.max).astype(quant["dtype"])
        inputs[name] = array
    missing = [n for n in names if n not in inputs]
    if missing:
        raise UsageError(f"missing input(s) {missing}; pass --input NAME=FILE.npy (this binary takes {names})")
    return inputs


def cmd_run(args) -> int:
    binary = Binary.read(args.binary)
    if args.hw:
        binary.check_hw(_load_hw(args.hw))
    inputs = _parse_inputs(binary, args.input)
    started = time.perf_counter()
    result = _run_backend(binary, inputs, args.backend, waves=args.waves, progress=not args.json)
    elapsed = time.perf_counter() - started
    if result.error is not None:
        payload = result.to_json()
        payload["wall_seconds"] = round(elapsed, 3)
        if args.json:
            _print_json(payload)
        print(f"dlfusion: error: the accelerator stopped: {result.error}", file=sys.stderr)
        return 3
    if args.output:
        if len(result.outputs) == 1:
            atomic_write(args.output, _npy_bytes(next(iter(result.outputs.values()))))
        else:
            base = Path(args.output)
            for name, array in result.outputs.items():
                atomic_write(base.with_name(f"{base.stem}_{name}.npy"), _npy_bytes(array))
    payload = result.to_json()
    payload["wall_seconds"] = round(elapsed, 3)
    macs = int(binary.metadata.get("macs", 0))
    if macs:
        payload["macs"] = macs
        payload["utilization"] = macs / (binary.hw.macs_per_cycle * len(binary.streams) * max(1, result.cycles))
    waveform = getattr(result, "waveform", None)
    if waveform:
        payload["waveform"] = str(waveform)
    from .sim.runtime import GroupReportError, group_report
    try:
        groups = group_report(binary, result)
    except GroupReportError as error:
        raise BinaryError(f"{args.binary}: {error}") from None
    if groups:
        payload["groups"] = groups
    if args.json:
        _print_json(payload)
    else:
        print(f"{args.backend}: {result.cycles} cycles"
              + (f", utilization {payload['utilization']:.3f}" if macs else "")
              + (f", waveform {waveform}" if waveform else ""))
        if groups:
            print(_group_table(groups))
    return 0


def _group_table(groups: list[dict]) -> str:
    """The per-group lines of ``run``'s text output."""
    rows = [("group", "nodes", "cores", "split", "cycles", "utilization", "DRAM bytes")]
    for group in groups:
        nodes = ",".join(group["nodes"])
        rows.append((str(group["index"]), nodes if len(nodes) <= 32 else nodes[:29] + "...", str(group["cores"]),
                     str(group["split"]), f"{group['cycles']:,}", f"{group['utilization']:.3f}",
                     f"{group['dram_bytes']:,}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    left = {1, 3}       # text columns; numbers are right-aligned
    return "\n".join("  ".join(cell.ljust(w) if i in left else cell.rjust(w)
                                for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
                      for row in rows)


def _npy_bytes(array: np.ndarray) -> bytes:
    import io
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


# -- layer ------------------------------------------------------------------------------------------

def _build_layer(args, hw):
    from .compiler import layers
    common = dict(seed=args.seed, cores=args.cores, split=args.split)
    if args.kind == "conv":
        return layers.build_conv(hw, h=args.h, w=args.w, cin=args.cin, cout=args.cout, k=args.k,
                                 stride=args.stride, pad=args.pad, **common)
    if args.kind == "fc":
        return layers.build_fc(hw, cin=args.cin, cout=args.cout, **common)
    if args.kind == "dwconv":
        return layers.build_dwconv(hw, h=args.h, w=args.w, c=args.cin, k=args.k, stride=args.stride,
                                   pad=args.pad, **common)
    if args.kind == "pool":
        return layers.build_pool(hw, h=args.h, w=args.w, c=args.cin, k=args.k, stride=args.stride,
                                 pad=args.pad or 0, mode=args.mode, **common)
    return layers.build_add(hw, h=args.h, w=args.w, c=args.cin, **common)


def layer_report(case, result) -> dict:
    hw = case.binary.hw
    matches = result.error is None and all(
        np.array_equal(result.outputs[name], expected) for name, expected in case.expected.items())
    payload = {
        "backend": result.backend,
        "layer": case.description,
        "hw": hw.hash,
        "cycles": int(result.cycles),
        "macs": int(case.macs),
        # Utilization of the PEs of the cores the program uses.
        "utilization": case.macs / (hw.macs_per_cycle * len(case.binary.streams) * max(1, result.cycles)),
        "cores": len(case.binary.streams),
        "matches_reference": bool(matches),
        "counters": result.counters,
        "error": None if result.error is None else result.error.to_json(),
    }
    if result.error is None:
        payload["output_sha256"] = _sha256(result.outputs["y"])
    for name in ("cycles_per_second", "sim_seconds"):
        if hasattr(result, name):
            payload[name] = getattr(result, name)
    return payload


def cmd_layer(args) -> int:
    hw = _load_hw(args.hw)
    for name in ("h", "w", "cin", "cout", "k", "stride"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name} must be a positive integer, not {value}")
    case = _build_layer(args, hw)
    if args.save:
        case.binary.write(args.save)
    result = _run_backend(case.binary, case.inputs, args.backend, waves=args.waves, progress=not args.json)
    payload = layer_report(case, result)
    if args.json:
        _print_json(payload)
    else:
        status = "matches the numpy reference" if payload["matches_reference"] else "DOES NOT MATCH the reference"
        print(f"{args.kind} on {args.backend}: {payload['cycles']} cycles, {payload['macs']} MACs, "
              f"utilization {payload['utilization']:.3f}; output {status}")
    return 0 if payload["matches_reference"] else 4


# -- compile ----------------------------------------------------------------------------------------

def cmd_compile(args) -> int:
    from .compiler.compile import compile_graph
    from .compiler.frontend import load_onnx, zoo
    from .compiler.ir import IRError
    from .compiler.plan import Plan, make_plan
    hw = _load_hw(args.hw)
    source = Path(args.model)
    try:
        if source.suffix == ".onnx":
            graph = _load_onnx_any(source, args.calibration)
        elif args.model in zoo.MODELS:
            import tempfile
            with tempfile.TemporaryDirectory(prefix="dlfusion-compile-") as tmp:
                path = Path(tmp) / f"{args.model}.onnx"
                print(f"[dlfusion] exporting and quantizing {args.model} at {args.input_size or 'default'} px...",
                      file=sys.stderr, flush=True)
                zoo.export_quantized(args.model, args.input_size, path)
                graph = load_onnx(path, name=args.model)
        else:
            raise UsageError(f"{args.model!r}: give a quantized .onnx file or a zoo model "
                             f"({', '.join(zoo.MODELS)})")
    except (IRError, ValueError) as error:
        raise UsageError(str(error)) from None
    started = time.perf_counter()
    if args.plan:
        plan = Plan.read(args.plan)
    else:
        if not args.json:
            print(f"[dlfusion] planning {graph.name}: fusion {args.fusion}, {args.cores or hw.cores} cores...",
                  file=sys.stderr, flush=True)
        plan = make_plan(graph, hw, fusion=args.fusion, cores=args.cores or hw.cores, split=args.split)
    if not args.json:
        print(f"[dlfusion] lowering {len(graph.nodes)} layers in {len(plan.groups)} groups...", file=sys.stderr,
              flush=True)
    binary = compile_graph(graph, hw, plan)
    output = Path(args.output)
    binary.write(output)
    plan.write(output.with_suffix(".plan.json"))
    summary = {"binary": str(output), "plan": str(output.with_suffix(".plan.json")), "model": graph.name,
               "layers": len(graph.nodes), "groups": len(plan.groups), "macs": graph.macs, "hw": hw.hash,
               "instructions": sum(s.instructions for s in binary.streams),
               "compile_seconds": round(time.perf_counter() - started, 3)}
    if args.json:
        _print_json(summary)
    else:
        print(f"compiled {graph.name}: {summary['layers']} layers in {summary['groups']} groups, "
              f"{summary['instructions']} instructions -> {output} (plan {summary['plan']})")
    return 0


def _load_onnx_any(path: Path, calibration: str | None):
    """A quantized QOperator model as it is; a float model quantized first (``--calibration``)."""
    import tempfile

    import onnx

    from .compiler.frontend import load_onnx
    from .compiler.frontend.quantize import CalibrationError, quantize_model
    if not path.exists():
        raise UsageError(f"model file {str(path)!r} does not exist")
    try:
        ops = {node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node}
    except Exception as error:   # onnx raises DecodeError and others for a broken file
        raise UsageError(f"{path}: not a readable ONNX model ({type(error).__name__}: {error})") from None
    quantized = any(op.startswith("QLinear") or op in ("QGemm", "QuantizeLinear") for op in ops)
    if quantized:
        return load_onnx(path)
    if calibration is None:
        raise UsageError(f"{path} is a float model (no quantized ops); pass --calibration random or "
                         "--calibration DIR (a directory of .npy inputs) to quantize it first")
    with tempfile.TemporaryDirectory(prefix="dlfusion-quantize-") as tmp:
        print(f"[dlfusion] quantizing {path.name} (calibration: {calibration})...", file=sys.stderr, flush=True)
        try:
            quantized_path = quantize_model(path, Path(tmp) / "quantized.onnx", calibration=calibration)
        except CalibrationError as error:
            raise UsageError(str(error)) from None
        return load_onnx(quantized_path, name=path.stem)


def cmd_models(args) -> int:
    from .compiler.frontend import zoo
    rows = [{"name": spec.name, "default_size": spec.default_size, "min_size": spec.min_size,
             "classes": spec.num_classes, "description": spec.description} for spec in zoo.MODELS.values()]
    if args.json:
        _print_json({"models": rows})
    else:
        for row in rows:
            print(f"{row['name']:14} {row['default_size']:>4} px (min {row['min_size']:>3})  {row['description']}")
    return 0


def cmd_export(args) -> int:
    from .compiler.frontend import zoo
    if args.name not in zoo.MODELS:
        raise UsageError(f"unknown model {args.name!r}; models: {', '.join(zoo.MODELS)}")
    try:
        path = zoo.export_quantized(args.name, args.input_size, args.output, seed=args.seed,
                                    calibration=args.calibration)
    except ValueError as error:
        raise UsageError(str(error)) from None
    print(f"wrote {path}: {args.name} quantized (QOperator, per-channel int8 weights)", file=sys.stderr)
    return 0


# -- demo -------------------------------------------------------------------------------------------

def cmd_demo(args) -> int:
    from .compiler import layers
    hw = _load_hw(args.hw)
    print(f"dlfusion demo 1/2: one 3x3 convolution ({args.h}x{args.w}, {args.c} -> {args.c} channels) split by "
          f"output rows over {hw.cores} core(s) of {hw.describe()}", flush=True)
    case = layers.build_conv(hw, h=args.h, w=args.w, cin=args.c, cout=args.c, k=3, seed=1, cores=hw.cores,
                             split="rows")
    golden = _run_backend(case.binary, case.inputs, "golden")
    print("  golden simulator: done", flush=True)
    rtl = _run_backend(case.binary, case.inputs, "rtl", progress=True)
    rows = []
    for result in (golden, rtl):
        report = layer_report(case, result)
        rows.append(report)
    same = rtl.error is None and golden.error is None and all(
        np.array_equal(rtl.outputs[n], golden.outputs[n]) for n in golden.outputs)
    print(f"  {'backend':8} {'cycles':>10} {'utilization':>12} {'matches numpy':>14}")
    for row in rows:
        label = row["backend"] + (" (est.)" if row["backend"] == "golden" else "")
        print(f"  {label:14} {row['cycles']:>10} {row['utilization']:>12.3f} {str(row['matches_reference']):>8}")
    print(f"  RTL output == golden output: {same}")
    for core, counters in enumerate(rtl.counters):
        print(f"  RTL counters (core {core}): " + ", ".join(f"{k}={v}" for k, v in counters.items()))
    if hasattr(rtl, "cycles_per_second"):
        print(f"  RTL simulation speed: {rtl.cycles_per_second:,.0f} cycles/s")
    if not (same and rows[1]["matches_reference"]):
        return 4
    if args.no_tune:
        return 0
    return _demo_tune(args, hw)


def _demo_tune(args, hw: HwConfig) -> int:
    """Every tuning strategy on a zoo model, measured on the RTL: the comparison table."""
    from .compiler.tune import TuneError
    from .compiler.tune.cache import MeasurementCache
    from .compiler.tune.executor import LocalExecutor
    from .compiler.tune.planrun import MeasurementFailed
    from .compiler.tune.report import comparison_table, write_report
    from .compiler.tune.rule import load_rule
    from .compiler.tune.tune import load_model, tune
    print(f"\ndlfusion demo 2/2: tuning {args.model} at {args.input_size}x{args.input_size} with every strategy "
          "(none, cores-only, fusion-only, dlfusion, oracle); every plan runs on the RTL", flush=True)
    try:
        load_rule(hw)
    except TuneError:
        # The demo characterizes automatically (dlfusion tune asks for it instead): the small grid, a few minutes.
        from .compiler.tune.characterize import characterize
        print(f"  no decision rule for HwConfig {hw.hash} yet: characterizing the small grid on the RTL first "
              "(dlfusion characterize --grid small; a few minutes, cached)", flush=True)
        with LocalExecutor(args.workers) as executor:
            characterize(hw, grid="small", executor=executor, progress=True)
    try:
        graph, source = load_model(args.model, args.input_size, progress=True)
        with LocalExecutor(args.workers) as executor:
            report = tune(graph, hw, ["all"], executor=executor, cache=MeasurementCache(), source=source,
                          progress=True)
    except MeasurementFailed as error:
        print(f"dlfusion: error: {error}", file=sys.stderr)
        return error.exit_code
    except TuneError as error:
        print(f"dlfusion: error: {error}", file=sys.stderr)
        return 2
    from .compiler.tune.cache import default_build_dir
    written = write_report(report, default_build_dir() / "demo")
    print(comparison_table(report))
    print(f"report: {written[1]}")
    return 0


# -- parser -----------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dlfusion", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("verilog", help="write the accelerator's Verilog for a HwConfig")
    p.add_argument("--hw", help="HwConfig TOML file (default: built-in defaults)")
    p.add_argument("-o", "--output", required=True, help="Verilog file to write")
    p.set_defaults(func=cmd_verilog)

    p = sub.add_parser("run", help="run a .dlfb binary on a backend")
    p.add_argument("binary")
    p.add_argument("--backend", choices=("golden", "rtl"), default="golden")
    p.add_argument("--hw", help="check the binary against this HwConfig TOML")
    p.add_argument("--input", action="append", help="NAME=FILE.npy (or FILE.npy for a single input)")
    p.add_argument("--output", help="write the output array(s) to this .npy path")
    p.add_argument("--waves", action="store_true", help="rtl: dump an FST waveform")
    p.add_argument("--json", action="store_true", help="print a JSON report")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("layer", help="build one layer with seeded random data, run and check it")
    p.add_argument("kind", choices=("conv", "fc", "dwconv", "pool", "add"))
    p.add_argument("--h", type=int, default=14)
    p.add_argument("--w", type=int, default=14)
    p.add_argument("--cin", "--c", dest="cin", type=int, default=32,
                   help="input channels (channels for dwconv/pool/add)")
    p.add_argument("--cout", type=int, default=32)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--pad", type=int, default=None, help="default: k // 2 (pool: 0)")
    p.add_argument("--mode", choices=("max", "avg"), default="max", help="pool mode")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cores", type=int, default=1, help="cores to split the layer over (<= HwConfig.cores)")
    p.add_argument("--split", choices=("rows", "channels"), default="rows",
                   help="split axis: output rows (weights loaded by every core) or output channels "
                        "(input loaded by every core)")
    p.add_argument("--backend", choices=("golden", "rtl"), default="golden")
    p.add_argument("--hw", help="HwConfig TOML file")
    p.add_argument("--save", help="also write the binary to this .dlfb path")
    p.add_argument("--waves", action="store_true", help="rtl: dump an FST waveform")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_layer)

    p = sub.add_parser("compile", help="compile a quantized ONNX model to a .dlfb binary (and its plan)")
    p.add_argument("model", help="quantized QOperator .onnx file, or a zoo model name (dlfusion models)")
    p.add_argument("--input-size", type=int, default=None, help="zoo models: input resolution")
    p.add_argument("--hw", help="HwConfig TOML file")
    p.add_argument("--cores", type=int, default=None, help="cores per group (default: all)")
    p.add_argument("--split", choices=("rows", "channels"), default="rows")
    p.add_argument("--fusion", choices=("none", "max"), default="none",
                   help="none: one layer per group; max: the longest groups that fuse and fit on chip")
    p.add_argument("--calibration", default=None,
                   help="float .onnx models: quantize first, calibrating on 'random' images or a directory "
                        "of .npy inputs")
    p.add_argument("--plan", help="compile with this plan JSON instead")
    p.add_argument("-o", "--output", required=True, help="binary to write; the plan goes beside it")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("models", help="list the built-in model zoo")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("export", help="write a zoo model as the quantized ONNX the compiler uses")
    p.add_argument("name")
    p.add_argument("--input-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--calibration", default="random", help="'random' or a directory of .npy inputs")
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("demo", help="run a convolution on the RTL and the golden simulator, then tune a zoo "
                                    "model with every strategy on the RTL and print the comparison")
    p.add_argument("--hw", help="HwConfig TOML file")
    p.add_argument("--h", type=int, default=28)
    p.add_argument("--w", type=int, default=28)
    p.add_argument("--c", type=int, default=64)
    p.add_argument("--model", default="tiny_cnn", help="zoo model the tuning part runs (default tiny_cnn)")
    p.add_argument("--input-size", type=int, default=32, help="its input size (default 32)")
    p.add_argument("--workers", type=int, default=None, help="parallel RTL runs (default: the CPU count)")
    p.add_argument("--no-tune", action="store_true", help="only the convolution")
    p.set_defaults(func=cmd_demo)

    from .compiler.tune.cli import add_commands as add_tune_commands  # characterize (compiler/tune/cli.py)
    add_tune_commands(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, *KNOWN_ERRORS) as error:
        print(f"dlfusion: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dlfusion: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
