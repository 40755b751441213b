"""The post-processing unit on the Amaranth simulator: REQUANT and ADD bit for bit.

REQUANT is compared with a numpy computation written here from the definition (int32
wrap-around bias, float32 conversion, one rounding of the float32 product, subnormal
results flushed to zero, round half to even, zero point, clamp) and with the golden
simulator's :func:`requantize`; ADD with the golden :func:`qlinear_add` on parameters from
:func:`qlinear_add_params`.
"""

import numpy as np
import pytest
from amaranth.hdl import Elaboratable, Module
from amaranth.lib import memory, wiring
from hypothesis import given, settings
from hypothesis import strategies as st
from unit_bench import TINY, drive, entry, pack, simulate, unpack

from dlfusion.hw.isa import ErrorCode, Opcode, Unit, encode
from dlfusion.hw.numerics import qlinear_add, qlinear_add_params, requantize
from dlfusion.hw.ppu import Ppu

HW = TINY
LANES = HW.lanes
OUT = 32    # outputs go to act lines 32.. ; ADD inputs are read from lines below


class PpuBench(Elaboratable):
    def __init__(self, acc, act, params):
        self.ppu = Ppu(HW)
        self.acc = memory.Memory(shape=32 * LANES, depth=HW.acc_entries, init=[pack(e, 32) for e in acc])
        self.act = memory.Memory(shape=8 * LANES, depth=HW.act_lines, init=[pack(line, 8) for line in act])
        self.param = memory.Memory(shape=32 * LANES, depth=HW.param_entries, init=[pack(e, 32) for e in params])

    def elaborate(self, platform):
        m = Module()
        m.submodules.ppu = self.ppu
        m.submodules.acc = self.acc
        m.submodules.act = self.act
        m.submodules.param = self.param
        connect_ppu(m, self.ppu, self.acc, self.act, self.param)
        return m


def connect_ppu(m, ppu, acc, act, param):
    wiring.connect(m, ppu.act_write, act.write_port())
    wiring.connect(m, ppu.a_read, act.read_port())
    wiring.connect(m, ppu.b_read, act.read_port())
    wiring.connect(m, ppu.acc_read, acc.read_port())
    wiring.connect(m, ppu.param_read, param.read_port())


def run_ppu(instructions, acc, act, params):
    """Run (opcode, fields) instructions; returns (act scratchpad after, UnitRun)."""
    bench = PpuBench(acc, act, params)
    entries = [entry(Ppu.PAYLOAD, encode(op, signal=1 << k, **fields), pc=30 + k)
               for k, (op, fields) in enumerate(instructions)]
    result = {}

    async def testbench(ctx):
        result["run"] = await drive(ctx, bench.ppu, entries)
        result["act"] = np.array([unpack(ctx.get(bench.act.data[i]), LANES, 8) for i in range(HW.act_lines)],
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
