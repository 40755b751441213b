"""``dlfusion compile``: a quantized ONNX model (or a zoo model) to a ``.dlfb`` binary and its plan.

Which plan, in this order (the JSON's ``plan_source`` says which, and why):

* ``file``: ``--plan FILE``;
* ``fusion=... cores=... split=...``: ``--fusion``, ``--cores`` or ``--split`` given,
  the obvious plans of :func:`~dlfusion.compiler.plan.make_plan` (with a warning
  when the roofline estimate below puts the plan above one core's);
* ``dlfusion``: the tuner's joint strategy
  (:func:`~dlfusion.compiler.tune.strategies.plan_dlfusion`) when the rule
  directory (``--rule-dir``, default ``build/tune``) holds a decision rule and a
  cost model for the HwConfig;
* ``default``: otherwise, :func:`~dlfusion.compiler.tune.strategies.plan_default`.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from ..compiler.errors import CompileError
from ..compiler.plan import Plan
from ..compiler.tune.errors import TuneError
from ..compiler.tune.features import Workload
from .options import UsageError, add_command, add_hw, add_json, add_sparse_exec, load_hw, print_json

__all__ = ["add_commands", "cmd_compile", "choose_plan"]

_log = logging.getLogger(__name__)


def add_commands(sub) -> None:
    p = add_command(sub, "compile", help="compile a quantized ONNX model to a .dlfb binary (and its plan)")
    p.add_argument("model", help="quantized .onnx file (QOperator or QDQ), or a zoo model name (dlfusion models; "
                                 "NAME:2of4 or NAME:1of4 prunes it first, as dlfusion prune does)")
    p.add_argument("--input-size", type=int, default=None, help="zoo models: input resolution")
    add_hw(p)
    p.add_argument("--cores", type=int, default=None,
                   help="every group on this many cores (an obvious plan, as --fusion; default: all)")
    p.add_argument("--split", choices=("rows", "channels"), default=None,
                   help="how a single layer is split over the cores (an obvious plan, as --fusion; default rows)")
    p.add_argument("--fusion", choices=("none", "max"), default=None,
                   help="an obvious plan: none: one layer per group; max: the longest groups that fuse and fit on "
                        "chip (without --fusion, --cores, --split and --plan: the tuned plan, else the default "
                        "plan)")
    p.add_argument("--rule-dir", metavar="DIR",
                   help="where the decision rule and the cost model of the tuned plan live (default: build/tune)")
    p.add_argument("--calibration", default=None,
                   help="float .onnx models: quantize first, calibrating on 'random' images or a directory "
                        "of .npy inputs")
    p.add_argument("--plan", help="compile with this plan JSON instead")
    p.add_argument("-o", "--output", required=True, help="binary to write; the plan goes beside it")
    add_sparse_exec(p)
    add_json(p)
    p.set_defaults(func=cmd_compile)


def _load_zoo_model(name: str, input_size: int | None, lanes: int):
    from ..compiler.frontend import load_onnx, zoo
    with tempfile.TemporaryDirectory(prefix="dlfusion-compile-") as tmp:
        path = Path(tmp) / "model.onnx"
        _log.info("exporting%s and quantizing %s at %s px...", " pruning" if ":" in name else "", name,
                  input_size or "default")
        zoo.export_quantized(name, input_size, path, lanes=lanes)
        return load_onnx(path, name=name.replace(":", "-"))


def _load_onnx_any(path: Path, calibration: str | None):
    """A quantized QOperator model as it is; a float model quantized first (``--calibration``)."""
    import onnx

    from ..compiler.frontend import load_onnx
    from ..compiler.frontend.quantize import quantize_model, quantized_op
    if not path.exists():
        raise UsageError(f"model file {str(path)!r} does not exist")
    try:
        ops = {node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node}
    except Exception as error:   # onnx raises DecodeError and others for a broken file
        raise UsageError(f"{path}: not a readable ONNX model ({type(error).__name__}: {error})") from None
    if quantized_op(ops) is not None:
        return load_onnx(path)
    if calibration is None:
        raise UsageError(f"{path} is a float model (no quantized ops); pass --calibration random or "
                         "--calibration DIR (a directory of .npy inputs) to quantize it first")
    with tempfile.TemporaryDirectory(prefix="dlfusion-quantize-") as tmp:
        _log.info("quantizing %s (calibration: %s)...", path.name, calibration)
        quantized_path = quantize_model(path, Path(tmp) / "quantized.onnx", calibration=calibration)
        return load_onnx(quantized_path, name=path.stem)


def choose_plan(graph, hw, args) -> tuple[Plan, dict]:
    """The plan ``compile`` uses (see the module docstring) and the JSON that says which and why."""
    from ..compiler.plan import make_plan
    from ..compiler.tune.costmodel import cost_model_path, load_cost_model
    from ..compiler.tune.rule import load_rule, rule_path
    from ..compiler.tune.strategies import plan_default, plan_dlfusion, plan_estimate
    if args.plan:
        return Plan.read(args.plan), {"plan_source": "file", "plan_file": str(args.plan)}
    if args.fusion or args.cores or args.split:
        fusion, cores, split = args.fusion or "none", args.cores or hw.cores, args.split or "rows"
        _log.info("planning %s: fusion %s, %d cores, split %s...", graph.name, fusion, cores, split)
        plan = make_plan(graph, hw, fusion=fusion, cores=cores, split=split, sparse_exec=args.sparse_exec)
        info = {"plan_source": f"fusion={fusion} cores={cores} split={split}",
                "why": "--fusion, --cores or --split given: every group on the given cores"}
        if cores > 1:
            workload = Workload(graph, hw, args.sparse_exec)
            try:
                estimate, single = plan_estimate(workload, plan), plan_estimate(
                    workload, make_plan(graph, hw, fusion="none", cores=1, sparse_exec=args.sparse_exec))
            except (TuneError, CompileError):
                return plan, info
            info["roofline_cycles"], info["roofline_cycles_one_core"] = round(estimate), round(single)
            if estimate > single:
                info["warning"] = (f"this plan is estimated slower than one core ({estimate:,.0f} vs {single:,.0f} "
                                   "roofline cycles); without --fusion, --cores and --split compile picks per layer")
                _log.warning("%s", info["warning"])
        return plan, info
    workload = Workload(graph, hw, args.sparse_exec)
    try:
        rule, cost_model = load_rule(hw, args.rule_dir), load_cost_model(hw, args.rule_dir)
    except TuneError as error:
        missing = str(error)
        if rule_path(hw, args.rule_dir).exists() or cost_model_path(hw, args.rule_dir).exists():
            _log.warning("not using the tuned plan: %s", missing)
    else:
        _log.info("planning %s with the tuned rule and cost model of HwConfig %s...", graph.name, hw.hash)
        plan, search = plan_dlfusion(workload, rule, cost_model)
        return plan, {"plan_source": "dlfusion", "rule": str(rule_path(hw, args.rule_dir)),
                      "cost_model": str(cost_model_path(hw, args.rule_dir)),
                      "predicted_cycles": round(search.predicted_cycles),
                      "why": "a decision rule and a cost model for this HwConfig are in the rule directory"}
    _log.info("planning %s: the default plan (per layer the cheapest of 1 or %d cores by roofline)...", graph.name,
              hw.cores)
    plan, layers = plan_default(workload, hw.cores)
    return plan, {"plan_source": "default", "layer_choices": layers,
                  "roofline_cycles": round(plan_estimate(workload, plan)),
                  "why": f"no tuned plan ({missing}); every layer its own group on the (cores, split) with the "
                         "lowest roofline estimate max(PE cycles, DMA bytes / DRAM bytes per cycle)"}


def cmd_compile(args) -> int:
    from ..compiler.compile import compile_graph
    from ..compiler.emit import weight_bytes
    from ..compiler.frontend import zoo
    from ..compiler.passes.sparsity import choose_sparsity
    hw = load_hw(args)
    source = Path(args.model)
    if source.suffix == ".onnx":
        graph = _load_onnx_any(source, args.calibration)
    elif zoo.is_zoo_name(args.model):
        graph = _load_zoo_model(args.model, args.input_size, hw.lanes)
    else:
        raise UsageError(f"{args.model!r}: give a quantized .onnx file or a zoo model ({', '.join(zoo.MODELS)}, "
                         "optionally NAME:2of4 or NAME:1of4)")
    sparse = choose_sparsity(graph, hw, args.sparse_exec)
    started = time.perf_counter()
    plan, plan_info = choose_plan(graph, hw, args)
    _log.info("lowering %d layers in %d groups...", len(graph.nodes), len(plan.groups))
    binary = compile_graph(graph, hw, plan, sparse_exec=args.sparse_exec)
    output = Path(args.output)
    binary.write(output)
    plan.write(output.with_suffix(".plan.json"))
    summary = {"binary": str(output), "plan": str(output.with_suffix(".plan.json")), "model": graph.name,
               "layers": len(graph.nodes), "groups": len(plan.groups), "macs": graph.macs, "hw": hw.hash,
               "instructions": sum(s.instructions for s in binary.streams),
               "compile_seconds": round(time.perf_counter() - started, 3),
               "sparse_layers": {name: sparsity.label for name, sparsity in sparse.items()},
               "weight_bytes": weight_bytes(binary),
               **plan_info}
    if args.json:
        print_json(summary)
    else:
        print(f"compiled {graph.name}: {summary['layers']} layers in {summary['groups']} groups, "
              f"{summary['instructions']} instructions -> {output} (plan {summary['plan']}: "
              f"{plan_info['plan_source']})")
    return 0
