"""``dlfusion models`` and ``dlfusion export``: the built-in model zoo."""

from __future__ import annotations

import logging

from .options import UsageError, add_command, add_hw, add_json, load_hw, print_json

__all__ = ["add_commands", "cmd_export", "cmd_models", "cmd_prune"]

_log = logging.getLogger(__name__)


def add_commands(sub) -> None:
    p = add_command(sub, "models", help="list the built-in model zoo")
    add_json(p, help="print the list as JSON")
    p.set_defaults(func=cmd_models)

    p = add_command(sub, "export", help="write a zoo model as the quantized ONNX the compiler uses")
    p.add_argument("name", help="a zoo model (dlfusion models); NAME:2of4 or NAME:1of4 prunes it first")
    _quantization_options(p)
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=cmd_export)

    p = add_command(sub, "prune", help="N:M-prune a zoo model or a float ONNX model, then quantize it")
    p.add_argument("model", help="a zoo model name or a float .onnx file")
    p.add_argument("--pattern", required=True, help="2:4 or 1:4: at most N nonzero weights per M input channels")
    add_hw(p, help="HwConfig TOML file: its lanes decide which layers fill a sparse window (default: built-in)")
    _quantization_options(p)
    p.add_argument("-o", "--output", required=True, help="the quantized, pruned .onnx to write")
    add_json(p, help="print the report (pruned and dense layers) as JSON")
    p.set_defaults(func=cmd_prune)


def _quantization_options(p) -> None:
    p.add_argument("--input-size", type=int, default=None, help="zoo models: input resolution")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--calibration", default="random", help="'random' or a directory of .npy inputs")
    p.add_argument("--format", dest="quant_format", choices=("qoperator", "qdq"), default="qoperator",
                   help="onnxruntime's quantization format: quantized operators (QLinearConv ...) or "
                        "QuantizeLinear/DequantizeLinear around float operators; both compile to the same program")
    p.add_argument("--activation-type", choices=("uint8", "int8"), default="uint8",
                   help="the quantized activations' type (QDQ with int8: onnxruntime runs the ops next to a "
                        "tensor read by several nodes in float32, dlfusion refuses those; see README known gaps)")


def cmd_models(args) -> int:
    from ..compiler.frontend import zoo
    rows = [{"name": spec.name, "default_size": spec.default_size, "min_size": spec.min_size,
             "classes": spec.num_classes, "description": spec.description} for spec in zoo.MODELS.values()]
    if args.json:
        print_json({"models": rows})
    else:
        for row in rows:
            print(f"{row['name']:14} {row['default_size']:>4} px (min {row['min_size']:>3})  {row['description']}")
    return 0


def cmd_export(args) -> int:
    from ..compiler.frontend import zoo
    if not zoo.is_zoo_name(args.name):
        raise UsageError(f"unknown model {args.name!r}; models: {', '.join(zoo.MODELS)} (NAME:2of4 or NAME:1of4 "
                         "pruned)")
    path = zoo.export_quantized(args.name, args.input_size, args.output, seed=args.seed,
                                calibration=args.calibration, activation_type=args.activation_type,
                                quant_format=args.quant_format)
    _log.info("wrote %s: %s quantized (%s, per-channel int8 weights, %s activations)", path, args.name,
              {"qoperator": "QOperator", "qdq": "QDQ"}[args.quant_format], args.activation_type)
    return 0


def cmd_prune(args) -> int:
    from ..compiler.frontend import zoo
    if not args.model.endswith(".onnx") and args.model not in zoo.MODELS:
        raise UsageError(f"{args.model!r}: give a zoo model ({', '.join(zoo.MODELS)}) or a float .onnx file")
    hw = load_hw(args)
    path, report = zoo.export_pruned(args.model, args.pattern, args.input_size, args.output, seed=args.seed,
                                     calibration=args.calibration, activation_type=args.activation_type,
                                     quant_format=args.quant_format, lanes=hw.lanes)
    payload = {"output": str(path), "model": args.model, **report}
    if args.json:
        print_json(payload)
    else:
        print(f"pruned {len(report['pruned_layers'])} layer(s) of {args.model} to {report['pattern']} "
              f"({report['nonzero_weights_before']:,} -> {report['nonzero_weights_after']:,} nonzero weights), "
              f"quantized -> {path}")
        for layer, why in report["dense_layers"].items():
            print(f"  dense: {layer}: {why}")
    return 0
