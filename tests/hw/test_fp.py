"""Tests for dlfusion.hw.fp: simulated hardware vs exact reference vs CPU.

Three layers are checked:

* DUT == exact Python reference (``ref_*``) on a few thousand vectors per
  component, batched into one simulation each to keep the run fast.
* Reference == the CPU (numpy casts, and glibc ``fmaf`` via ctypes when
  available) wherever the CPU result is not affected by our documented
  deviations (FTZ, saturation).
* Known answers for ties, cancellation, underflow and overflow.
"""

import ctypes
import ctypes.util
import struct
from fractions import Fraction

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.hdl import Elaboratable, Module
from amaranth.sim import Simulator
from hypothesis import given, settings
from hypothesis import strategies as st

from dlfusion.hw.fp import (
    FloatToInt,
    FusedMultiplyAdd,
    IntToFloat,
    bits_to_fraction,
    ref_float_to_int,
    ref_fma,
    ref_int_to_float,
)

INT_MIN, INT_MAX = -2**31, 2**31 - 1
PZERO, NZERO, PINF, NINF = 0x0000_0000, 0x8000_0000, 0x7F80_0000, 0xFF80_0000


def f2b(x):
    """binary32 bit pattern of a Python float / numpy float32."""
    return struct.unpack("<I", struct.pack("<f", float(x)))[0]


def b2f(bits):
    return struct.unpack("<f", struct.pack("<I", bits & 0xFFFF_FFFF))[0]


def simulate(dut, inputs, outputs):
    """Drive a combinational DUT with vectors; return the output lists.

    ``inputs`` maps port name -> list of values (all the same length).  All
    vectors run in a single simulation because elaborating and starting the
    simulator dominates the cost of small batches.
    """
    names = list(inputs)
    count = len(inputs[names[0]])
    results = {name: [] for name in outputs}

    async def bench(ctx):
        for i in range(count):
            for name in names:
                ctx.set(getattr(dut, name), inputs[name][i])
            await ctx.delay(1e-9)     # let the combinational logic settle
            for name in outputs:
                results[name].append(ctx.get(getattr(dut, name)))

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    return results


def _load_fmaf():
    """glibc ``fmaf`` (correctly rounded) as an independent oracle, or None."""
    name = ctypes.util.find_library("m")
    if name is None:
        return None
    try:
        fmaf = ctypes.CDLL(name).fmaf
    except (OSError, AttributeError):
        return None
    fmaf.restype = ctypes.c_float
    fmaf.argtypes = [ctypes.c_float] * 3
    return lambda a, b, c: f2b(fmaf(b2f(a), b2f(b), b2f(c)))


LIBM_FMAF = _load_fmaf()


def cpu_fma_comparable(a, b, c, cpu_bits):
    """True if a CPU fmaf result is unaffected by FTZ (inputs or output)."""
    if any(((x >> 23) & 0xFF) == 0 and (x & 0x7F_FFFF) for x in (a, b, c)):
        return False                        # subnormal input: we flush it
    # The CPU keeps subnormal results (and may round up to 2**-126 from one),
    # while we flush: compare only clearly normal or exact-zero results.
    exp = (cpu_bits >> 23) & 0xFF
    return exp >= 2 or (cpu_bits & 0x7FFF_FFFF) == 0


# ----------------------------------------------------------------- vectors

def rand_float_bits(rng, n, exp_lo=1, exp_hi=254, zero_frac=0.0):
    sign = rng.integers(0, 2, n, dtype=np.int64)
    exp = rng.integers(exp_lo, exp_hi + 1, n, dtype=np.int64)
    frac = rng.integers(0, 1 << 23, n, dtype=np.int64)
    bits = sign << 31 | exp << 23 | frac
    zero = rng.random(n) < zero_frac
    bits[zero] = sign[zero] << 31
    return [int(x) for x in bits]


def exact_f32_bits(q):
    """binary32 bits of the Fraction ``q`` if it is a normal float32, else None."""
    if q == 0:
        return None
    f = np.float32(float(q))
    if Fraction(float(f)) != q or not np.isfinite(f) or abs(f) < 2.0**-126:
        return None
    return f2b(f)


def log_uniform_f32(rng, lo, hi, n):
    vals = np.exp(rng.uniform(np.log(lo), np.log(hi), n)).astype(np.float32)
    return [f2b(v) for v in vals]


def fma_vectors():
    """(a, b, c) triples: hand-picked edges, then stressed random classes."""
    rng = np.random.default_rng(20240521)
    one, two = f2b(1.0), f2b(2.0)
    vecs = [
        (PZERO, PZERO, PZERO), (NZERO, PZERO, NZERO), (NZERO, PZERO, PZERO),
        (one, NZERO, NZERO), (one, one, PZERO), (one, one, NZERO),
        (one, one, f2b(-1.0)),                          # exact cancellation
        (0x0000_0001, one, PZERO),                      # subnormal input -> 0
        (one, one, f2b(2.0**24)),                       # tie -> 2**24
        (one, one, f2b(2.0**24 + 2)),                   # tie -> 2**24 + 4
        (one, f2b(-1.0), f2b(2.0**24)),                 # 2**24-1 exact
        (one, f2b(2.0**-25), one),                      # below half ulp
        (one, f2b(-2.0**-25), one),                     # 1 - 2**-25: tie on binade edge
        (one, f2b(-2.0**-24), one),                     # exact 1 - 2**-24
        (one, one, f2b(-(2.0**-25 + 2.0**-48))),        # below tie by a sticky bit
        (f2b(1.5), f2b(-1.5 * 2.0**-26), one),          # k = 49, just below pin
        (one, f2b(2.0**-24), one),                      # tie -> 1.0
        (f2b(1.0 + 2.0**-23), f2b(1.0 + 2.0**-23), f2b(-1.0)),   # tiny difference
        (f2b(2.0**-63), f2b(2.0**-63), PZERO),          # exactly 2**-126
        (f2b(2.0**-64), f2b(2.0**-63), PZERO),          # 2**-127: flushed
        (f2b((1 + 2.0**-23) * 2.0**-63), f2b((1 - 2.0**-23) * 2.0**-63), PZERO),
        (f2b(1.0 - 2.0**-24), f2b(2.0**-126), PZERO),   # just below: flushed
        (f2b(2.0**-63), f2b(2.0**-63), f2b(-2.0**-126)),  # exact zero
        (f2b(3.4e38), two, PZERO), (f2b(-3.4e38), two, PZERO),   # overflow
        (f2b(3.4e38), one, f2b(3.4e38)),
        (f2b(2.0**127), f2b(2.0**-127 * 2), PZERO),
        (f2b(2.0**100), f2b(2.0**27), f2b(2.0**-100)),  # huge exponent gaps
        (PZERO, f2b(2.0**127), f2b(2.0**-100)),         # zero product, big b
        (f2b(2.0**-100), f2b(2.0**-20), f2b(2.0**100)),
        (f2b(2.0**-100), f2b(-2.0**-20), f2b(2.0**100)),
        (f2b(1.5), f2b(1.5), f2b(-2.25)),
    ]
    # Flushing boundary: product just below / at 2**-126 after rounding.
    for frac in (0x7F_FFFF, 0x7F_FFFE, 0, 1):
        for cfrac in (0, 1, 0x7F_FFFF):
            vecs.append((0x2080_0000 | frac, 0x1F00_0000 | cfrac, PZERO))
            vecs.append((0x2080_0000 | frac, 0x1F00_0000, 0x8080_0000 | cfrac))
    # Fully random operands (mostly one term dominates / over- / underflow).
    n = 400
    vecs += zip(rand_float_bits(rng, n, zero_frac=0.05),
                rand_float_bits(rng, n, zero_frac=0.05),
                rand_float_bits(rng, n, zero_frac=0.05), strict=True)
    # Exponents chosen so that c overlaps the product in every possible way.
    n = 800
    a = rand_float_bits(rng, n, 110, 144)
    b = rand_float_bits(rng, n, 110, 144)
    ea = np.array([(x >> 23) & 0xFF for x in a])
    eb = np.array([(x >> 23) & 0xFF for x in b])
    ec = np.clip(ea + eb - 127 + rng.integers(-60, 61, n), 1, 254)
    c = [int(s << 31 | e << 23 | f) for s, e, f in
         zip(rng.integers(0, 2, n), ec, rng.integers(0, 1 << 23, n), strict=True)]
    vecs += zip(a, b, c, strict=True)
    # Massive cancellation: c = -round(a*b), nudged by a few ulps.
    n = 600
    a = rand_float_bits(rng, n, 60, 190)
    b = rand_float_bits(rng, n, 60, 190)
    for x, y, d in zip(a, b, rng.integers(-3, 4, n), strict=True):
        p = ref_fma(x, y, PZERO)
        if not 2 <= (p >> 23) & 0xFF <= 253:          # keep c normal after nudge
            continue
        vecs.append((x, y, (p ^ 0x8000_0000) + int(d)))
    # Results near 2**-126 and near overflow, with a cancelling addend.
    for lo, hi, emin, emax in ((1, 126, 1, 20), (128, 254, 235, 254)):
        n = 300
        a = rand_float_bits(rng, n, 1, 254)
        eb_need = [np.clip(target - ((x >> 23) & 0xFF) + 127, lo, hi) for x, target in
                   zip(a, rng.integers(emin, emax + 1, n), strict=True)]
        b = [int(s << 31 | int(e) << 23 | f) for s, e, f in
             zip(rng.integers(0, 2, n), eb_need, rng.integers(0, 1 << 23, n), strict=True)]
        c = rand_float_bits(rng, n, emin, emax, zero_frac=0.3)
        vecs += zip(a, b, c, strict=True)
    # Random ties: a*b = 1 * 2**e with c an even 25-bit neighbour.
    for _ in range(100):
        e = int(rng.integers(-60, 60))
        sig = int(rng.integers(1 << 24, 1 << 25)) & ~1
        sign = float(rng.choice([-1.0, 1.0]))
        vecs.append((f2b(sign * 2.0**e), one, f2b(sign * sig * 2.0**e)))
    # Near-midpoints with a small c: c = (midpoint - a*b) and its neighbours,
    # whose low bits fall below the product's LSB (c's sticky bits decide).
    n = 250
    for x, y in zip(rand_float_bits(rng, n, 100, 154), rand_float_bits(rng, n, 100, 154), strict=True):
        rbits = ref_fma(x, y, PZERO)
        rv = bits_to_fraction(rbits)[1]
        ulp = Fraction(2) ** (((rbits >> 23) & 0xFF) - 150)
        prod = bits_to_fraction(x)[1] * bits_to_fraction(y)[1]
        for mid in (rv + ulp / 2, rv - ulp / 2, rv - ulp / 4):
            cbits = exact_f32_bits(mid - prod)
            if cbits is None:
                continue
            sign = (x ^ y) & 0x8000_0000                # same sign as a*b
            vecs += [(x, y, (cbits ^ sign) + d) for d in (-1, 0, 1)]
    # c's LSB 44..56 bits above the product's LSB (k around the pin at 50),
    # c close to a power of two so that a tiny subtrahend still matters.
    n = 400
    for k, ec in zip(rng.integers(44, 57, n), rng.integers(80, 180, n), strict=True):
        ea = int(rng.integers(100, 150))
        eb = int(ec) - int(k) + 150 - ea
        cfrac = int(rng.choice([0, 1, 0x7F_FFFF, int(rng.integers(0, 1 << 23))]))
        vecs.append((int(rng.integers(0, 2)) << 31 | ea << 23 | int(rng.integers(0, 1 << 23)),
                     int(rng.integers(0, 2)) << 31 | eb << 23 | int(rng.integers(0, 1 << 23)),
                     int(rng.integers(0, 2)) << 31 | int(ec) << 23 | cfrac))
    # Accelerator domain, weighted heavily.
    n = 1200
    acc = rng.integers(-2**20, 2**20, n)
    acc[: n // 4] = rng.integers(INT_MIN, INT_MAX, n // 4, endpoint=True)
    m = log_uniform_f32(rng, 1e-6, 10.0, n)
    vecs += [(ref_int_to_float(int(x)), y, PZERO) for x, y in zip(acc, m, strict=True)]
    for x, r, f in add_domain(rng, 600):
        vecs.append((ref_int_to_float(int(x)), r, f))
    return vecs


def add_domain(rng, n):
    """(int8-ish operand, rescale factor, fixed term) as used by the adder."""
    x = rng.integers(-255, 256, n)
    r = log_uniform_f32(rng, 2.0**-14, 255.99, n)
    fixed = [f2b(v) for v in rng.uniform(-300, 300, n).astype(np.float32)]
    return zip(x, r, fixed, strict=True)


# --------------------------------------------------------------- references

def test_ref_int_to_float_matches_numpy():
    rng = np.random.default_rng(1)
    xs = [0, 1, -1, 2**24, 2**24 + 1, 2**24 + 3, 2**25 + 2, 2**25 + 6,
          -(2**24 + 1), INT_MAX, INT_MIN, INT_MIN + 1, 2**31 - 64, 2**31 - 65]
    xs += [int(x) for x in rng.integers(INT_MIN, INT_MAX, 20000, endpoint=True)]
    xs += [int(x) >> int(s) for x, s in
           zip(rng.integers(INT_MIN, INT_MAX, 5000), rng.integers(0, 31, 5000), strict=True)]
    for x in xs:
        assert ref_int_to_float(x) == f2b(np.float32(np.int32(x))), x
    assert ref_int_to_float(2**24 + 1) == f2b(2.0**24)
    assert ref_int_to_float(2**25 + 2) == f2b(2.0**25)
    assert ref_int_to_float(2**25 + 6) == f2b(2.0**25 + 8)


def test_ref_float_to_int_matches_numpy():
    rng = np.random.default_rng(2)
    known = {0.5: 0, 1.5: 2, 2.5: 2, -0.5: 0, -1.5: -2, -2.5: -2, 0.49999997: 0,
             8388607.5: 8388608, 8388606.5: 8388606, -0.0: 0, 1e-30: 0,
             2.0**31: INT_MAX, -2.0**31: INT_MIN, 3e38: INT_MAX, -3e38: INT_MIN,
             2.0**31 - 128: 2**31 - 128, float("inf"): INT_MAX,
             float("-inf"): INT_MIN}
    for v, want in known.items():
        assert ref_float_to_int(f2b(v)) == want, v
    assert ref_float_to_int(0x0000_0001) == 0          # subnormal
    vals = np.concatenate([
        rng.uniform(-300, 300, 5000), rng.integers(-600, 600, 2000) / 2.0,
        np.exp(rng.uniform(-30, 21.4, 5000)) * rng.choice([-1, 1], 5000),
    ]).astype(np.float32)
    for v in vals:
        assert ref_float_to_int(f2b(v)) == int(np.rint(v)), v


def test_ref_fma_known_answers():
    one = f2b(1.0)
    assert ref_fma(one, one, f2b(2.0**24)) == f2b(2.0**24)          # tie to even
    assert ref_fma(one, one, f2b(2.0**24 + 2)) == f2b(2.0**24 + 4)  # tie to even
    assert ref_fma(one, f2b(2.0**-24), one) == one                  # tie to even
    assert ref_fma(one, f2b(-2.0**-25), one) == one                 # 1 - 2**-25: tie
    assert ref_fma(one, f2b(-2.0**-24), one) == f2b(1.0 - 2.0**-24)
    # Just below the tie 1 - 2**-25, decided by a c bit below the product LSB.
    assert ref_fma(one, one, f2b(-(2.0**-25 + 2.0**-48))) == f2b(1.0 - 2.0**-24)
    # Subtrahend 1.125 * 2**-25 below a power of two, c LSB 49 bits above p's.
    assert ref_fma(f2b(1.5), f2b(-1.5 * 2.0**-26), one) == f2b(1.0 - 2.0**-24)
    # (1 + 2**-23)**2 - 1 = 2**-22 + 2**-46 exactly (plain float loses 2**-46).
    x = f2b(1.0 + 2.0**-23)
    assert ref_fma(x, x, f2b(-1.0)) == f2b(2.0**-22 + 2.0**-46)
    assert ref_fma(one, one, f2b(-1.0)) == PZERO                    # x - x = +0
    assert ref_fma(NZERO, one, NZERO) == NZERO
    assert ref_fma(f2b(3.4e38), f2b(2.0), PZERO) == PINF
    assert ref_fma(f2b(-3.4e38), f2b(2.0), PZERO) == NINF
    assert ref_fma(f2b(2.0**-63), f2b(2.0**-63), PZERO) == f2b(2.0**-126)
    assert ref_fma(f2b(2.0**-64), f2b(2.0**-63), PZERO) & 0x7FFF_FFFF == 0
    # (1 - 2**-46) * 2**-126 rounds up to 2**-126: tiny only before rounding,
    # so it is kept (x86 FTZ also detects tininess after rounding).
    lo, hi = f2b((1.0 + 2.0**-23) * 2.0**-63), f2b((1.0 - 2.0**-23) * 2.0**-63)
    assert ref_fma(lo, hi, PZERO) == f2b(2.0**-126)
    assert ref_fma(f2b(1.0 - 2.0**-24), f2b(2.0**-126), PZERO) & 0x7FFF_FFFF == 0
    assert ref_fma(0x0000_0001, one, one) == one                    # FTZ input
    with pytest.raises(ValueError):
        ref_fma(PINF, one, one)


@pytest.mark.skipif(LIBM_FMAF is None, reason="libm fmaf not available")
def test_ref_fma_matches_libm_fmaf():
    compared = 0
    for a, b, c in fma_vectors():
        cpu = LIBM_FMAF(a, b, c)
        if cpu_fma_comparable(a, b, c, cpu):
            assert ref_fma(a, b, c) == cpu, (hex(a), hex(b), hex(c))
            compared += 1
    assert compared > 4000


@settings(max_examples=300, deadline=None)
@given(st.integers(-2**24, 2**24), st.floats(2.0**-14, 255.875, width=32),
       st.floats(-300, 300, width=32))
def test_ref_fma_matches_numpy_where_exact(x, r, fixed):
    """numpy float64 a*b + c is single-rounded when the sum is exact."""
    fx = np.float32(x)                   # exact: |x| <= 2**24
    exact = Fraction(float(fx)) * Fraction(float(r)) + Fraction(float(fixed))
    total = np.float64(fx) * np.float64(r) + np.float64(fixed)
    if Fraction(float(total)) != exact or (total != 0 and abs(total) < 2.0**-126):
        return
    got = ref_fma(f2b(fx), f2b(r), f2b(fixed))
    assert got & 0x7FFF_FFFF == f2b(np.float32(total)) & 0x7FFF_FFFF
    if total != 0:
        assert got == f2b(np.float32(total))


def test_ref_accelerator_domain_matches_numpy():
    """Requant and add chains, compared bit for bit with numpy."""
    rng = np.random.default_rng(3)
    acc = rng.integers(INT_MIN, INT_MAX, 3000, endpoint=True) >> rng.integers(0, 31, 3000)
    for x, m in zip(acc, log_uniform_f32(rng, 1e-6, 10.0, 3000), strict=True):
        fx = np.float32(np.int32(x))
        want = np.float32(np.float64(fx) * np.float64(b2f(m)))   # exact product
        assert ref_fma(f2b(fx), m, PZERO) == f2b(want)
    exact = checked = 0
    for (a, ra, _), (b, rb, fixed) in zip(add_domain(rng, 3000), add_domain(rng, 3000), strict=True):
        t = ref_fma(ref_int_to_float(int(b)), rb, fixed)
        r = ref_fma(ref_int_to_float(int(a)), ra, t)
        for x, s, k, res in ((b, rb, fixed, t), (a, ra, t, r)):
            total = np.float64(x) * np.float64(b2f(s)) + np.float64(b2f(k))
            if Fraction(float(total)) == (Fraction(int(x)) * Fraction(b2f(s))
                                          + Fraction(b2f(k))):
                assert res & 0x7FFF_FFFF == f2b(np.float32(total)) & 0x7FFF_FFFF
                if total != 0:
                    assert res == f2b(np.float32(total))
                exact += 1
            checked += 1
    assert exact > 0.95 * checked            # the numpy check is not vacuous


# -------------------------------------------------------------- hardware

def test_int_to_float_dut():
    rng = np.random.default_rng(4)
    xs = [0, 1, -1, 2, 3, 2**24, 2**24 + 1, 2**24 + 3, 2**25 + 2, 2**25 + 6,
          -(2**24 + 1), -(2**25 + 2), INT_MAX, INT_MIN, INT_MIN + 1,
          2**31 - 64, 2**31 - 65, 2**31 - 192, 2**24 - 1]
    xs += [int(x) for x in rng.integers(INT_MIN, INT_MAX, 1000, endpoint=True)]
    xs += [int(x) >> int(s) for x, s in
           zip(rng.integers(INT_MIN, INT_MAX, 1000), rng.integers(0, 31, 1000), strict=True)]
    xs += [int(x) for x in rng.integers(-2**20, 2**20, 1000)]
    out = simulate(IntToFloat(), {"value": xs}, ["result"])["result"]
    for x, got in zip(xs, out, strict=True):
        assert got == ref_int_to_float(x) == f2b(np.float32(np.int32(x))), x


@pytest.mark.parametrize("width", [8, 20, 26, 48])
def test_int_to_float_dut_widths(width):
    rng = np.random.default_rng(width)
    lo, hi = -2**(width - 1), 2**(width - 1) - 1
    xs = [0, lo, hi, -1, 1] + [int(x) for x in rng.integers(lo, hi, 300, endpoint=True)]
    out = simulate(IntToFloat(width), {"value": xs}, ["result"])["result"]
    for x, got in zip(xs, out, strict=True):
        assert got == ref_int_to_float(x), x


def test_float_to_int_dut():
    rng = np.random.default_rng(5)
    vals = [0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999997, 0.50000006, 8388607.5,
            8388606.5, 2.0**31, -2.0**31, 2.0**31 - 128, -(2.0**31 - 128),
            3e38, -3e38, 1e-30, -1e-30, 2.0**-126, 2.0**-9, 2.0**-10, 0.25, 0.75]
    bits = [f2b(v) for v in vals] + [PZERO, NZERO, 0x0000_0001, 0x8040_0000]
    bits += [f2b(v) for v in np.concatenate([
        rng.uniform(-300, 300, 1000), rng.integers(-600, 600, 500) / 2.0,
        np.exp(rng.uniform(-30, 23, 1000)) * rng.choice([-1, 1], 1000),
    ]).astype(np.float32)]
    bits += rand_float_bits(rng, 300)
    out = simulate(FloatToInt(), {"value": bits}, ["result"])["result"]
    for x, got in zip(bits, out, strict=True):
        assert got == ref_float_to_int(x), hex(x)
    by_value = dict(zip(vals, out[: len(vals)], strict=True))
    assert (by_value[0.5], by_value[1.5], by_value[-2.5]) == (0, 2, -2)


def test_fma_dut():
    vecs = fma_vectors()
    a, b, c = (list(col) for col in zip(*vecs, strict=True))
    out = simulate(FusedMultiplyAdd(), {"a": a, "b": b, "c": c}, ["result"])["result"]
    for (x, y, z), got in zip(vecs, out, strict=True):
        # Stricter than the contract: the sign of zero results matches too.
        assert got == ref_fma(x, y, z), (hex(x), hex(y), hex(z), hex(got))


class _RequantChain(Elaboratable):
    """acc -> IntToFloat -> fma(., m, +0) -> FloatToInt, as the unit uses it."""

    def __init__(self):
        self.i2f, self.fma, self.f2i = IntToFloat(), FusedMultiplyAdd(), FloatToInt()

    def elaborate(self, platform):
        m = Module()
        i2f, fma, f2i = self.i2f, self.fma, self.f2i
        m.submodules += [i2f, fma, f2i]
        m.d.comb += [fma.a.eq(i2f.result), fma.c.eq(0), f2i.value.eq(fma.result)]
        return m


def test_requant_chain_dut():
    rng = np.random.default_rng(6)
    chain = _RequantChain()
    acc = [int(x) for x in rng.integers(-2**22, 2**22, 500)]
    scale = log_uniform_f32(rng, 1e-6, 10.0, 500)
    got = []

    async def bench(ctx):
        for x, s in zip(acc, scale, strict=True):
            ctx.set(chain.i2f.value, x)
            ctx.set(chain.fma.b, s)
            await ctx.delay(1e-9)
            got.append(ctx.get(chain.f2i.result))

    sim = Simulator(chain)
    sim.add_testbench(bench)
    sim.run()
    for x, s, r in zip(acc, scale, got, strict=True):
        cpu = np.float32(np.float64(np.float32(np.int32(x))) * np.float64(b2f(s)))
        assert r == int(np.rint(cpu)) == ref_float_to_int(ref_fma(ref_int_to_float(x), s, 0))


def test_verilog_generation():
    for dut in (IntToFloat(), IntToFloat(16), FusedMultiplyAdd(), FloatToInt()):
        assert "module" in verilog.convert(dut)
