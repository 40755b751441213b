"""The tuner's commands on the ``dlfusion`` command line: ``dlfusion characterize``.

:func:`add_commands` registers them on the main parser's subparsers; each
command returns the process exit status (0 ok, 2 bad input, 3 a measurement
failed, 4 an output did not match its reference).
"""

from __future__ import annotations

import json
import sys

from ...hw.config import HwConfig
from .characterize import GRIDS, CharacterizationError, characterize
from .errors import TuneError
from .executor import EXECUTORS, make_executor

__all__ = ["add_commands", "cmd_characterize"]


def add_commands(sub) -> None:
    """Add the tuner's subcommands to ``sub`` (an ``argparse`` subparsers object)."""
    p = sub.add_parser(
        "characterize", help="measure synthesized layers on the RTL at every core count and split; fit the rule",
        description="Run convolutions (1x1, 3x3), depthwise convolutions and fully connected layers of many "
                    "sizes on the RTL at every core count and both split axes, check every output against its "
                    "numpy reference, write the dataset (CSV) and plots, and fit the decision rule the tuner "
                    "uses (stored per HwConfig).")
    p.add_argument("--hw", help="HwConfig TOML file (default: built-in defaults)")
    p.add_argument("--grid", choices=tuple(GRIDS), default="small",
                   help="small: about 30 tiny layers (CI); full: network-sized layers at every core count")
    p.add_argument("--out", help="directory for the CSV, plots, summary and a copy of the rule "
                                 "(default: build/characterize/<HwConfig hash>)")
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local process pool, or Ray tasks (a cluster with --address, else a local Ray instance)")
    p.add_argument("--address", help="Ray cluster address (--executor ray)")
    p.add_argument("--workers", type=int, help="parallel RTL runs (local; default: the CPU count)")
    p.add_argument("--cache", help="measurement cache directory (default: build/tune-cache)")
    p.add_argument("--rule-dir", help="where the tuner looks rules up (default: build/tune)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON (and no progress)")
    p.set_defaults(func=cmd_characterize)

    from .tune_cli import add_tune_command
    add_tune_command(sub)


def _error(message: str) -> None:
    print(f"dlfusion: error: {message}", file=sys.stderr)


def cmd_characterize(args) -> int:
    from .cache import MeasurementCache
    hw = HwConfig.load(args.hw)
    try:
        executor = make_executor(args.executor, address=args.address, workers=args.workers)
        with executor:
            summary = characterize(hw, grid=args.grid, out_dir=args.out, executor=executor,
                                   cache=MeasurementCache(args.cache) if args.cache else None,
                                   rule_dir=args.rule_dir, progress=not args.json)
    except CharacterizationError as error:
        _error(str(error))
        return error.exit_code
    except TuneError as error:
        _error(str(error))
        return 2
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
        return 0
    print(f"characterized {summary['layers']} layers ({summary['grid']} grid), {summary['runs']} RTL runs "
          f"({summary['measured']} measured, {summary['cached']} from the cache) in {summary['wall_seconds']:.0f} s")
    print(f"{'kind':10} {'layers':>6} {'optimal':>8} {'mean regret':>12} {'total regret':>13} "
          f"{'held-out optimal':>17} {'best fixed choice':>22}")
    for kind, figures in summary["accuracy"].items():
        cores, split = figures["best_fixed_choice"]
        fixed = f"{cores} x {split} ({figures['fixed_mean_regret']:.1%})"
        held_out = figures.get("loo_optimal_fraction")
        print(f"{kind:10} {figures['layers']:>6} {figures['optimal_fraction']:>8.1%} "
              f"{figures['mean_regret']:>12.2%} {figures['total_regret']:>13.2%} "
              f"{'-' if held_out is None else format(held_out, '.1%'):>17} "
              f"{fixed:>22}")
    print("rule:\n" + summary["rule_text"])
    print(f"wrote {summary['csv']}, {', '.join(summary['plots'])}; rule {summary['rule']}")
    return 0
