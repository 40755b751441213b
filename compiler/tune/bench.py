"""The tuning benchmark over the model zoo: ``python -m dlfusion.compiler.tune.bench``.

Two passes over the models, each a :func:`~.tune.tune` run whose RTL
measurements go through the cache:

1. the oracle (and the ``none`` baseline) of every model: RTL runs of the tiling
   plans, which also calibrate the cost model of the HwConfig;
2. every strategy of every model. The oracle's runs come from the cache, so
   its ``search_seconds`` are those recorded when they were made; ``fusion-only``
   and ``dlfusion`` use a cost model fitted to the *other* models' measurements
   (this model held out). The cost model lives in ``<report>/rules/`` (with a
   copy of the HwConfig's rule), so it is fitted to the bench's models only.

Writes the report (:mod:`.report`) to ``--report`` (default
``build/tune-bench``) and prints the summary table with the targets of the
issue: dlfusion's fraction of the oracle's speedup and the ratio of their
search times.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from ...hw.config import HwConfig
from .cache import MeasurementCache, default_build_dir
from .errors import TuneError
from .executor import EXECUTORS, make_executor
from .oracle import DEFAULT_MAX_GROUP
from .planrun import MeasurementFailed
from .report import comparison_table, summary_rows, write_report
from .rule import rule_path
from .tune import check_inputs, load_model, tune

__all__ = ["BENCH_MODELS", "main"]

#: The zoo of the issue's targets.
BENCH_MODELS = ("resnet18", "resnet50", "mobilenet_v2", "vgg16", "squeezenet1_1")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dlfusion.compiler.tune.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(BENCH_MODELS))
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--hw", help="HwConfig TOML (default: built-in defaults)")
    parser.add_argument("--report", default=str(default_build_dir() / "tune-bench"))
    parser.add_argument("--executor", choices=EXECUTORS, default="local")
    parser.add_argument("--address")
    parser.add_argument("--workers", type=int)
    parser.add_argument("--cache", help="measurement cache (default build/tune-cache)")
    parser.add_argument("--rule-dir", help="rule and cost model directory (default build/tune)")
    parser.add_argument("--max-group", type=int, default=DEFAULT_MAX_GROUP)
    args = parser.parse_args(argv)
    try:
        hw = HwConfig.load(args.hw)
        check_inputs(hw, ["cores-only"], args.rule_dir)
        graphs = [load_model(name, args.input_size, progress=True) for name in args.models]
        executor = make_executor(args.executor, address=args.address, workers=args.workers)
    except TuneError as error:
        print(f"dlfusion: error: {error}", file=sys.stderr)
        return 2
    cache = MeasurementCache(args.cache) if args.cache else MeasurementCache()
    # The bench's own rule directory: the rule copied in, the cost model fitted to the bench's models only,
    # so earlier tune runs on other models (make demo's tiny_cnn) do not change its plans.
    rule_dir = Path(args.report) / "rules"
    rule_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(rule_path(hw, args.rule_dir), rule_path(hw, rule_dir))
    reports = []
    try:
        with executor:
            for graph, source in graphs:
                tune(graph, hw, ["oracle"], executor=executor, cache=cache, source=source, rule_dir=rule_dir,
                     max_group=args.max_group, progress=True)
            for graph, source in graphs:
                report = tune(graph, hw, ["all"], executor=executor, cache=cache, source=source,
                              rule_dir=rule_dir, max_group=args.max_group, progress=True)
                write_report(report, args.report)
                print(comparison_table(report), flush=True)
                reports.append(report)
    except MeasurementFailed as error:
        print(f"dlfusion: error: {error}", file=sys.stderr)
        return error.exit_code
    except TuneError as error:
        print(f"dlfusion: error: {error}", file=sys.stderr)
        return 2
    rows = summary_rows({r["source"]: r for r in reports})
    print(f"\n{'model':14} {'size':>4} {'none':>11} {'dlfusion':>11} {'oracle':>11} {'dlf x':>6} {'orc x':>6} "
          f"{'ceiling':>7} {'of oracle':>9} {'dlf search s':>12} {'oracle search s':>15} {'ratio':>9}")
    for row in rows:
        print(f"{row['model']:14} {row['input_size']:>4} {row['baseline_cycles']:>11,} {row['dlfusion_cycles']:>11,} "
              f"{row['oracle_cycles']:>11,} {row['dlfusion_speedup']:>6.2f} {row['oracle_speedup']:>6.2f} "
              f"{row['ceiling_speedup']:>7.2f} {row['dlfusion_oracle_fraction']:>9.1%} "
              f"{row['dlfusion_search_seconds']:>12.3f} "
              f"{row['oracle_search_seconds']:>15,.0f} {row['search_ratio']:>9,.0f}")
    print(f"report: {Path(args.report) / 'tune-report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
