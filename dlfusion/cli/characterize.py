"""``dlfusion characterize``: synthesized layers on the RTL at every core count and split; the fitted rule."""

from __future__ import annotations

from ..compiler.tune.characterize import GRIDS
from .options import (
    add_command,
    add_hw,
    add_json,
    add_simulation_options,
    load_hw,
    make_executor,
    print_json,
    show_progress,
)

__all__ = ["add_commands", "cmd_characterize"]


def add_commands(sub) -> None:
    p = add_command(
        sub, "characterize", help="measure synthesized layers on the RTL at every core count and split; fit the rule",
        description="Run convolutions (1x1, 3x3), depthwise convolutions and fully connected layers of many "
                    "sizes on the RTL at every core count and both split axes, check every output against its "
                    "numpy reference, write the dataset (CSV) and plots, and fit the decision rule the tuner "
                    "uses (stored per HwConfig).")
    add_hw(p)
    p.add_argument("--grid", choices=tuple(GRIDS), default="small",
                   help="small: about 30 tiny layers (CI); full: network-sized layers at every core count")
    p.add_argument("--out", help="directory for the CSV, plots, summary and a copy of the rule "
                                 "(default: build/characterize/<HwConfig hash>)")
    add_simulation_options(p, rule_dir_help="where the tuner looks rules up (default: build/tune)")
    add_json(p, help="print the summary as JSON (and no progress)")
    p.set_defaults(func=cmd_characterize)


def cmd_characterize(args) -> int:
    from ..compiler.tune.cache import MeasurementCache
    from ..compiler.tune.characterize import characterize
    hw = load_hw(args)
    with make_executor(args) as executor:
        summary = characterize(hw, grid=args.grid, out_dir=args.out, executor=executor,
                               cache=MeasurementCache(args.cache) if args.cache else None,
                               rule_dir=args.rule_dir, progress=show_progress(args))
    if args.json:
        print_json(summary)
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
