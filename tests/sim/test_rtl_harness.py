"""Mechanics of the RTL harness (sim/rtl.py, sim/tb_top.sv, sim/cocotb_bench.py,
sim/verilator_tool.py) on tiny mock accelerators with the ``dlfusion_accel`` ports.

The mocks exist only to exercise the harness: image load, region dumps, output
placement, status/counter decoding, the harness watchdog, build caching, FST
waves and the lint. Each Verilator build of a mock takes ~20-30 s; builds are
shared through module-scoped fixtures.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from amaranth import Module, Signal
from amaranth.back import verilog
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from dlfusion.hw.binary import Binary, Segment, Stream, Tensor
from dlfusion.hw.config import HwConfig
from dlfusion.hw.isa import ErrorCode
from dlfusion.sim import verilator_tool
from dlfusion.sim.result import COUNTER_NAMES
from dlfusion.sim.rtl import (
    TB_SOURCE,
    RtlBuildError,
    RtlSimulationError,
    RtlSimulator,
    read_barrier_log,
    read_region_hex,
    write_image_hex,
)

pytestmark = pytest.mark.rtl

# Small DRAM keeps the Verilated model (and its zero fill) small; 2 cores exercise
# the per-core prog_addr / counters packing.
HW = HwConfig(cores=2, pe_rows=16, pe_cols=16, dram_bytes=1 << 20)
L = HW.lanes
COPY_LINES = 12
DST_OFFSET = 5000          # mock copies core c's lines [p, p+12) to [p+5000, p+5012)
COUNTER_BASE = 1 << 40     # counters use the upper bits too (48-bit fields)


# -- mock accelerators ------------------------------------------------------------------------

def _ports(hw: HwConfig) -> dict:
    memory = wiring.Signature({"addr": Out(32), "re": Out(1), "we": Out(1),
                               "wdata": Out(8 * hw.lanes), "rdata": In(8 * hw.lanes)})
    return {"start": In(1), "core_mask": In(hw.cores), "prog_addr": In(32 * hw.cores),
            "mem": Out(memory), "done": Out(1), "error_code": Out(4), "error_core": Out(4),
            "error_pc": Out(32), "cycles": Out(48), "counters": Out(48 * 7 * hw.cores),
            "barrier_go": Out(hw.cores)}


class CopyMock(wiring.Component):
    """On start, for each core c in core_mask (in order): copy COPY_LINES lines from
    prog_addr[c] to prog_addr[c] + DST_OFFSET through the memory port (read, then write
    the next cycle), then raise done. Counter k of core c reads
    ``COUNTER_BASE * (c + 1) + 16 * k + (lines copied by c)``; ``barrier_go`` bit c pulses
    in the cycle after core c's last copy."""

    def __init__(self, hw: HwConfig):
        self.hw = hw
        super().__init__(_ports(hw))

    def elaborate(self, platform):
        m = Module()
        cores = self.hw.cores
        mask = Signal(cores)
        addrs = Signal(32 * cores)
        core = Signal(range(cores + 1))
        line = Signal(range(COPY_LINES + 1))
        copied = [Signal(8, name=f"copied{c}") for c in range(cores)]
        count = self.cycles
        base = Signal(32)
        m.d.comb += base.eq(addrs.word_select(core, 32))
        for c in range(cores):
            for k in range(7):
                m.d.comb += self.counters.word_select(7 * c + k, 48).eq(
                    COUNTER_BASE * (c + 1) + 16 * k + copied[c])
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [mask.eq(self.core_mask), addrs.eq(self.prog_addr), core.eq(0),
                                 line.eq(0), count.eq(0), self.done.eq(0)]
                    m.d.sync += [c.eq(0) for c in copied]
                    m.next = "NEXT"
            with m.State("NEXT"):
                m.d.sync += count.eq(count + 1)
                with m.If(core == cores):
                    m.d.sync += self.done.eq(1)
                    m.next = "IDLE"
                with m.Elif(~mask.bit_select(core, 1) | (line == COPY_LINES)):
                    m.d.sync += [core.eq(core + 1), line.eq(0)]
                    with m.If(line == COPY_LINES):
                        m.d.comb += self.barrier_go.eq(1 << core)
                with m.Else():
                    m.d.comb += [self.mem.addr.eq(base + line), self.mem.re.eq(1)]
                    m.next = "WRITE"
            with m.State("WRITE"):
                m.d.sync += count.eq(count + 1)
                m.d.comb += [self.mem.addr.eq(base + line + DST_OFFSET), self.mem.we.eq(1),
                             self.mem.wdata.eq(self.mem.rdata)]
                m.d.sync += line.eq(line + 1)
                with m.Switch(core):
                    for c in range(cores):
                        with m.Case(c):
                            m.d.sync += copied[c].eq(copied[c] + 1)
                m.next = "NEXT"
        return m


class FaultMock(wiring.Component):
    """Never touches memory. On start: if bit 31 of core 0's prog_addr is set, report
    the error encoded in its low bits after 20 cycles (code [3:0], core [7:4],
    pc [30:8]); otherwise never raise done (the harness watchdog must end the run)."""

    def __init__(self, hw: HwConfig):
        self.hw = hw
        super().__init__(_ports(hw))

    def elaborate(self, platform):
        m = Module()
        count = self.cycles
        running = Signal()
        fault = Signal(32)
        m.d.comb += self.counters.eq(self.core_mask.replicate(48 * 7))
        m.d.comb += [self.mem.addr.eq(0), self.mem.re.eq(0), self.mem.we.eq(0),
                     self.mem.wdata.eq(self.mem.rdata)]
        with m.If(self.start):
            m.d.sync += [running.eq(1), count.eq(0), fault.eq(self.prog_addr[:32]),
                         self.done.eq(0), self.error_code.eq(0)]
        with m.Elif(running):
            m.d.sync += count.eq(count + 1)
            with m.If(fault[31] & (count == 20)):
                m.d.sync += [running.eq(0), self.done.eq(1), self.error_code.eq(fault[:4]),
                             self.error_core.eq(fault[4:8]), self.error_pc.eq(fault[8:31])]
        # keep every prog_addr bit used (lint): fold the other cores' words into nothing visible
        unused = Signal()
        m.d.comb += unused.eq(self.prog_addr[32:].any())
        return m


def _verilog(component) -> str:
    return verilog.convert(component, name="dlfusion_accel", emit_src=False)


# -- binaries for the mocks -------------------------------------------------------------------------

def _copy_binary(hw, sources: dict[int, int], rng) -> tuple[Binary, dict[int, bytes]]:
    """Streams at ``sources`` (core -> line) holding random bytes; outputs at the copies."""
    streams, segments, outputs, data = [], [], [], {}
    for core, line in sources.items():
        payload = rng.integers(0, 256, COPY_LINES * hw.lanes, dtype=np.uint8).tobytes()
        data[core] = payload
        streams.append(Stream(core, line, COPY_LINES))
        segments.append(Segment(f"core{core}", line, payload))
        outputs.append(Tensor(f"out{core}", line + DST_OFFSET, (COPY_LINES * hw.lanes,), "uint8", "flat"))
    return Binary(hw, streams, segments, outputs=outputs), data


# -- fixtures -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def build_root(tmp_path_factory):
    return tmp_path_factory.mktemp("rtl-builds")


@pytest.fixture(scope="module")
def copy_verilog():
    return _verilog(CopyMock(HW))


@pytest.fixture(scope="module")
def copy_sim(build_root, copy_verilog):
    sim = RtlSimulator(HW, build_dir=build_root / "copy", verilog=copy_verilog)
    sim.build()
    return sim


@pytest.fixture(scope="module")
def fault_sim(build_root):
    sim = RtlSimulator(HW, build_dir=build_root / "fault", verilog=_verilog(FaultMock(HW)))
    sim.build()
    return sim


# -- pure-Python file formats (no simulator) ------------------------------------------------------

def test_hex_image_and_dump_formats(tmp_path):
    rng = np.random.default_rng(0)
    dram = rng.integers(0, 256, 64 * L, dtype=np.uint8)
    path = tmp_path / "image.hex"
    # overlapping and adjacent ranges merge; the file is "@addr" + one line of 2L hex digits each
    assert write_image_hex(path, dram, [(3, 4), (5, 4), (9, 1), (40, 2)], L) == 9
    text = path.read_text().splitlines()
    assert text[0] == "@3" and text[8] == "@28" and len(text) == 11
    assert text[1] == dram[3 * L:4 * L][::-1].tobytes().hex()       # byte 0 in bits [7:0]
    # a $writememh-style dump (no address lines) decodes back to the bytes
    dump = tmp_path / "region.hex"
    dump.write_text("".join(line + "\n" for line in text[1:8]))
    assert read_region_hex(dump, 7, L) == dram[3 * L:10 * L].tobytes()


def test_barrier_log_format(tmp_path):
    log = tmp_path / "barriers.txt"
    log.write_text("25 2 12 12\n40 3 100 7\n")
    assert read_barrier_log(log) == [
        {"cycle": 25, "cores": 2, "dram_read_lines": 12, "dram_write_lines": 12},
        {"cycle": 40, "cores": 3, "dram_read_lines": 100, "dram_write_lines": 7}]
    log.write_text("25 2 12\n")
    with pytest.raises(RtlSimulationError, match=r"barriers.txt:1: expected 'cycle mask reads writes', got '25 2 12'"):
        read_barrier_log(log)


# -- simulations -------------------------------------------------------------------------------------

def test_image_loads_and_dumps_back_bit_exact(copy_sim):
    rng = np.random.default_rng(1)
    # far apart, unaligned, one near the end of DRAM; both cores
    sources = {0: 1, 1: HW.dram_lines - DST_OFFSET - COPY_LINES}
    binary, data = _copy_binary(HW, sources, rng)
    # a large random segment read straight back by the dump (load -> DRAM -> $writememh)
    blob = rng.integers(0, 256, 3000 * L - 5, dtype=np.uint8).tobytes()   # ragged last line
    binary.segments.append(Segment("blob", 20011, blob))
    binary.outputs.append(Tensor("blob", 20011, (len(blob),), "uint8", "flat"))
    result = copy_sim.run(binary, {})
    assert result.backend == "rtl" and result.error is None
    for core, payload in data.items():
        out = result.outputs[f"out{core}"]
        assert out.dtype == np.uint8 and out.tobytes() == payload
    assert result.outputs["blob"].tobytes() == blob
    assert result.image_lines == 2 * COPY_LINES + 3000
    # both cores' barrier pulses, the second after both copies
    assert [(e["cores"], e["dram_read_lines"], e["dram_write_lines"]) for e in result.barriers] == [
        (0b01, COPY_LINES, COPY_LINES), (0b10, 2 * COPY_LINES, 2 * COPY_LINES)]
    assert result.dram_out_of_range_accesses == 0


def test_outputs_placement_status_and_counters(copy_sim, capfd):
    rng = np.random.default_rng(2)
    binary, data = _copy_binary(HW, {1: 777}, rng)       # only core 1 runs
    # an extra output over lines no one wrote reads back as zeros (DRAM starts zeroed),
    # one over the source reads back the loaded image
    binary.outputs.append(Tensor("untouched", 60000, (3 * L,), "uint8", "flat"))
    binary.outputs.append(Tensor("source", 777, (COPY_LINES * L,), "uint8", "flat"))
    binary.outputs.append(Tensor("empty", 900, (0,), "uint8", "flat"))
    result = copy_sim.run(binary, {})
    out, err = capfd.readouterr()
    assert out == "" and err == ""                       # silent unless verbose
    assert result.error is None
    assert result.outputs["out1"].tobytes() == data[1]
    assert not result.outputs["untouched"].any()
    assert result.outputs["source"].tobytes() == data[1]
    assert result.outputs["empty"].shape == (0,)
    # the mock's cycle count: 1 (core 0 skipped) + 2 per line + 1 (core 1 done) + 1
    assert result.cycles == 2 * COPY_LINES + 3
    # the testbench logged core 1's barrier pulse with the cycles counter in that cycle and
    # the port's reads and writes before it (one each per copied line), and the totals
    assert result.barriers == [{"cycle": 2 * COPY_LINES + 1, "cores": 0b10, "dram_read_lines": COPY_LINES,
                                "dram_write_lines": COPY_LINES}]
    assert (result.dram_read_lines, result.dram_write_lines) == (COPY_LINES, COPY_LINES)
    assert len(result.counters) == HW.cores
    for core, counters in enumerate(result.counters):
        assert list(counters) == list(COUNTER_NAMES)
        copied = COPY_LINES if core == 1 else 0
        assert [counters[name] for name in COUNTER_NAMES] == [
            COUNTER_BASE * (core + 1) + 16 * k + copied for k in range(7)]
    assert result.sim_cycles >= result.cycles and result.sim_seconds > 0
    assert result.cycles_per_second > 0 and result.metadata["cycles_per_second"] == result.cycles_per_second
    assert result.waveform is None and result.run_dir is None


def test_build_is_cached(copy_sim, build_root, copy_verilog):
    stamp = copy_sim.model_dir / "build.json"
    exe_mtime = copy_sim.executable.stat().st_mtime_ns
    stamp_before = stamp.read_text()
    again = RtlSimulator(HW, build_dir=build_root / "copy", verilog=copy_verilog)
    start = time.perf_counter()
    assert again.build() == copy_sim.model_dir
    assert again.compiled is False and time.perf_counter() - start < 5
    assert copy_sim.executable.stat().st_mtime_ns == exe_mtime
    assert stamp.read_text() == stamp_before
    assert '"builds": 1' in stamp_before
    # different Verilog for the same HwConfig is a different key: not reused
    assert again._source_fingerprint() != RtlSimulator(
        HW, build_dir=build_root / "copy", verilog=copy_verilog + "\n// changed\n")._source_fingerprint()


def test_build_failure_raises_with_log_tail(tmp_path):
    broken = "module dlfusion_accel(input clk);\n  wire = ;\nendmodule\n"
    sim = RtlSimulator(HW, build_dir=tmp_path, verilog=broken)
    with pytest.raises(RtlBuildError, match=r"(?s)failed.*%Error.*dlfusion_accel\.v:2"):
        sim.build()


def test_binary_for_other_hw_is_rejected(copy_sim):
    from dlfusion.hw.binary import BinaryError
    other = HwConfig(cores=2, pe_rows=16, pe_cols=16, dram_bytes=1 << 21)
    binary, _ = _copy_binary(other, {0: 0}, np.random.default_rng(3))
    with pytest.raises(BinaryError, match="recompile"):
        copy_sim.run(binary, {})


def test_harness_timeout_does_not_hang(fault_sim):
    binary = Binary(HW, [Stream(0, 10, 1)], [Segment("code", 10, bytes(L))],
                    outputs=[Tensor("out", 100, (L,), "uint8", "flat")])
    start = time.perf_counter()
    result = fault_sim.run(binary, {}, max_cycles=5000)
    assert time.perf_counter() - start < 60
    assert result.error is not None and result.error.code == ErrorCode.WATCHDOG
    assert result.error.core == -1 and result.harness_timeout and result.metadata["harness_timeout"]
    assert result.outputs == {}
    assert 5000 <= result.sim_cycles <= 5002 and result.cycles >= 4990


def test_accelerator_error_is_decoded(fault_sim):
    code, core, pc = ErrorCode.SRAM_RANGE, 1, 4242
    line = (1 << 31) | (pc << 8) | (core << 4) | code.value
    binary = Binary(HW, [Stream(0, line, 1), Stream(1, 0, 1)], [Segment("code", 0, bytes(L))],
                    outputs=[Tensor("out", 100, (L,), "uint8", "flat")])
    result = fault_sim.run(binary, {})
    assert not result.harness_timeout
    assert (result.error.code, result.error.core, result.error.pc) == (code, core, pc)
    assert result.outputs == {}
    assert result.cycles == 21
    assert result.counters[0]["instructions"] == (1 << 48) - 1   # core_mask 0b11 replicated


def test_waves_produce_fst(build_root, copy_verilog):
    sim = RtlSimulator(HW, waves=True, build_dir=build_root / "copy", verilog=copy_verilog)
    assert sim.model_dir.name.endswith("-waves")
    binary, data = _copy_binary(HW, {0: 40}, np.random.default_rng(4))
    result = sim.run(binary, {})
    assert result.error is None and result.outputs["out0"].tobytes() == data[0]
    fst = result.waveform
    assert fst is not None and fst.endswith("dump.fst")
    with open(fst, "rb") as file:
        header = file.read(64)
    assert len(header) == 64 and header[0] == 0   # FST block type 0: header block


def test_lint_wall(tmp_path, copy_verilog):
    accel = tmp_path / "dlfusion_accel.v"
    accel.write_text(copy_verilog)
    ok, messages = verilator_tool.lint(accel)
    assert ok, "\n".join(messages)
    # the testbench and the mock together, with the build's parameters
    ok, messages = verilator_tool.lint(
        accel, TB_SOURCE, top="tb_top", waivers=verilator_tool.amaranth_waivers("*dlfusion_accel.v"),
        extra_args=("--timing", "-DTB_SV_CLOCK", "--timescale", "1ns/1ps",
                    f"-GL={L}", f"-GDRAM_LINES={HW.dram_lines}", f"-GCORES={HW.cores}"))
    assert ok, "\n".join(messages)
    # real problems are still reported: an unused input, a width mismatch in hand-written code
    bad = tmp_path / "bad.v"
    bad.write_text("module bad(input [3:0] a, input b, output [1:0] y); assign y = a; endmodule\n")
    ok, messages = verilator_tool.lint(bad)
    assert not ok and any("UNUSEDSIGNAL" in m and "'b'" in m for m in messages)
    ok, messages = verilator_tool.lint(bad, waivers=None)
    assert not ok and any("WIDTHTRUNC" in m for m in messages)
