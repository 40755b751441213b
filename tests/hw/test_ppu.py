"""The post-processing unit on the Amaranth simulator: REQUANT and ADD bit for bit.

REQUANT is compared with a numpy computation written here from the definition (int32
wrap-around bias, float32 conversion, one rounding of the float32 product, subnormal
results flushed to zero, round half to even, zero point, clamp) and with the golden
simulator's :func:`requantize`; ADD with the golden :func:`qlinear_add` on parameters from
:func:`qlinear_add_params`. Look-ups (``lut = 1``) index the tables with the raw output byte,
two cycles later than the same instruction without one.
"""

import dataclasses

import numpy as np
import pytest
from amaranth.hdl import Elaboratable, Fragment, Module
from amaranth.lib import memory, wiring
from hypothesis import given, settings
from hypothesis import strategies as st
from unit_bench import TINY, drive, entry, pack, simulate, unpack

from dlfusion.hw.isa import ErrorCode, Opcode, Unit, encode
from dlfusion.hw.numerics import qlinear_add, qlinear_add_params, requantize
from dlfusion.hw.ppu import Ppu

HW = TINY
NO_TABLES = dataclasses.replace(TINY, lut_tables=0)
LANES = HW.lanes
OUT = 32    # outputs go to act lines 32.. ; ADD inputs are read from lines below


class PpuBench(Elaboratable):
    def __init__(self, acc, act, params, tables=None, hw=HW):
        self.ppu = Ppu(hw)
        self.acc = memory.Memory(shape=32 * LANES, depth=hw.acc_entries, init=[pack(e, 32) for e in acc])
        self.act = memory.Memory(shape=8 * LANES, depth=hw.act_lines, init=[pack(line, 8) for line in act])
        self.param = memory.Memory(shape=32 * LANES, depth=hw.param_entries, init=[pack(e, 32) for e in params])
        # The table store as the core has it: a copy per lane, table t entry i in byte i % L of line
        # t * 256/L + i // L.
        lines = np.zeros((hw.lut_lines, LANES), np.uint8) if tables is None else np.asarray(tables).reshape(-1, LANES)
        self.luts = [memory.Memory(shape=8 * LANES, depth=hw.lut_lines, init=[pack(line, 8) for line in lines])
                     for _ in range(LANES if hw.lut_tables else 0)]

    def elaborate(self, platform):
        m = Module()
        m.submodules.ppu = self.ppu
        m.submodules.acc = self.acc
        m.submodules.act = self.act
        m.submodules.param = self.param
        connect_ppu(m, self.ppu, self.acc, self.act, self.param)
        for lane, copy in enumerate(self.luts):
            m.submodules[f"lut{lane}"] = copy
            wiring.connect(m, self.ppu.lut_read[lane], copy.read_port())
        return m


def connect_ppu(m, ppu, acc, act, param):
    wiring.connect(m, ppu.act_write, act.write_port())
    wiring.connect(m, ppu.a_read, act.read_port())
    wiring.connect(m, ppu.b_read, act.read_port())
    wiring.connect(m, ppu.acc_read, acc.read_port())
    wiring.connect(m, ppu.param_read, param.read_port())


def run_ppu(instructions, acc, act, params, tables=None, hw=HW):
    """Run (opcode, fields) instructions; returns (act scratchpad after, UnitRun)."""
    bench = PpuBench(acc, act, params, tables, hw)
    entries = [entry(bench.ppu.PAYLOAD, encode(op, signal=1 << k, **fields), pc=30 + k)
               for k, (op, fields) in enumerate(instructions)]
    result = {}

    async def testbench(ctx):
        result["run"] = await drive(ctx, bench.ppu, entries)
        result["act"] = np.array([unpack(ctx.get(bench.act.data[i]), LANES, 8) for i in range(hw.act_lines)],
                                 dtype=np.uint8)

    simulate(bench, testbench)
    return result["act"], result["run"]


def words(values, dtype):
    """A parameter entry (L 32-bit words) from int32 or float32 values."""
    return np.asarray(values, dtype=dtype).view(np.uint32)


def byte(value, signed):
    return value & 0xFF if signed else value


def requantize_here(acc, bias, mult, out_zp, lo, hi, signed):
    """The REQUANT definition, independently of the golden simulator."""
    x = ((acc.astype(np.int64) + bias.astype(np.int64) + 2**31) % 2**32 - 2**31).astype(np.int32)
    product = (x.astype(np.float32).astype(np.float64) * mult.astype(np.float64)).astype(np.float32)
    product = np.where(np.abs(product) < np.float32(2.0 ** -126), np.float32(0), product)   # flush to zero
    y = np.clip(np.rint(product.astype(np.float64)), -2.0**31, 2.0**31 - 1) + out_zp
    y = np.minimum(np.maximum(y, lo), hi).astype(np.int64)
    return y.astype(np.int8 if signed else np.uint8).view(np.uint8)


def loop(n1, n0, base, s1, s0):
    return [base + i1 * s1 + i0 * s0 for i1 in range(n1) for i0 in range(n0)]


def requant_case(rng, *, n1, n0, signed, acc_addr=0, acc_s1=None, acc_s0=1, out_s1=None, out_s0=1,
                 param_addr=0, mult=None):
    acc = rng.integers(-2**31, 2**31, size=(HW.acc_entries, LANES)).astype(np.int64)
    acc[: HW.acc_entries // 2] //= 2**rng.integers(0, 24, size=(HW.acc_entries // 2, 1))
    bias = rng.integers(-2**31, 2**31, size=LANES)
    bias[::2] //= 2**20
    if mult is None:
        mult = (2.0 ** rng.uniform(-30, -8, size=LANES) * rng.choice([-1, 1], size=LANES)).astype(np.float32)
    lo_hi = np.sort(rng.integers(-128, 128, size=2) if signed else rng.integers(0, 256, size=2))
    out_zp = int(rng.integers(-20, 21) if signed else rng.integers(0, 256))
    acc_s1 = n0 * acc_s0 if acc_s1 is None else acc_s1
    out_s1 = n0 * out_s0 if out_s1 is None else out_s1
    params = np.zeros((HW.param_entries, LANES), np.uint32)
    params[param_addr] = words(bias, np.int32)
    params[param_addr + 1] = words(mult, np.float32)
    fields = dict(acc_addr=acc_addr, acc_s1=acc_s1, acc_s0=acc_s0, out_addr=OUT, out_s1=out_s1, out_s0=out_s0,
                  n1=n1, n0=n0, param_addr=param_addr, out_signed=int(signed), out_zp=byte(out_zp, signed),
                  clamp_lo=byte(int(lo_hi[0]), signed), clamp_hi=byte(int(lo_hi[1]), signed))
    act = rng.integers(0, 256, size=(HW.act_lines, LANES)).astype(np.uint8)
    expected = act.copy()
    for src, out in zip(loop(n1, n0, acc_addr, acc_s1, acc_s0), loop(n1, n0, OUT, out_s1, out_s0), strict=True):
        expected[out] = requantize_here(acc[src], bias, mult, out_zp, lo_hi[0], lo_hi[1], signed)
        golden = requantize(acc[src], bias, mult, out_zp=out_zp, clamp_lo=int(lo_hi[0]), clamp_hi=int(lo_hi[1]),
                            out_signed=signed).view(np.uint8)
        np.testing.assert_array_equal(expected[out], golden)   # the two definitions agree
    return acc, act, params, fields, expected


@pytest.mark.parametrize("signed", [False, True])
def test_requant_matches_numpy(signed):
    rng = np.random.default_rng(11 + signed)
    acc, act, params, fields, expected = requant_case(rng, n1=2, n0=3, signed=signed, acc_addr=2, acc_s1=5,
                                                      acc_s0=1, out_s1=4, param_addr=3)
    got, run = run_ppu([(Opcode.REQUANT, fields)], acc, act, params)
    assert run.error is None and run.done[0][1:] == (1, 30)
    np.testing.assert_array_equal(got, expected)


def test_requant_rounds_ties_to_even():
    rng = np.random.default_rng(13)
    acc, act, params, fields, _ = requant_case(rng, n1=1, n0=2, signed=True, mult=np.full(LANES, 0.5, np.float32))
    acc[:2] = [[1, 3, -1, -3], [5, 7, -5, 2]]    # x.5 ties: 0, 2, -0, -2; 2, 4, -2, 1
    bias = np.zeros(LANES, np.int32)
    params[0] = words(bias, np.int32)
    fields.update(out_zp=0, clamp_lo=0x80, clamp_hi=0x7F)
    got, run = run_ppu([(Opcode.REQUANT, fields)], acc, act, params)
    assert got[OUT].view(np.int8).tolist() == [0, 2, 0, -2]
    assert got[OUT + 1].view(np.int8).tolist() == [2, 4, -2, 1]


def add_case(rng, *, n1, n0, in_signed, out_signed, param_addr=0):
    dtype = np.int8 if in_signed else np.uint8
    act = rng.integers(0, 256, size=(HW.act_lines, LANES)).astype(np.uint8)
    scales = 2.0 ** rng.uniform(-6, -2, size=3)
    zero = (lambda: int(rng.integers(-10, 11))) if in_signed else (lambda: int(rng.integers(100, 156)))
    za, zb = zero(), zero()
    zc = int(rng.integers(-10, 11)) if out_signed else int(rng.integers(100, 156))
    ra, rb, fixed = qlinear_add_params(scales[0], za, scales[1], zb, scales[2], zc)
    params = np.zeros((HW.param_entries, LANES), np.uint32)
    for k, value in enumerate((ra, rb, fixed)):
        params[param_addr + k] = words(np.full(LANES, value, np.float32), np.float32)
    lo, hi = (-128, 127) if out_signed else (0, 255)
    fields = dict(a_addr=0, a_s1=n0, a_s0=1, b_addr=16, b_s1=2 * n0, b_s0=2, out_addr=OUT, out_s1=n0, out_s0=1,
                  n1=n1, n0=n0, param_addr=param_addr, in_signed=int(in_signed), out_signed=int(out_signed),
                  out_zp=byte(zc, out_signed), clamp_lo=byte(lo, out_signed), clamp_hi=byte(hi, out_signed))
    expected = act.copy()
    outs = loop(n1, n0, OUT, n0, 1)
    for a, b, out in zip(loop(n1, n0, 0, n0, 1), loop(n1, n0, 16, 2 * n0, 2), outs, strict=True):
        y = qlinear_add(act[a].view(dtype), act[b].view(dtype), ra, rb, fixed, out_zp=zc, clamp_lo=lo, clamp_hi=hi,
                        out_signed=out_signed)
        expected[out] = y.view(np.uint8)
    return act, params, fields, expected


@pytest.mark.parametrize(("in_signed", "out_signed"), [(True, True), (False, False), (False, True)])
def test_add_matches_the_golden_arithmetic(in_signed, out_signed):
    rng = np.random.default_rng(21 + 2 * in_signed + out_signed)
    act, params, fields, expected = add_case(rng, n1=2, n0=3, in_signed=in_signed, out_signed=out_signed,
                                             param_addr=4)
    acc = np.zeros((HW.acc_entries, LANES), np.int64)
    got, run = run_ppu([(Opcode.ADD, fields)], acc, act, params)
    assert run.error is None
    np.testing.assert_array_equal(got, expected)


def test_add_reads_what_a_previous_requant_wrote_and_signals_in_order():
    rng = np.random.default_rng(31)
    acc, act, params, requant, after_requant = requant_case(rng, n1=1, n0=4, signed=True)
    _, add_params, add, _ = add_case(rng, n1=1, n0=4, in_signed=True, out_signed=True, param_addr=4)
    params[4:7] = add_params[4:7]
    # ADD reads the requantized lines (act OUT..OUT+3) and writes 8 lines further.
    add.update(a_addr=OUT, b_addr=OUT, b_s0=1, out_addr=OUT + 8)
    got, run = run_ppu([(Opcode.REQUANT, requant), (Opcode.SYNC, dict(unit=Unit.PPU)), (Opcode.ADD, add)],
                       acc, act, params)
    assert [(signal, pc) for _, signal, pc in run.done] == [(1, 30), (2, 31), (4, 32)]
    ra, rb, fixed = (params[4 + k].view(np.float32)[0] for k in range(3))
    lines = after_requant[OUT:OUT + 4].view(np.int8)
    expected = qlinear_add(lines, lines, ra, rb, fixed, out_zp=np.int8(np.uint8(add["out_zp"])).item(),
                           clamp_lo=-128, clamp_hi=127, out_signed=True)
    np.testing.assert_array_equal(got[OUT:OUT + 4], after_requant[OUT:OUT + 4])
    np.testing.assert_array_equal(got[OUT + 8:OUT + 12], expected.view(np.uint8))


@pytest.mark.parametrize(("op", "fields"), [
    (Opcode.REQUANT, dict(n1=1, n0=1, param_addr=HW.param_entries - 1)),              # bias + mult
    (Opcode.ADD, dict(n1=1, n0=1, param_addr=HW.param_entries - 2)),                  # ra, rb, fixed
    (Opcode.REQUANT, dict(n1=1, n0=2, acc_addr=HW.acc_entries - 1, acc_s0=1)),
    (Opcode.REQUANT, dict(n1=2, n0=1, out_addr=HW.act_lines - 1, out_s1=1)),
    (Opcode.ADD, dict(n1=1, n0=1, b_addr=HW.act_lines)),
])
def test_range_errors(op, fields):
    rng = np.random.default_rng(41)
    acc = np.zeros((HW.acc_entries, LANES), np.int64)
    act = rng.integers(0, 256, size=(HW.act_lines, LANES)).astype(np.uint8)
    params = np.zeros((HW.param_entries, LANES), np.uint32)
    _, run = run_ppu([(op, fields)], acc, act, params)
    assert run.error == (ErrorCode.SRAM_RANGE, 30)


@settings(max_examples=6, deadline=None)
@given(n1=st.integers(1, 2), n0=st.integers(1, 3), signed=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_random_requant(n1, n0, signed, seed):
    acc, act, params, fields, expected = requant_case(np.random.default_rng(seed), n1=n1, n0=n0, signed=signed)
    got, run = run_ppu([(Opcode.REQUANT, fields)], acc, act, params)
    assert run.error is None
    np.testing.assert_array_equal(got, expected)


# -- lookup tables ------------------------------------------------------------------------------------

def random_tables(seed):
    return np.random.default_rng(seed).integers(0, 256, size=(HW.lut_tables, 256)).astype(np.uint8)


def looked_up(expected, tables, table, lines):
    """``expected`` with the bytes of ``lines`` replaced by their entries in ``tables[table]``."""
    result = expected.copy()
    result[lines] = tables[table][expected[lines]]
    return result


@pytest.mark.parametrize("table", range(HW.lut_tables))
def test_requant_looks_up_its_table(table):
    rng = np.random.default_rng(51 + table)
    acc, act, params, fields, expected = requant_case(rng, n1=2, n0=3, signed=bool(table % 2), out_s1=4)
    tables = random_tables(table)
    got, run = run_ppu([(Opcode.REQUANT, dict(fields, lut=1, lut_table=table))], acc, act, params, tables)
    assert run.error is None and run.done[0][1:] == (1, 30)
    np.testing.assert_array_equal(got, looked_up(expected, tables, table, loop(2, 3, OUT, 4, 1)))


@pytest.mark.parametrize(("in_signed", "out_signed", "table"), [(True, True, 1), (False, False, 3), (False, True, 0)])
def test_add_looks_up_its_table(in_signed, out_signed, table):
    rng = np.random.default_rng(61 + table)
    act, params, fields, expected = add_case(rng, n1=2, n0=3, in_signed=in_signed, out_signed=out_signed,
                                             param_addr=4)
    tables = random_tables(10 + table)
    acc = np.zeros((HW.acc_entries, LANES), np.int64)
    got, run = run_ppu([(Opcode.ADD, dict(fields, lut=1, lut_table=table))], acc, act, params, tables)
    assert run.error is None
    np.testing.assert_array_equal(got, looked_up(expected, tables, table, loop(2, 3, OUT, 3, 1)))


def test_an_int8_minus_one_is_entry_255():
    rng = np.random.default_rng(71)
    acc, act, params, fields, _ = requant_case(rng, n1=1, n0=1, signed=True)
    tables = np.zeros((HW.lut_tables, 256), np.uint8)
    tables[2, 255] = 0x5A
    tables[2, 127] = 0x11      # an int8 -1 read as a signed index would pick neither of these
    tables[2, 0] = 0x22
    fields.update(clamp_lo=0xFF, clamp_hi=0xFF, lut=1, lut_table=2)       # y = -1 in every lane
    got, run = run_ppu([(Opcode.REQUANT, fields)], acc, act, params, tables)
    assert run.error is None
    assert got[OUT].tolist() == [0x5A] * LANES


def test_look_ups_take_two_cycles_more_and_only_they_do():
    rng = np.random.default_rng(81)
    acc, act, params, requant, _ = requant_case(rng, n1=2, n0=2, signed=True)
    _, add_params, add, _ = add_case(rng, n1=1, n0=3, in_signed=True, out_signed=True, param_addr=4)
    params[4:7] = add_params[4:7]
    tables = random_tables(5)
    plain = [(Opcode.REQUANT, requant), (Opcode.ADD, add), (Opcode.REQUANT, requant)]
    # The same instructions with a look-up in the second one only.
    mixed = [plain[0], (Opcode.ADD, dict(add, lut=1, lut_table=3)), plain[2]]
    _, without_tables = run_ppu(plain, acc, act, params, hw=NO_TABLES)
    _, with_tables = run_ppu(plain, acc, act, params, tables)
    _, with_look_up = run_ppu(mixed, acc, act, params, tables)
    assert with_tables.done == without_tables.done and with_tables.popped == without_tables.popped
    done = [cycle for cycle, _, _ in without_tables.done]
    assert [cycle for cycle, _, _ in with_look_up.done] == [done[0], done[1] + 2, done[2] + 2]
    assert with_look_up.popped == [*without_tables.popped[:2], without_tables.popped[2] + 2]


@pytest.mark.parametrize(("hw", "op", "table"), [
    (HW, Opcode.REQUANT, HW.lut_tables),
    (HW, Opcode.ADD, 15),
    (NO_TABLES, Opcode.REQUANT, 0),       # without tables every look-up is out of range
])
def test_a_look_up_of_a_missing_table_is_a_range_error(hw, op, table):
    act = np.zeros((HW.act_lines, LANES), np.uint8)
    acc = np.zeros((HW.acc_entries, LANES), np.int64)
    params = np.zeros((HW.param_entries, LANES), np.uint32)
    fields = dict(n1=1, n0=1, lut=1, lut_table=table)
    _, run = run_ppu([(op, fields)], acc, act, params, hw=hw)
    assert run.error == (ErrorCode.SRAM_RANGE, 30)
    _, run = run_ppu([(op, dict(fields, lut=0))], acc, act, params, hw=hw)       # the table is not used
    assert run.error is None


def test_without_tables_the_ppu_has_no_table_ports():
    with_tables, without = Ppu(HW), Ppu(NO_TABLES)
    assert "lut_read" in with_tables.signature.members and "lut_read" not in without.signature.members
    for ppu in (with_tables, without):
        Fragment.get(ppu, None)     # elaborates (and is used)
