"""``dlfusion tune``: plan a model with the tuning strategies and compare their plans on the RTL.

Exit status: 0 ok, 2 bad input (unknown model or strategy, an input size below
the model's minimum, a missing rule or cost model: a one-line message naming
what was wrong, nothing written), 3 an RTL run failed, 4 a network output
differed from its reference.
"""

from __future__ import annotations

import json

from ..compiler.tune.oracle import DEFAULT_MAX_GROUP
from ..compiler.tune.strategies import STRATEGIES
from .options import (
    UsageError,
    add_command,
    add_hw,
    add_json,
    add_simulation_options,
    load_hw,
    make_executor,
    measurement_cache,
    print_json,
    show_progress,
)

__all__ = ["add_commands", "add_max_group", "cmd_tune"]


def add_max_group(parser) -> None:
    parser.add_argument("--max-group", type=int, default=DEFAULT_MAX_GROUP,
                        help=f"longest group of the oracle's space and the fusion search (default {DEFAULT_MAX_GROUP})")


def check_max_group(args) -> None:
    if args.max_group < 1:
        raise UsageError(f"--max-group must be at least 1, not {args.max_group}")


def add_commands(sub) -> None:
    p = add_command(
        sub, "tune", help="plan a model with the tuning strategies and compare their plans on the RTL",
        description="Plan MODEL (a zoo model or a quantized .onnx) with the strategies: none (every layer alone on "
                    "one core), cores-only (the characterized rule's core count and split per layer), fusion-only "
                    "(fusion groups on one core where the cost model says they pay), dlfusion (both jointly), "
                    "oracle (the best plan of contiguous groups measured on the RTL); run every plan on the RTL "
                    "and report cycles, speedup over none, search time and the plans.")
    p.add_argument("model", help="zoo model name (dlfusion models) or a quantized .onnx file")
    p.add_argument("--strategy", action="append", metavar="NAME",
                   help=f"{'|'.join(STRATEGIES)}|all (repeatable; default: dlfusion)")
    p.add_argument("--input-size", type=int, help="zoo model input size (default: the model's own, 224 for most)")
    add_hw(p)
    add_simulation_options(p)
    add_max_group(p)
    p.add_argument("--report", metavar="DIR", help="write (or add this model to) a markdown + JSON + PNG report")
    p.add_argument("-o", "--output", help="plan file (one strategy); with several, <stem>.<strategy>.plan.json "
                                          "beside it (default: DIR of --report, else build/tune/plans)")
    add_json(p)
    p.set_defaults(func=cmd_tune)


def cmd_tune(args) -> int:
    from ..compiler.tune.tune import check_inputs, load_model, plan_paths, resolve_strategies, tune
    from ..hw.binary import atomic_write
    # Everything checked before the first measurement: bad input writes nothing.
    strategies = resolve_strategies(args.strategy or ["dlfusion"])
    check_max_group(args)
    hw = load_hw(args)
    check_inputs(hw, strategies, args.rule_dir)
    with make_executor(args) as executor:      # its options are checked before the model is exported
        graph, source = load_model(args.model, args.input_size)
        report = tune(graph, hw, strategies, executor=executor, cache=measurement_cache(args), source=source,
                      rule_dir=args.rule_dir, max_group=args.max_group, progress=show_progress(args))
    paths = plan_paths(source, list(report["strategies"]) if len(strategies) > 1 else strategies, args.output,
                       args.report)
    for name, path in paths.items():
        atomic_write(path, json.dumps(report["strategies"][name]["plan"], indent=2) + "\n")
        report["strategies"][name]["plan_file"] = str(path)
    # The headline: the one strategy asked for, else dlfusion (or the last one run).
    headline = strategies[0] if len(strategies) == 1 else ("dlfusion" if "dlfusion" in strategies else strategies[-1])
    chosen = report["strategies"][headline]
    report.update(strategy=headline, cycles=chosen["cycles"], speedup=chosen["speedup"],
                  search_seconds=chosen["search_seconds"], plan=chosen["plan"], plan_file=chosen["plan_file"])
    written = []
    if args.report:
        from ..compiler.tune.report import write_report
        written = write_report(report, args.report)
    if args.json:
        print_json(report)
        return 0
    from ..compiler.tune.report import comparison_table
    print(comparison_table(report))
    print(f"plans: {', '.join(str(p) for p in paths.values())}")
    if written:
        print(f"report: {written[1]} ({len(written)} files)")
    return 0
