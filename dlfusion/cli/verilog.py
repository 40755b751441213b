"""``dlfusion verilog``: the accelerator's Verilog for a HwConfig."""

from __future__ import annotations

import logging

from ..hw.binary import atomic_write
from .options import add_command, add_hw, load_hw

__all__ = ["add_commands", "cmd_verilog"]

_log = logging.getLogger(__name__)


def add_commands(sub) -> None:
    p = add_command(sub, "verilog", help="write the accelerator's Verilog for a HwConfig")
    add_hw(p)
    p.add_argument("-o", "--output", required=True, help="Verilog file to write")
    p.add_argument("--no-clock-gating", dest="clock_gating", action="store_false",
                   help="every unit on the one clock (for FPGA flows); by default each unit's clock is "
                        "gated while the unit is idle (same cycles)")
    p.set_defaults(func=cmd_verilog)


def cmd_verilog(args) -> int:
    from ..hw.top import generate_verilog
    hw = load_hw(args)
    # Without Amaranth's unread alias wires (simulation builds keep them): lint-clean Verilog.
    text = generate_verilog(hw, debug_names=False, clock_gating=args.clock_gating)
    atomic_write(args.output, text)
    _log.info("wrote %s: %s (HwConfig %s)", args.output, hw.describe(), hw.hash)
    return 0
