"""``dlfusion synth``: the synthesized area of a HwConfig, per block (Yosys).

Exit status: 0 ok, 2 bad input (a missing or malformed HwConfig file: one line naming
what was wrong), 3 Yosys failed or is missing (one line with its last error).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
from pathlib import Path

from ..hw.binary import atomic_write
from .options import add_command, add_hw, add_json, load_hw, print_json, show_progress

__all__ = ["add_commands", "cmd_synth", "format_table", "write_report"]

_log = logging.getLogger(__name__)


def add_commands(sub) -> None:
    p = add_command(sub, "synth", help="synthesize a HwConfig with Yosys: cells, transistors, SRAM bits, area by block",
                    description="Synthesize the accelerator of a HwConfig block by block with Yosys (generic gates, "
                                "no ABC, no timing; memories counted as SRAM macros) and report logic cells by kind, "
                                "transistors, SRAM bits and an area in NAND2 gate equivalents per block and in total. "
                                "Results are cached per HwConfig in build/synth/<hash>/.")
    add_hw(p)
    add_json(p, help="print the result as JSON (hw, hash, area_unit, total, blocks) and no progress")
    p.add_argument("--report", metavar="DIR", help="write synth.json and area.png (area per block) to DIR")
    p.add_argument("--cache", metavar="DIR", help="synthesis cache directory (default: build/synth)")
    p.set_defaults(func=cmd_synth)


def cmd_synth(args) -> int:
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from ..hw.synth import BLOCKS, synthesize
    hw = load_hw(args)
    enabled = show_progress(args) and sys.stderr.isatty()
    # While the bar is drawn, log records go above it (the command line's logger, not the root's).
    redirect = logging_redirect_tqdm([logging.getLogger("dlfusion")]) if enabled else contextlib.nullcontext()
    with tqdm(total=len(BLOCKS), desc="synth", unit="block", file=sys.stderr, disable=not enabled,
              dynamic_ncols=True) as bar, redirect:
        def progress(name, block):
            if block is None:
                bar.set_description(f"synth {name}")
            else:
                bar.update(1)
        _log.info("synthesizing HwConfig %s (%s) with Yosys, block by block", hw.hash, hw.describe())
        report = synthesize(hw, cache_dir=args.cache, progress=progress)
    result = report.to_dict()
    if args.report:
        for path in write_report(result, args.report):
            _log.info("wrote %s", path)
    if args.json:
        print_json(result)
    else:
        print(format_table(result))
    return 0


def format_table(result: dict) -> str:
    """The blocks and the total of a ``synthesize(...).to_dict()``, one line each."""
    total_area = result["total"]["area"] or 1.0
    header = (f"{'block':<13} {'x':>2} {'cells':>10} {'transistors':>12} {'SRAM bits':>12} "
              f"{'area/inst':>12} {'area':>13} {'share':>6}")
    lines = [f"HwConfig {result['hash']} ({result['hw']['cores']} cores, {result['hw']['pe_rows']}x"
             f"{result['hw']['pe_cols']} PEs); area in {result['area_unit']}, SRAM "
             f"{result['sram_ge_per_bit']} GE/bit; {result['tool']}", header, "-" * len(header)]
    for name, block in result["blocks"].items():
        area = block["area"] * block["instances"]
        lines.append(f"{name:<13} {block['instances']:>2} {sum(block['cells'].values()):>10,} "
                     f"{block['transistors']:>12,} {block['sram_bits']:>12,} {block['area']:>12,.0f} "
                     f"{area:>13,.0f} {area / total_area:>6.1%}")
    total = result["total"]
    lines += ["-" * len(header),
              f"{'total':<13} {'':>2} {sum(total['cells'].values()):>10,} {total['transistors']:>12,} "
              f"{total['sram_bits']:>12,} {'':>12} {total['area']:>13,.0f} {1:>6.1%}"]
    return "\n".join(lines)


def write_report(result: dict, out_dir) -> list[Path]:
    """``synth.json`` (the ``--json`` result) and ``area.png`` (each block's area, logic and SRAM)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out_dir = Path(out_dir)
    paths = [out_dir / "synth.json", out_dir / "area.png"]
    atomic_write(paths[0], json.dumps(result, indent=2, sort_keys=True) + "\n")
    names = list(result["blocks"])
    blocks = [result["blocks"][name] for name in names]
    sram = [b["sram_bits"] * result["sram_ge_per_bit"] * b["instances"] for b in blocks]
    logic = [b["area"] * b["instances"] - s for b, s in zip(blocks, sram, strict=True)]
    figure, axis = plt.subplots(figsize=(7, 3.8))
    axis.barh(names, logic, color="#4c72b0", label="logic")
    axis.barh(names, sram, left=logic, color="#dd8452", label="SRAM")
    axis.invert_yaxis()
    axis.set_xlabel("area of all instances, GE (NAND2 equivalents)")
    axis.set_title(f"HwConfig {result['hash']}: {result['total']['area']:,.0f} GE", fontsize=10)
    axis.legend(loc="lower right")
    figure.tight_layout()
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=110)
    plt.close(figure)
    atomic_write(paths[1], image.getvalue())
    return paths
