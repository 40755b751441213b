"""The DMA engine on the Amaranth simulator, behind the real memory system and a DRAM store.

LOADs (the lookup-table store included): every scratchpad line written is recorded (buffer,
address, data) and compared with the three nested loops of the instruction worked out in numpy
(padding lines carry the pad value and cost no DRAM read). STOREs: the DRAM store is read back. Range errors stop the
unit with the instruction's pc.
"""

import numpy as np
import pytest
from amaranth.hdl import Elaboratable, Module
from amaranth.lib import memory, wiring
from hypothesis import given, settings
from hypothesis import strategies as st
from unit_bench import TINY, backing_store, drive, entry, pack, simulate, unpack

from dlfusion.hw.dma import DmaUnit, dma_tag_layout
from dlfusion.hw.isa import Buffer, ErrorCode, Opcode, Unit, encode
from dlfusion.hw.memsys import MemorySystem

HW = TINY
LANES = HW.lanes


class DmaBench(Elaboratable):
    def __init__(self, dram, act):
        self.dma = DmaUnit(HW)
        self.memsys = MemorySystem(HW, [dma_tag_layout(HW).size])
        self.dram_init = [pack(line, 8) for line in dram]
        self.act = memory.Memory(shape=8 * LANES, depth=HW.act_lines, init=[pack(line, 8) for line in act])
        self.dram = None

    def elaborate(self, platform):
        m = Module()
        m.submodules.dma = dma = self.dma
        m.submodules.memsys = memsys = self.memsys
        m.submodules.act = self.act
        wiring.connect(m, dma.req, memsys.req0)
        wiring.connect(m, memsys.resp0, dma.resp)
        self.dram = backing_store(m, memsys.mem, self.dram_init)
        wiring.connect(m, dma.act_read, self.act.read_port())
        return m


def random_contents(seed):
    rng = np.random.default_rng(seed)
    dram = rng.integers(0, 256, size=(HW.dram_lines, LANES)).astype(np.uint8)
    act = rng.integers(0, 256, size=(HW.act_lines, LANES)).astype(np.uint8)
    return dram, act


def run_dma(instructions, dram, act):
    """Run (opcode, fields, signal) instructions; returns the line writes, the DRAM after, the DRAM
    reads and writes granted, and the UnitRun."""
    bench = DmaBench(dram, act)
    entries = [entry(DmaUnit.PAYLOAD, encode(op, signal=signal, **fields), pc=20 + k)
               for k, (op, fields, signal) in enumerate(instructions)]
    writes, traffic, result = [], {"reads": 0, "writes": 0}, {}

    async def monitor(ctx):
        dma, mem = bench.dma, bench.memsys.mem
        line = dma.line_write
        async for _, _, we, buffer, addr, data, meta, re, mem_we in ctx.tick().sample(
                line.valid, line.payload.buffer, line.payload.addr, line.payload.data, line.payload.meta,
                mem.re, mem.we):
            if we:
                writes.append(("meta" if meta else Buffer(buffer), addr, tuple(unpack(data, LANES, 8))))
            traffic["reads"] += re
            traffic["writes"] += mem_we

    async def testbench(ctx):
        result["run"] = await drive(ctx, bench.dma, entries)
        result["dram"] = np.array([unpack(ctx.get(bench.dram.data[i]), LANES, 8) for i in range(HW.dram_lines)])

    simulate(bench, testbench, processes=[monitor])
    return writes, result["dram"], traffic, result["run"]


def transfer_lines(f):
    """(sram line, dram line or None for a pad line) for every iteration, in loop order."""
    lines = []
    n0, n1, n2 = f["n0"], f["n1"], f["n2"]
    for i2 in range(n2):
        for i1 in range(n1):
            for i0 in range(n0):
                sram = f.get("sram_addr", 0) + i2 * f.get("sram_s2", 0) + i1 * f.get("sram_s1", 0) + i0
                pad = (i1 < f.get("pad_top", 0) or i1 >= n1 - f.get("pad_bottom", 0)
                       or i0 < f.get("pad_left", 0) or i0 >= n0 - f.get("pad_right", 0))
                dram = None if pad else (f.get("dram_addr", 0) + i2 * f.get("dram_s2", 0)
                                         + (i1 - f.get("pad_top", 0)) * f.get("dram_s1", 0)
                                         + (i0 - f.get("pad_left", 0)))
                lines.append((sram, dram))
    return lines


def expected_load_writes(f, dram):
    buffer = "meta" if f.get("meta") else Buffer(f.get("buffer", Buffer.ACT))
    pad_line = (f.get("pad_value", 0),) * LANES
    return sorted((buffer, sram, pad_line if line is None else tuple(int(v) for v in dram[line]))
                  for sram, line in transfer_lines(f))


def test_padded_strided_load_writes_every_line_once():
    dram, act = random_contents(1)
    f = dict(buffer=Buffer.ACT, sram_addr=3, sram_s1=6, sram_s2=20, dram_addr=100, dram_s1=9, dram_s2=50,
             n0=5, n1=3, n2=2, pad_top=1, pad_left=1, pad_right=1, pad_value=0x5A)
    writes, _, traffic, run = run_dma([(Opcode.LOAD, f, 0b101)], dram, act)
    assert run.error is None
    assert run.done == [(run.done[0][0], 0b101, 20)]
    assert sorted(writes) == expected_load_writes(f, dram)
    assert traffic == {"reads": sum(line is not None for _, line in transfer_lines(f)), "writes": 0}


def test_long_load_streams_at_the_port_bandwidth():
    dram, act = random_contents(2)
    f = dict(buffer=Buffer.ACT, sram_addr=0, dram_addr=7, n0=24, n1=1, n2=1)
    writes, _, _, run = run_dma([(Opcode.LOAD, f, 1)], dram, act)
    assert sorted(writes) == expected_load_writes(f, dram)
    # One line per cycle (4 bytes per cycle, 4-byte lines), then the latency of the last read.
    assert run.done[0][0] - run.popped[0] <= 24 + HW.dram_latency + 3


@pytest.mark.parametrize("buffer", [Buffer.WEIGHT, Buffer.PARAM, Buffer.LUT])
def test_load_names_its_scratchpad(buffer):
    dram, act = random_contents(3)
    f = dict(buffer=buffer, sram_addr=2, sram_s1=4, dram_addr=11, dram_s1=3, n0=3, n1=2, n2=1)
    writes, _, _, run = run_dma([(Opcode.LOAD, f, 1)], dram, act)
    assert run.error is None
    assert sorted(writes) == expected_load_writes(f, dram)


def test_a_metadata_load_writes_the_metadata_store_up_to_its_last_line():
    """LOAD weight with meta: the line writes say so (padding too), and the range is the store's."""
    dram, act = random_contents(9)
    f = dict(buffer=Buffer.WEIGHT, meta=1, sram_addr=HW.meta_lines - 6, sram_s1=3, dram_addr=30, dram_s1=5,
             n0=3, n1=2, n2=1, pad_left=1, pad_value=0xE4)
    writes, _, _, run = run_dma([(Opcode.LOAD, f, 1)], dram, act)
    assert run.error is None
    assert sorted(writes) == expected_load_writes(f, dram)
    assert max(addr for _, addr, _ in writes) == HW.meta_lines - 1
    _, _, _, run = run_dma([(Opcode.LOAD, dict(f, sram_addr=HW.meta_lines - 5), 1)], dram, act)
    assert run.error == (ErrorCode.SRAM_RANGE, 20)
    assert HW.meta_lines < HW.weight_lines


def test_a_table_load_reaches_the_last_line_of_the_store():
    dram, act = random_contents(8)
    f = dict(buffer=Buffer.LUT, sram_addr=HW.lut_lines - 2 * HW.lut_lines_per_table, dram_addr=40,
             n0=HW.lut_lines_per_table, n1=2, n2=1, sram_s1=HW.lut_lines_per_table, dram_s1=HW.lut_lines_per_table)
    writes, _, _, run = run_dma([(Opcode.LOAD, f, 1)], dram, act)
    assert run.error is None
    assert sorted(writes) == expected_load_writes(f, dram)
    assert max(addr for _, addr, _ in writes) == HW.lut_lines - 1


def test_store_writes_the_dram_lines_and_skips_padding():
    dram, act = random_contents(4)
    f = dict(buffer=Buffer.ACT, sram_addr=5, sram_s1=4, sram_s2=13, dram_addr=300, dram_s1=7, dram_s2=40,
             n0=4, n1=2, n2=2, pad_right=1)
    _, after, traffic, run = run_dma([(Opcode.STORE, f, 0b10)], dram, act)
    assert run.error is None and run.done[0][1:] == (0b10, 20)
    expected = dram.copy()
    for sram, line in transfer_lines(f):
        if line is not None:
            expected[line] = act[sram]
    np.testing.assert_array_equal(after, expected)
    assert traffic == {"reads": 0, "writes": 2 * 2 * 3}


def test_sync_and_empty_transfers_complete_in_order():
    dram, act = random_contents(5)
    load = dict(buffer=Buffer.ACT, sram_addr=0, dram_addr=0, n0=6, n1=1, n2=1)
    instructions = [(Opcode.LOAD, load, 1), (Opcode.SYNC, dict(unit=Unit.DMA), 2),
                    (Opcode.LOAD, dict(load, n1=0), 4), (Opcode.STORE, dict(load, dram_addr=500), 8)]
    writes, after, _, run = run_dma(instructions, dram, act)
    assert [(signal, pc) for _, signal, pc in run.done] == [(1, 20), (2, 21), (4, 22), (8, 23)]
    assert len(writes) == 6
    # (The bench records line writes without applying them: the store sends the initial lines.)
    np.testing.assert_array_equal(after[500:506], act[0:6])


@pytest.mark.parametrize(("op", "fields", "code"), [
    (Opcode.LOAD, dict(buffer=Buffer.ACT, sram_addr=HW.act_lines - 2, n0=3, n1=1, n2=1), ErrorCode.SRAM_RANGE),
    (Opcode.LOAD, dict(buffer=Buffer.WEIGHT, sram_addr=HW.weight_lines - 1, n0=1, n1=2, n2=1, sram_s1=1),
     ErrorCode.SRAM_RANGE),
    (Opcode.LOAD, dict(buffer=Buffer.PARAM, sram_addr=HW.param_lines, n0=1, n1=1, n2=1), ErrorCode.SRAM_RANGE),
    (Opcode.LOAD, dict(buffer=Buffer.LUT, sram_addr=HW.lut_lines - 3, n0=4, n1=1, n2=1), ErrorCode.SRAM_RANGE),
    (Opcode.LOAD, dict(buffer=Buffer.ACT, dram_addr=HW.dram_lines - 2, n0=4, n1=1, n2=1), ErrorCode.DRAM_RANGE),
    (Opcode.STORE, dict(buffer=Buffer.ACT, dram_addr=HW.dram_lines - 1, n0=1, n1=1, n2=2, dram_s2=1),
     ErrorCode.DRAM_RANGE),
])
def test_range_errors(op, fields, code):
    dram, act = random_contents(6)
    _, _, _, run = run_dma([(Opcode.SYNC, dict(unit=Unit.DMA), 1), (op, fields, 2)], dram, act)
    assert run.error == (code, 21)


def test_padding_lines_need_no_dram_address():
    # Rows of padding beyond the end of DRAM are not an error: they are never read.
    dram, act = random_contents(7)
    f = dict(buffer=Buffer.ACT, dram_addr=HW.dram_lines - 2, dram_s1=2, n0=2, n1=3, n2=1, sram_s1=2,
             pad_bottom=2, pad_value=9)
    writes, _, _, run = run_dma([(Opcode.LOAD, f, 1)], dram, act)
    assert run.error is None
    assert sorted(writes) == expected_load_writes(f, dram)


@st.composite
def loads(draw):
    buffer = draw(st.sampled_from(list(Buffer)))
    depth = HW.buffer_lines(buffer.name.lower())
    n0, n1, n2 = draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 2))
    # Distinct scratchpad lines (each written once): rows and planes do not overlap.
    sram_s1 = n0 + draw(st.integers(0, 2))
    sram_s2 = n1 * sram_s1 + draw(st.integers(0, 2))
    top = depth - 1 - (n2 - 1) * sram_s2 - (n1 - 1) * sram_s1 - (n0 - 1)
    if top < 0:     # the gaps do not fit this scratchpad: packed rows and planes (at most 24 lines) do
        sram_s1, sram_s2 = n0, n1 * n0
        top = depth - n2 * n1 * n0
    return dict(buffer=buffer, n0=n0, n1=n1, n2=n2, sram_s1=sram_s1, sram_s2=sram_s2,
                sram_addr=draw(st.integers(0, max(0, top))),
                dram_addr=draw(st.integers(0, 200)), dram_s1=draw(st.integers(0, 9)),
                dram_s2=draw(st.integers(0, 40)),
                pad_top=draw(st.integers(0, 1)), pad_bottom=draw(st.integers(0, 1)),
                pad_left=draw(st.integers(0, 2)), pad_right=draw(st.integers(0, 1)),
                pad_value=draw(st.integers(0, 255)))


@settings(max_examples=10, deadline=None)
@given(f=loads(), seed=st.integers(0, 2**32 - 1))
def test_random_loads_land_the_right_bytes(f, seed):
    dram, act = random_contents(seed)
    writes, _, traffic, run = run_dma([(Opcode.LOAD, f, 1)], dram, act)
    assert run.error is None
    assert sorted(writes) == expected_load_writes(f, dram)
    assert traffic["reads"] == sum(line is not None for _, line in transfer_lines(f))
