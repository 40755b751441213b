"""``dlfusion verilog`` writes Verilog that passes ``verilator --lint-only -Wall``.

The only waivers are the narrow ones of :data:`dlfusion.sim.verilator_tool.AMARANTH_WAIVERS`
(Yosys backend constructs and ``$``-named temporaries). The Verilog comes from the CLI, the
path a user takes, and is checked to be the simulated design (``generate_verilog(hw)``) minus
only Amaranth's unread alias wires.
"""

import dataclasses
import re

import pytest
from amaranth.hdl import Module, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from dlfusion.cli import main
from dlfusion.hw.config import HwConfig
from dlfusion.hw.netnames import strip_unused_aliases
from dlfusion.hw.top import TOP_NAME, generate_verilog
from dlfusion.sim.verilator_tool import lint

SMALL = HwConfig(cores=1, pe_rows=4, pe_cols=4, act_lines=2048, weight_blocks=1024, acc_entries=256,
                 param_entries=64, dram_bytes=1 << 20, dram_bytes_per_cycle=4, dram_latency=8)
# Two cores (the barrier and the shared port's arbitration), the shortest latency, minimal queues.
TWO_CORES = HwConfig(cores=2, pe_rows=4, pe_cols=4, act_lines=64, weight_blocks=4, acc_entries=16,
                     param_entries=8, dram_bytes=4096, dram_bytes_per_cycle=1, dram_latency=2,
                     queue_depth=2, fetch_lines=16)
# The lookup-table store absent, of a depth that is not a power of two, and with every table the
# instruction field can name (each elaborates the table check differently).
CONFIGS = {"small": SMALL, "two_cores": TWO_CORES,
           **{f"two_cores_{tables}_tables": dataclasses.replace(TWO_CORES, lut_tables=tables) for tables in (0, 3, 16)}}


@pytest.fixture(scope="module")
def cli_verilog(tmp_path_factory):
    """``dlfusion verilog --hw <config> -o accel.v`` for each configuration: name -> path."""
    root = tmp_path_factory.mktemp("lint")
    paths = {}
    for name, hw in CONFIGS.items():
        toml = root / f"{name}.toml"
        toml.write_text(hw.to_toml())
        paths[name] = root / f"{name}.v"
        assert main(["verilog", "--hw", str(toml), "-o", str(paths[name])]) == 0
    return paths


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cli_verilog_is_lint_clean(cli_verilog, name):
    ok, messages = lint(cli_verilog[name], top=TOP_NAME)
    assert messages == []
    assert ok


def test_cli_verilog_is_the_simulated_design_without_alias_wires(cli_verilog):
    """Every line of the CLI's Verilog is in the simulated Verilog, in order; the other lines of
    the simulated Verilog declare wires that nothing reads, and assign them."""
    linted = cli_verilog["small"].read_text().splitlines()
    simulated = generate_verilog(SMALL).splitlines()
    removed, kept = {}, {}      # module header -> its removed lines, its kept lines
    module, position = None, 0
    for line in simulated:
        if line.startswith("module "):
            module = line
        if position < len(linted) and line == linted[position]:
            kept.setdefault(module, []).append(line)
            position += 1
        else:
            removed.setdefault(module, []).append(line)
    assert position == len(linted), "the CLI's Verilog has lines the simulated Verilog does not"
    assert removed, "nothing was removed"
    for module, lines in removed.items():
        declared, assigned = set(), set()
        for line in lines:
            if re.fullmatch(r"\s*\(\*.*\*\)", line):
                continue
            if match := re.fullmatch(r"\s*wire (?:signed )?(?:\[\d+:0\] )?(\S+)\s*;", line):
                declared.add(match.group(1))
                continue
            match = re.fullmatch(r"\s*assign (\S+)\s*=.*;", line)
            assert match, f"{module}: removed a line that is not a wire, its attribute or its assignment: {line!r}"
            assigned.add(match.group(1))
        assert assigned == declared, module
        # Escaped identifiers (\name) end with a space; the others are words. ".name(" connects
        # a port of a submodule instance, which is not a wire of this module.
        names = set(re.findall(r"(?<![.\w$])(\\\S+|[A-Za-z_][\w$]*)", "\n".join(kept[module])))
        assert not declared & names, f"{module}: a removed wire is still referenced"


class _Example(wiring.Component):
    """A field alias nothing reads, a signal computed but unread, and a partly read one."""

    a: In(8)
    y: Out(4)

    def elaborate(self, platform):
        m = Module()
        pair = Signal(data.StructLayout({"low": 4, "high": 4}))
        unread = Signal(8)
        partly = Signal(8)
        m.d.sync += [pair.eq(self.a), unread.eq(self.a + 1), partly.eq(self.a - 1)]
        m.d.comb += self.y.eq(pair.low ^ partly[:4])
        return m


def test_stripping_keeps_real_lint_findings(tmp_path):
    """Only unread aliases go: unread logic and partly read signals are still reported."""
    from amaranth.back import rtlil, verilog
    text = rtlil.convert(_Example(), name="example", emit_src=False)
    stripped = strip_unused_aliases(text)
    assert "pair.high" in text and "pair.high" not in stripped
    path = tmp_path / "example.v"
    path.write_text(verilog._convert_rtlil_text(stripped))
    ok, messages = lint(path, top="example")
    assert not ok
    reported = sorted(re.search(r"'([^']*)'", message).group(1) for message in messages)
    # pair.low and pair.high are gone, but pair's unread high half is still reported.
    assert reported == ["pair", "partly", "unread"], messages
