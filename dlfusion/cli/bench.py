"""``dlfusion bench foundation|scaling|zoo|tune|simspeed``: the benchmarks measured on the RTL (``make bench``).

``foundation``, ``scaling`` and ``zoo`` are :mod:`dlfusion.bench`; ``tune`` is
:mod:`dlfusion.compiler.tune.bench`; ``simspeed`` is :mod:`dlfusion.simspeed`.
Each writes its results to a directory and prints its table on stdout.
"""

from __future__ import annotations

from pathlib import Path

from ..hw.errors import EXIT_MISMATCH
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
from .tune import add_max_group, check_max_group

__all__ = ["add_commands"]

DEFAULT_OUT = "build/bench"


def add_commands(sub) -> None:
    parser = sub.add_parser("bench", help="run an RTL benchmark: foundation, scaling, zoo, sparse, tune or simspeed",
                            description=__doc__.split("\n\n")[0])
    benchmarks = parser.add_subparsers(dest="benchmark", required=True)

    p = add_command(benchmarks, "foundation", help="a compute-bound 3x3 convolution (56x56, 64 -> 64) on one "
                                                   "core: cycles, utilization, golden and numpy agreement, speed")
    add_hw(p)
    _add_out(p)
    p.set_defaults(func=cmd_foundation)

    p = add_command(benchmarks, "scaling", help="four layers split over 1, 2, 4, 8 (16) cores by rows and by "
                                                "channels: speedup, utilization, DRAM traffic, a plot")
    add_hw(p)
    _add_out(p)
    p.add_argument("--max-cores", type=int, default=8, choices=(4, 8, 16),
                   help="largest core count of the scaling study")
    p.set_defaults(func=cmd_scaling)

    p = add_command(benchmarks, "zoo", help="every zoo model under {no fusion, 1 core}, {no fusion, all cores}, "
                                            "{max fusion, all cores}: cycles against the roofline bound")
    add_hw(p)
    _add_out(p)
    p.add_argument("--models", nargs="*", default=None, help="these models only")
    add_simulation_options(p, cache=False, rule_dir=False)
    p.set_defaults(func=cmd_zoo)

    from ..compiler.tune.bench import BENCH_INPUT_SIZE, BENCH_MODELS
    from ..compiler.tune.cache import default_build_dir
    p = add_command(benchmarks, "tune", help="every tuning strategy on the zoo, the oracles first: dlfusion's "
                                             "fraction of the oracle's speedup and their search times")
    p.add_argument("--models", nargs="+", default=list(BENCH_MODELS))
    p.add_argument("--input-size", type=int, default=BENCH_INPUT_SIZE)
    add_hw(p)
    p.add_argument("--report", metavar="DIR", default=str(default_build_dir() / "tune-bench"),
                   help="the report's directory (default: build/tune-bench)")
    add_simulation_options(p)
    add_max_group(p)
    p.set_defaults(func=cmd_tune_bench)

    p = add_command(benchmarks, "sparse", help="N:M sparsity on the RTL: a 3x3 conv, an FC layer, ResNet-50 and "
                                               "MobileNetV2 dense vs 2:4 vs 1:4 on the same pruned weights")
    add_hw(p)
    _add_out(p)
    p.add_argument("--layers-only", action="store_true", help="the two layers, no networks")
    add_simulation_options(p, cache=False)
    p.set_defaults(func=cmd_sparse)

    p = add_command(benchmarks, "simspeed", help="simulated cycles per second of whole programs on the RTL "
                                                 "(dlfusion run as a process), against the bare MAC array")
    add_hw(p)
    _add_out(p)
    p.add_argument("--reference-only", action="store_true", help="measure the bare MAC array only")
    p.add_argument("--reference-cycles", type=int, default=None, metavar="N",
                   help="cycles of the bare MAC array run (default: about 5 s of simulation)")
    add_json(p)
    p.set_defaults(func=cmd_simspeed)


def _add_out(parser) -> None:
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"directory for the results (default: {DEFAULT_OUT})")


def cmd_foundation(args) -> int:
    from ..bench import foundation, foundation_summary
    result = foundation(load_hw(args), Path(args.out))
    print(foundation_summary(result))
    return 0 if result["matches_reference"] and result["rtl_equals_golden"] else EXIT_MISMATCH


def cmd_scaling(args) -> int:
    from ..bench import scaling, scaling_table
    counts = tuple(c for c in (1, 2, 4, 8, 16) if c <= args.max_cores)
    report = scaling(load_hw(args), Path(args.out), counts)
    print(scaling_table(report["rows"]))
    return 0


def cmd_zoo(args) -> int:
    from ..bench import zoo_bench, zoo_table
    hw = load_hw(args)
    with make_executor(args) as executor:
        report = zoo_bench(hw, Path(args.out), args.models, executor=executor, progress=show_progress(args))
    print(zoo_table(report["rows"]))
    return 0


def cmd_tune_bench(args) -> int:
    from ..compiler.tune.bench import tune_bench
    from ..compiler.tune.report import comparison_table, summary_rows, summary_table
    from ..compiler.tune.tune import check_inputs, load_model
    check_max_group(args)
    hw = load_hw(args)
    # Everything checked before the first measurement (the rule, the models).
    check_inputs(hw, ["cores-only"], args.rule_dir)
    graphs = [load_model(name, args.input_size) for name in args.models]
    with make_executor(args) as executor:
        reports = tune_bench(hw, graphs, args.report, executor=executor, cache=measurement_cache(args),
                             rule_dir=args.rule_dir, max_group=args.max_group, progress=show_progress(args))
    for report in reports:
        print(comparison_table(report))
    print()
    print(summary_table(summary_rows({r["source"]: r for r in reports})))
    print(f"report: {Path(args.report) / 'tune-report.md'}")
    return 0


def cmd_sparse(args) -> int:
    from ..sparsebench import sparse_bench, sparse_tables
    hw = load_hw(args)
    with make_executor(args) as executor:
        report = sparse_bench(hw, Path(args.out) / "sparse", layers_only=args.layers_only, executor=executor,
                              rule_dir=args.rule_dir, progress=show_progress(args))
    print(sparse_tables(report))
    return 0


def cmd_simspeed(args) -> int:
    from .. import simspeed
    if args.reference_cycles is not None and args.reference_cycles < 1:
        raise UsageError(f"--reference-cycles must be at least 1, not {args.reference_cycles}")
    report = simspeed.simspeed(load_hw(args), Path(args.out) / "simspeed", args.hw,
                               programs=() if args.reference_only else simspeed.PROGRAMS,
                               reference_cycles=args.reference_cycles)
    if args.json:
        print_json(report)
    else:
        print(simspeed.simspeed_table(report))
    return 0
