"""Exact IEEE-754 binary32 building blocks for the requantization unit.

The accelerator has to reproduce onnxruntime's CPU results bit for bit, so
every block here rounds exactly like an x86 CPU (round to nearest, ties to
even).  All components are purely combinational (no clock domain) so that the
caller decides where pipeline registers go.

Domain restrictions shared by the blocks (the requantization datapath never
leaves this domain):

* Subnormal inputs are treated as zero of the same sign (flush to zero).
* Infinity and NaN inputs are not supported (results are unspecified).
* Results whose magnitude, after rounding to 24 bits with an unbounded
  exponent, is below 2**-126 are flushed to a zero carrying the sign of the
  exact result (like x86 with MXCSR.FTZ, which detects tininess after
  rounding).  Overflowing results give infinity of the right sign.

The ``ref_*`` functions are exact pure-Python models (integer / Fraction
arithmetic) of the same behaviour, used by the tests and by other code.
"""

from fractions import Fraction

from amaranth.hdl import C, Cat, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = [
    "IntToFloat", "FusedMultiplyAdd", "FloatToInt",
    "ref_int_to_float", "ref_fma", "ref_float_to_int",
    "bits_to_fraction",
]


def _normalize(m, value, name):
    """Shift ``value`` left until its MSB is set; return ``(norm, lzc)``.

    A log-depth shifter (stages of 2**j, largest first) computes the
    leading-zero count as a by-product: stage ``j`` fires exactly when bit
    ``j`` of the count is set.  This is a handful of wide muxes instead of a
    per-bit priority chain, which keeps Verilator's evaluation cheap.  If
    ``value`` is zero, ``norm`` is zero and ``lzc`` is meaningless; otherwise
    the MSB of ``norm`` is set, so it tells whether ``value`` is non-zero.
    """
    width = len(value)
    stage, fired = value, []
    for j in reversed(range(max(width - 1, 1).bit_length())):
        shift = 1 << j
        zero_top = Signal(name=f"{name}_z{shift}")
        nxt = Signal(width, name=f"{name}_s{shift}")
        m.d.comb += [
            zero_top.eq(stage[width - shift:] == 0),
            # The shifted-out top bits are zero: shift within the width (no wider temporary).
            nxt.eq(Mux(zero_top, Cat(C(0, shift), stage[:width - shift]), stage)),
        ]
        stage, fired = nxt, [zero_top] + fired
    return stage, Cat(*fired)     # fired[0] is the 1-bit stage -> LSB of lzc


def _round_pack(m, sign, exp, norm, name):
    """Round a normalized significand to nearest-even and pack binary32.

    ``norm`` has its MSB set; its top 24 bits are the significand, the next
    bit is the guard bit and everything below it is sticky.  ``exp`` is the
    biased exponent belonging to the MSB, before rounding.  Returns a 32-bit
    value, with FTZ on underflow and infinity on overflow (see module doc).
    The MSB itself (the implicit leading one) is not read: the caller tests it
    for a zero value.
    """
    w = len(norm)
    fraction = norm[w - 24:w - 1]
    guard = norm[w - 25]
    sticky = norm[:w - 25].any()
    # The fraction rounded; bit 23 is the carry out of the significand: with
    # the leading one, 1.11..1 rounds up to 10.00..0.
    rounded = Signal(24, name=f"{name}_rounded")
    final_exp = Signal(signed(len(exp) + 1), name=f"{name}_exp")
    packed = Signal(32, name=f"{name}_packed")
    m.d.comb += [
        rounded.eq(fraction + (guard & (sticky | fraction[0]))),
        # The carry bumps the exponent; the low 23 bits of ``rounded`` are
        # then already zero.
        final_exp.eq(exp + rounded[23]),
    ]
    with m.If(final_exp >= 255):
        m.d.comb += packed.eq(Cat(C(0, 23), C(255, 8), sign))
    with m.Elif(final_exp <= 0):
        m.d.comb += packed.eq(Cat(C(0, 31), sign))
    with m.Else():
        m.d.comb += packed.eq(Cat(rounded[:23], final_exp[:8], sign))
    return packed


class IntToFloat(wiring.Component):
    """Convert a signed integer to binary32, like C's ``(float)int32_t``.

    Rounds to nearest even once the magnitude exceeds 2**24; zero gives +0.0.

    Parameters
    ----------
    width : int
        Width of the signed input, 2..64 (default 32).

    Members
    -------
    value : In(signed(width))
        Integer to convert.
    result : Out(32)
        binary32 bit pattern of the rounded value.
    """

    def __init__(self, width=32):
        if not 2 <= width <= 64:
            raise ValueError(f"width must be in 2..64, not {width}")
        self.width = width
        super().__init__({"value": In(signed(width)), "result": Out(32)})

    def elaborate(self, platform):
        m = Module()
        # Pad narrow inputs on the right so there is always a guard bit.
        pad = max(0, 25 - self.width)
        mag = Signal(self.width + pad)
        # abs() yields unsigned(width), so -2**(width-1) is represented too.
        m.d.comb += mag.eq(Cat(C(0, pad), abs(self.value)) if pad else abs(self.value))
        norm, lzc = _normalize(m, mag, "i2f")
        # MSB at bit width-1 means 2**(width-1): biased exponent 127+width-1.
        exp = Signal(signed(9))
        m.d.comb += exp.eq(126 + self.width - lzc)
        packed = _round_pack(m, self.value < 0, exp, norm, "i2f")
        # The normalized magnitude has its MSB set unless the value is 0.
        m.d.comb += self.result.eq(Mux(norm[-1], packed, 0))
        return m


class FusedMultiplyAdd(wiring.Component):
    """``fma(a, b, c) = a*b + c`` on binary32 with a single rounding.

    Bit-identical to ``fmaf`` / ``_mm256_fmadd_ps`` (round to nearest even)
    for operands that are zero or normal; subnormal inputs count as zero,
    tiny results are flushed to zero and overflow gives infinity (see the
    module docstring).  Infinity/NaN inputs are not handled.  An exact-zero
    sum is +0 unless both addends are -0, as IEEE prescribes.

    Members
    -------
    a, b, c : In(32)
        binary32 bit patterns of the operands.
    result : Out(32)
        binary32 bit pattern of the rounded ``a*b + c``.
    """

    a: In(32)
    b: In(32)
    c: In(32)
    result: Out(32)

    def elaborate(self, platform):
        m = Module()
        a, b, c = self.a, self.b, self.c
        ea, eb, ec = a[23:31], b[23:31], c[23:31]
        # Flush subnormals: a zero exponent field drops the hidden bit too.
        ma = Mux(ea == 0, 0, Cat(a[:23], C(1, 1)))
        mb = Mux(eb == 0, 0, Cat(b[:23], C(1, 1)))
        mc = Mux(ec == 0, 0, Cat(c[:23], C(1, 1)))
        sp, sc = a[31] ^ b[31], c[31]

        # Exact 48-bit product; it sits at bits 1..48 of a 76-bit window
        # (bit 0 collects c's sticky bits).  Window bit i weighs
        # 2**(ea+eb-301+i).
        prod = Signal(48)
        m.d.comb += prod.eq(ma * mb)
        p_zero, c_zero = (ea == 0) | (eb == 0), ec == 0
        # k: position of c's LSB relative to the product's LSB.
        k = Signal(signed(11))
        m.d.comb += k.eq(ec - ea - eb + 150)
        # If c's LSB is more than 2 bits above the product's MSB, the product
        # is below a quarter of c's ulp and the sum rounds to c whatever its
        # exact size (only its sign and non-zeroness matter), so c is pinned at
        # k=50 (bits 51..74): the rounded result is the same, and the window
        # still holds both operands exactly.  A zero product also pins c, so
        # c is never lost to sticky because of a meaningless product exponent.
        pin_c = Signal()
        m.d.comb += pin_c.eq(p_zero | ((k > 50) & ~c_zero))
        shift = Signal(7)
        with m.If(pin_c):
            m.d.comb += shift.eq(0)
        with m.Elif(k < -26):            # c entirely below the window: sticky
            m.d.comb += shift.eq(76)
        with m.Else():
            m.d.comb += shift.eq(50 - k)
        # Align c: 25 extra low bits catch what falls below the window; they
        # only become non-zero when c is below the product's LSB, i.e. when
        # the sum keeps its MSB at bit >= 46 and the result's guard bit is far
        # above bit 0, so folding them into bit 0 cannot change the rounding.
        aligned = Signal(100)
        c_al = Signal(75)
        m.d.comb += [
            aligned.eq(Cat(C(0, 76), mc) >> shift),
            c_al.eq(aligned[25:] | aligned[:25].any()),
        ]
        # Signed exact sum (as wide as the addition), then sign/magnitude
        # (handles any cancellation); the magnitude is below 2**49 + 2**75.
        sum_value = Mux(sp, -Cat(C(0, 1), prod), Cat(C(0, 1), prod)) + Mux(sc, -c_al, c_al)
        total = Signal(sum_value.shape())
        m.d.comb += total.eq(sum_value)
        mag = Signal(76)
        m.d.comb += mag.eq(abs(total))
        norm, lzc = _normalize(m, mag, "fma")

        # Biased exponent of the window MSB (bit 75): window bit 0 weighs
        # 2**(ec-201) when c is pinned and 2**(ea+eb-301) otherwise.
        # As wide as the subtraction, which holds every value (no truncation).
        exp_value = Mux(pin_c, ec + 1, ea + eb - 99) - lzc
        exp = Signal(exp_value.shape())
        m.d.comb += exp.eq(exp_value)
        packed = _round_pack(m, total < 0, exp, norm, "fma")
        # Exact zero (the normalized magnitude's MSB is clear): -0 only for
        # (-0) + (-0); x + (-x) is +0.
        m.d.comb += self.result.eq(Mux(norm[-1], packed, Cat(C(0, 31), sp & sc)))
        return m


class FloatToInt(wiring.Component):
    """Convert binary32 to int32, rounding to nearest even, saturating.

    Matches ``_mm_cvtps_epi32`` in the default rounding mode for
    |value| < 2**31 (0.5 -> 0, 1.5 -> 2, -2.5 -> -2).  Magnitudes >= 2**31
    saturate to 2**31-1 (positive) or -2**31 (negative); x86 returns
    -2**31 for both, but callers clamp to int8 so the correct side matters
    more.  Zero, subnormals and tiny values give 0.  Infinities saturate
    like large finite values; NaN gives a saturated value by its sign bit.

    Members
    -------
    value : In(32)
        binary32 bit pattern.
    result : Out(signed(32))
        Rounded, saturated integer.
    """

    value: In(32)
    result: Out(signed(32))

    def elaborate(self, platform):
        m = Module()
        v = self.value
        e, sign = v[23:31], v[31]
        mant = Cat(v[:23], C(1, 1))
        # Fixed point with 32 fraction bits: mant * 2**(e-150) * 2**32.
        # e < 118 means |v| < 2**-9, which rounds to 0 anyway; e >= 158
        # means |v| >= 2**31 and saturates, so the shift is 0..39.
        fixed = Signal(64)
        m.d.comb += fixed.eq(mant << (e - 118)[:6])
        whole, half, rest = fixed[32:63], fixed[31], fixed[:31].any()
        mag = Signal(32)
        m.d.comb += mag.eq(whole + (half & (rest | whole[0])))
        with m.If(e < 118):
            m.d.comb += self.result.eq(0)
        with m.Elif(e >= 158):
            m.d.comb += self.result.eq(Mux(sign, -2**31, 2**31 - 1))
        with m.Else():
            # mag <= (2**24-1) * 2**7 < 2**31: no overflow after rounding.
            m.d.comb += self.result.eq(Mux(sign, -mag, mag))
        return m


# ---------------------------------------------------------------- references

def bits_to_fraction(bits):
    """Exact value of a binary32 bit pattern, with subnormals flushed to 0.

    Raises ``ValueError`` for infinity/NaN.  Returns ``(sign, Fraction)``
    where ``Fraction`` is the magnitude, so that -0 keeps its sign.
    """
    bits &= 0xFFFF_FFFF
    sign, exp, frac = bits >> 31, (bits >> 23) & 0xFF, bits & 0x7F_FFFF
    if exp == 255:
        raise ValueError(f"infinity/NaN not supported: {bits:#010x}")
    if exp == 0:
        return sign, Fraction(0)
    return sign, Fraction(frac | 1 << 23) * Fraction(2) ** (exp - 150)


def _round_to_bits(sign, mag):
    """Round ``mag > 0`` to binary32 (nearest even), FTZ after rounding."""
    e = mag.numerator.bit_length() - mag.denominator.bit_length()
    if mag < Fraction(2) ** e:
        e -= 1                              # now 2**e <= mag < 2**(e+1)
    sig = round(mag / Fraction(2) ** (e - 23))   # round() on Fraction: ties to even
    if sig == 1 << 24:
        sig, e = 1 << 23, e + 1
    biased = e + 127
    if biased >= 255:
        return sign << 31 | 0x7F80_0000
    if biased <= 0:
        return sign << 31
    return sign << 31 | biased << 23 | (sig & 0x7F_FFFF)


def ref_int_to_float(x):
    """binary32 bit pattern of ``(float)x`` (round to nearest even)."""
    if x == 0:
        return 0
    return _round_to_bits(int(x < 0), Fraction(abs(x)))


def ref_fma(a_bits, b_bits, c_bits):
    """binary32 bit pattern of ``fma(a, b, c)``, exact model of the hardware."""
    sa, fa = bits_to_fraction(a_bits)
    sb, fb = bits_to_fraction(b_bits)
    sc, fc = bits_to_fraction(c_bits)
    sp = sa ^ sb
    total = (-1) ** sp * fa * fb + (-1) ** sc * fc
    if total == 0:
        return (sp & sc) << 31
    return _round_to_bits(int(total < 0), abs(total))


def ref_float_to_int(bits):
    """Round binary32 ``bits`` to nearest even int, saturating to int32."""
    bits &= 0xFFFF_FFFF
    if (bits >> 23) & 0xFF == 255:
        return -2**31 if bits >> 31 else 2**31 - 1
    sign, mag = bits_to_fraction(bits)
    r = round(-mag if sign else mag)
    return max(-2**31, min(2**31 - 1, r))
