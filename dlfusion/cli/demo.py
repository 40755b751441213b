"""``dlfusion demo``: a convolution on the RTL and the golden simulator, then a zoo model tuned on the RTL."""

from __future__ import annotations

import logging

import numpy as np

from ..hw.config import HwConfig
from ..hw.errors import EXIT_MISMATCH
from .layer import layer_report
from .options import add_command, add_hw, add_simulation_options, load_hw, make_executor, show_progress
from .run import run_backend

__all__ = ["add_commands", "cmd_demo"]

_log = logging.getLogger(__name__)


def add_commands(sub) -> None:
    p = add_command(sub, "demo", help="run a convolution on the RTL and the golden simulator, then tune a zoo "
                                      "model with every strategy on the RTL and print the comparison")
    add_hw(p)
    p.add_argument("--h", type=int, default=28)
    p.add_argument("--w", type=int, default=28)
    p.add_argument("--c", type=int, default=64)
    p.add_argument("--model", default="tiny_cnn", help="zoo model the tuning part runs (default tiny_cnn)")
    p.add_argument("--input-size", type=int, default=32, help="its input size (default 32)")
    add_simulation_options(p, cache=False, rule_dir=False)
    p.add_argument("--no-tune", action="store_true", help="only the convolution")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from ..compiler import layers
    hw = load_hw(args)
    print(f"dlfusion demo 1/2: one 3x3 convolution ({args.h}x{args.w}, {args.c} -> {args.c} channels) split by "
          f"output rows over {hw.cores} core(s) of {hw.describe()}", flush=True)
    case = layers.build_conv(hw, h=args.h, w=args.w, cin=args.c, cout=args.c, k=3, seed=1, cores=hw.cores,
                             split="rows")
    golden = run_backend(case.binary, case.inputs, "golden")
    _log.info("golden simulator: done")
    rtl = run_backend(case.binary, case.inputs, "rtl")
    rows = [layer_report(case, result) for result in (golden, rtl)]
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
        return EXIT_MISMATCH
    if args.no_tune:
        return 0
    return _demo_tune(args, hw)


def _demo_tune(args, hw: HwConfig) -> int:
    """Every tuning strategy on a zoo model, measured on the RTL: the comparison table."""
    from ..compiler.tune import TuneError
    from ..compiler.tune.cache import MeasurementCache, default_build_dir
    from ..compiler.tune.report import comparison_table, write_report
    from ..compiler.tune.rule import load_rule
    from ..compiler.tune.tune import load_model, tune
    print(f"\ndlfusion demo 2/2: tuning {args.model} at {args.input_size}x{args.input_size} with every strategy "
          "(none, cores-only, fusion-only, dlfusion, oracle); every plan runs on the RTL", flush=True)
    progress = show_progress(args)
    try:
        load_rule(hw)
    except TuneError:
        # The demo characterizes automatically (dlfusion tune asks for it instead): the small grid, a few minutes.
        from ..compiler.tune.characterize import characterize
        _log.info("no decision rule for HwConfig %s yet: characterizing the small grid on the RTL first "
                  "(dlfusion characterize --grid small; a few minutes, cached)", hw.hash)
        with make_executor(args) as executor:
            characterize(hw, grid="small", executor=executor, progress=progress)
    graph, source = load_model(args.model, args.input_size)
    with make_executor(args) as executor:
        report = tune(graph, hw, ["all"], executor=executor, cache=MeasurementCache(), source=source,
                      progress=progress)
    written = write_report(report, default_build_dir() / "demo")
    print(comparison_table(report))
    print(f"report: {written[1]}")
    return 0
