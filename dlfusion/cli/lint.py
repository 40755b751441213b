"""``dlfusion lint``: Verilator's ``--lint-only -Wall`` with the waivers of Amaranth's generated Verilog."""

from __future__ import annotations

import collections
import re
from pathlib import Path

from .options import UsageError, add_command

__all__ = ["add_commands", "cmd_lint"]

#: Exit status of a lint that reported something (as Verilator's own).
EXIT_FINDINGS = 1


def add_commands(sub) -> None:
    p = add_command(sub, "lint", help="verilator --lint-only -Wall with the Amaranth generator waivers "
                                      "(make lint: on the Verilog of dlfusion verilog)")
    p.add_argument("files", nargs="+", metavar="FILE.v")
    p.add_argument("--top", default=None, help="top module (default: Verilator's choice)")
    p.add_argument("--no-waivers", action="store_true", help="lint with no waiver at all")
    p.add_argument("--show", type=int, default=20, help="print at most this many messages")
    p.set_defaults(func=cmd_lint)


def cmd_lint(args) -> int:
    from ..sim.verilator_tool import AMARANTH_WAIVERS, lint
    missing = [name for name in args.files if not Path(name).is_file()]
    if missing:
        raise UsageError(f"no such Verilog file(s): {', '.join(missing)}")
    ok, messages = lint(*args.files, top=args.top, waivers=None if args.no_waivers else AMARANTH_WAIVERS)
    by_rule = collections.Counter(re.match(r"%(\w+(?:-\w+)?)", m).group(1) for m in messages)
    for message in messages[:args.show]:
        print(message)
    summary = ", ".join(f"{count} {rule}" for rule, count in by_rule.most_common()) or "clean"
    print(f"verilator --lint-only -Wall: {summary}")
    return 0 if ok else EXIT_FINDINGS
