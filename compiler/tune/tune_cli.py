"""``dlfusion tune``: the command line of :func:`~.tune.tune`.

Exit status: 0 ok, 2 bad input (unknown model or strategy, an input size below
the model's minimum, a missing rule or cost model: a one-line message naming
what was wrong, nothing written), 3 an RTL run failed, 4 a network output
differed from its reference.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ...hw.config import HwConfig, HwConfigError
from .errors import TuneError
from .executor import EXECUTORS
from .oracle import DEFAULT_MAX_GROUP
from .strategies import STRATEGIES

__all__ = ["add_tune_command", "cmd_tune", "plan_paths"]


def add_tune_command(sub) -> None:
    """Add ``tune`` to ``sub`` (an ``argparse`` subparsers object)."""
    p = sub.add_parser(
        "tune", help="plan a model with the tuning strategies and compare their plans on the RTL",
        description="Plan MODEL (a zoo model or a quantized .onnx) with the strategies: none (every layer alone on "
                    "one core), cores-only (the characterized rule's core count and split per layer), fusion-only "
                    "(fusion groups on one core where the cost model says they pay), dlfusion (both jointly), "
                    "oracle (the best plan of contiguous groups measured on the RTL); run every plan on the RTL "
                    "and report cycles, speedup over none, search time and the plans.")
    p.add_argument("model", help="zoo model name (dlfusion models) or a quantized .onnx file")
    p.add_argument("--strategy", action="append", metavar="NAME",
                   help=f"{'|'.join(STRATEGIES)}|all (repeatable; default: dlfusion)")
    p.add_argument("--input-size", type=int, help="zoo model input size (default: the model's own, 224 for most)")
    p.add_argument("--hw", help="HwConfig TOML file (default: built-in defaults)")
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local process pool, or Ray tasks (a cluster with --address, else a local Ray instance)")
    p.add_argument("--address", help="Ray cluster address (--executor ray)")
    p.add_argument("--workers", type=int, help="parallel RTL runs (local; default: the CPU count)")
    p.add_argument("--cache", help="measurement cache directory (default: build/tune-cache)")
    p.add_argument("--rule-dir", help="where the rule and the cost model live (default: build/tune)")
    p.add_argument("--max-group", type=int, default=DEFAULT_MAX_GROUP,
                   help=f"longest group of the oracle's space and the fusion search (default {DEFAULT_MAX_GROUP})")
    p.add_argument("--report", metavar="DIR", help="write (or add this model to) a markdown + JSON + PNG report")
    p.add_argument("-o", "--output", help="plan file (one strategy); with several, <stem>.<strategy>.plan.json "
                                          "beside it (default: DIR of --report, else build/tune/plans)")
    p.add_argument("--json", action="store_true", help="print the result as JSON (and no progress)")
    p.set_defaults(func=cmd_tune)


def _error(message: str) -> None:
    print(f"dlfusion: error: {message}", file=sys.stderr)


def plan_paths(source: str, strategies: list[str], output: str | None, report_dir: str | None) -> dict[str, Path]:
    """Where each strategy's plan file goes (see ``--output``)."""
    from .tune import default_plan_dir
    stem = source.replace("@", "-")
    if output is not None:
        base = Path(output)
        if len(strategies) == 1:
            return {strategies[0]: base}
        name = base.name.removesuffix(".json").removesuffix(".plan")
        return {s: base.with_name(f"{name}.{s}.plan.json") for s in strategies}
    directory = Path(report_dir) if report_dir is not None else default_plan_dir()
    return {s: directory / f"{stem}.{s}.plan.json" for s in strategies}


def cmd_tune(args) -> int:
    from .cache import MeasurementCache
    from .executor import make_executor
    from .planrun import MeasurementFailed
    from .tune import load_model, resolve_strategies, tune
    try:
        strategies = resolve_strategies(args.strategy or ["dlfusion"])
        if args.max_group < 1:
            raise TuneError(f"--max-group must be at least 1, not {args.max_group}")
        hw = HwConfig.load(args.hw)
        from .tune import check_inputs
        check_inputs(hw, strategies, args.rule_dir)
        graph, source = load_model(args.model, args.input_size, progress=not args.json)
        executor = make_executor(args.executor, address=args.address, workers=args.workers)
    except (TuneError, HwConfigError) as error:
        _error(str(error))
        return 2
    try:
        with executor:
            report = tune(graph, hw, strategies, executor=executor,
                          cache=MeasurementCache(args.cache) if args.cache else MeasurementCache(),
                          source=source, rule_dir=args.rule_dir, max_group=args.max_group,
                          progress=not args.json)
    except MeasurementFailed as error:
        _error(str(error))
        return error.exit_code
    except TuneError as error:
        _error(str(error))
        return 2
    paths = plan_paths(source, list(report["strategies"]) if len(strategies) > 1 else strategies, args.output,
                       args.report)
    from ...hw.binary import atomic_write
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
        from .report import write_report
        written = write_report(report, args.report)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
        return 0
    from .report import comparison_table
    print(comparison_table(report))
    print(f"plans: {', '.join(str(p) for p in paths.values())}")
    if written:
        print(f"report: {written[1]} ({len(written)} files)")
    return 0
