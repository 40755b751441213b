"""``dlfusion compile``: a quantized ONNX model (or a zoo model) to a ``.dlfb`` binary and its plan."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from .options import UsageError, add_command, add_hw, add_json, load_hw, print_json

__all__ = ["add_commands", "cmd_compile"]

_log = logging.getLogger(__name__)


def add_commands(sub) -> None:
    p = add_command(sub, "compile", help="compile a quantized ONNX model to a .dlfb binary (and its plan)")
    p.add_argument("model", help="quantized QOperator .onnx file, or a zoo model name (dlfusion models)")
    p.add_argument("--input-size", type=int, default=None, help="zoo models: input resolution")
    add_hw(p)
    p.add_argument("--cores", type=int, default=None, help="cores per group (default: all)")
    p.add_argument("--split", choices=("rows", "channels"), default="rows")
    p.add_argument("--fusion", choices=("none", "max"), default="none",
                   help="none: one layer per group; max: the longest groups that fuse and fit on chip")
    p.add_argument("--calibration", default=None,
                   help="float .onnx models: quantize first, calibrating on 'random' images or a directory "
                        "of .npy inputs")
    p.add_argument("--plan", help="compile with this plan JSON instead")
    p.add_argument("-o", "--output", required=True, help="binary to write; the plan goes beside it")
    add_json(p)
    p.set_defaults(func=cmd_compile)


def _load_zoo_model(name: str, input_size: int | None):
    from ..compiler.frontend import load_onnx, zoo
    with tempfile.TemporaryDirectory(prefix="dlfusion-compile-") as tmp:
        path = Path(tmp) / f"{name}.onnx"
        _log.info("exporting and quantizing %s at %s px...", name, input_size or "default")
        zoo.export_quantized(name, input_size, path)
        return load_onnx(path, name=name)


def _load_onnx_any(path: Path, calibration: str | None):
    """A quantized QOperator model as it is; a float model quantized first (``--calibration``)."""
    import onnx

    from ..compiler.frontend import load_onnx
    from ..compiler.frontend.quantize import quantize_model
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
        _log.info("quantizing %s (calibration: %s)...", path.name, calibration)
        quantized_path = quantize_model(path, Path(tmp) / "quantized.onnx", calibration=calibration)
        return load_onnx(quantized_path, name=path.stem)


def cmd_compile(args) -> int:
    from ..compiler.compile import compile_graph
    from ..compiler.frontend import zoo
    from ..compiler.plan import Plan, make_plan
    hw = load_hw(args)
    source = Path(args.model)
    if source.suffix == ".onnx":
        graph = _load_onnx_any(source, args.calibration)
    elif args.model in zoo.MODELS:
        graph = _load_zoo_model(args.model, args.input_size)
    else:
        raise UsageError(f"{args.model!r}: give a quantized .onnx file or a zoo model ({', '.join(zoo.MODELS)})")
    started = time.perf_counter()
    if args.plan:
        plan = Plan.read(args.plan)
    else:
        _log.info("planning %s: fusion %s, %d cores...", graph.name, args.fusion, args.cores or hw.cores)
        plan = make_plan(graph, hw, fusion=args.fusion, cores=args.cores or hw.cores, split=args.split)
    _log.info("lowering %d layers in %d groups...", len(graph.nodes), len(plan.groups))
    binary = compile_graph(graph, hw, plan)
    output = Path(args.output)
    binary.write(output)
    plan.write(output.with_suffix(".plan.json"))
    summary = {"binary": str(output), "plan": str(output.with_suffix(".plan.json")), "model": graph.name,
               "layers": len(graph.nodes), "groups": len(plan.groups), "macs": graph.macs, "hw": hw.hash,
               "instructions": sum(s.instructions for s in binary.streams),
               "compile_seconds": round(time.perf_counter() - started, 3)}
    if args.json:
        print_json(summary)
    else:
        print(f"compiled {graph.name}: {summary['layers']} layers in {summary['groups']} groups, "
              f"{summary['instructions']} instructions -> {output} (plan {summary['plan']})")
    return 0
