"""The arithmetic of the post-processing unit's float units, in numpy: its one definition.

The RTL's float blocks (:mod:`.fp`), the golden simulator (``dlfusion.sim.golden``)
and the compiler's numpy reference (``dlfusion.compiler.reference``) all follow it.

Bit-exact IEEE binary32 with round to nearest even (:func:`fma_f32`), subnormal
operands flushed to zero and results below ``2**-126`` after rounding flushed
to a zero of the result's sign, as :mod:`.fp` does. Conversion to an
integer rounds half to even and saturates by sign (infinities and NaN as huge
values of their sign bit).
"""

from __future__ import annotations

import numpy as np

__all__ = ["fma_f32", "requantize", "qlinear_add", "qlinear_add_params", "round_to_output", "flush_subnormal", "wrap32"]

_F32_MIN_NORMAL = 2.0 ** -126
_SMALL = 2.0 ** -100          # below this an fma result is rescaled before rounding
_RESCALE = 2.0 ** 100


def flush_subnormal(x) -> np.ndarray:
    """Flush binary32 subnormals to a zero of the same sign.

    Parameters
    ----------
    x : array_like
        Values converted to float32.

    Returns
    -------
    numpy.ndarray
        float32 array; infinities and NaN pass through unchanged.
    """
    x = np.asarray(x, dtype=np.float32)
    return np.where(np.abs(x) < np.float32(_F32_MIN_NORMAL), np.copysign(np.float32(0), x), x)


def _round_f32(s: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Round the exact value ``s + e`` to float32 (nearest even), where ``s = fl64(s + e)``.

    ``s.astype(float32)`` is correct unless ``s`` is exactly half-way between two
    float32 values and ``e`` is non-zero: then ``e`` decides the direction.
    """
    r = s.astype(np.float32)
    r64 = r.astype(np.float64)
    # An overflow to infinity behaves as if the next value after FLT_MAX were 2**128.
    overflow = np.isinf(r) & np.isfinite(s)
    r64 = np.where(overflow, np.copysign(2.0 ** 128, s), r64)
    toward = np.where(s > r64, np.float32(np.inf), np.float32(-np.inf))
    neighbour = np.nextafter(np.where(overflow, np.copysign(np.float32(np.inf), r), r), toward)
    midpoint = (r64 + neighbour.astype(np.float64)) * 0.5
    tie = (s != r64) & (s == midpoint) & (e != 0) & np.isfinite(s)
    # At a midpoint astype chose the even neighbour; e says which side the exact value is on.
    go_neighbour = tie & ((e > 0) == (neighbour.astype(np.float64) > r64))
    return np.where(go_neighbour, neighbour, r)


def fma_f32(a, b, c) -> np.ndarray:
    """Fused multiply-add on binary32: ``a * b + c`` rounded once to nearest even.

    Exact for all finite binary32 operands (the product is exact in float64; the
    sum's float64 rounding error is recovered with TwoSum and settles the ties that
    double rounding would get wrong). Subnormal operands count as zeros of their
    sign and results below ``2**-126`` after rounding (with an unbounded exponent)
    are flushed to a zero of the exact result's sign, like ``dlfusion.hw.fp``;
    overflow gives infinity.

    Parameters
    ----------
    a, b, c : array_like
        Operands, converted to float32 and broadcast together.

    Returns
    -------
    numpy.ndarray
        float32 result.
    """
    a64, b64, c64 = (flush_subnormal(v).astype(np.float64) for v in (a, b, c))
    with np.errstate(all="ignore"):
        p = a64 * b64                      # exact: two 24-bit significands
        s = p + c64
        bv = s - p                         # TwoSum: p + c == s + e exactly
        e = (p - (s - bv)) + (c64 - bv)
        e = np.where(np.isfinite(s), e, 0.0)
        scale = np.where(np.abs(s) < _SMALL, _RESCALE, 1.0)   # round tiny results as if normal
        r = _round_f32(s * scale, e * scale).astype(np.float64) / scale
        tiny = np.abs(r) < _F32_MIN_NORMAL
        r = np.where(tiny, np.copysign(0.0, s), r)
        return r.astype(np.float32)


def round_to_output(r, out_zp: int, clamp_lo: int, clamp_hi: int, out_signed: bool) -> np.ndarray:
    """``clamp(round_half_even(r) + out_zp, clamp_lo, clamp_hi)`` as output bytes.

    Parameters
    ----------
    r : array_like
        float32 values. The rounding saturates to int32 (infinities and NaN by
        their sign bit); the zero point is added without wrapping.
    out_zp, clamp_lo, clamp_hi : int
        Logical values (-128..127 if ``out_signed`` else 0..255).
        ``clamp(y, lo, hi) = min(max(y, lo), hi)``.
    out_signed : bool
        Output int8 (else uint8).

    Returns
    -------
    numpy.ndarray
        int8 or uint8 array.
    """
    r = np.asarray(r, dtype=np.float32)
    r = np.where(np.isnan(r), np.copysign(np.float32(np.inf), r), r)
    y = np.rint(r).astype(np.float64)
    y = np.clip(y, -2.0 ** 31, 2.0 ** 31 - 1) + out_zp
    y = np.minimum(np.maximum(y, clamp_lo), clamp_hi)
    return y.astype(np.int64).astype(np.int8 if out_signed else np.uint8)


def wrap32(x: np.ndarray) -> np.ndarray:
    return (np.asarray(x, dtype=np.int64) & 0xFFFFFFFF).astype(np.uint32).view(np.int32)


def requantize(acc, bias, mult, *, out_zp: int, clamp_lo: int, clamp_hi: int,
               out_signed: bool) -> np.ndarray:
    """The REQUANT arithmetic: ``clamp(rne(float32(acc + bias) * mult) + out_zp)``.

    Parameters
    ----------
    acc : array_like of int32, shape (..., L)
        Accumulators.
    bias : array_like of int32, shape (L,)
        Added with int32 wrap-around.
    mult : array_like of float32, shape (L,)
        Multipliers; the product is rounded once (``fma(x, mult, +0.0)``).
    out_zp, clamp_lo, clamp_hi, out_signed
        See :func:`round_to_output`.

    Returns
    -------
    numpy.ndarray
        int8 or uint8 array of the shape of ``acc``.
    """
    x = wrap32(np.asarray(acc, dtype=np.int64) + np.asarray(bias, dtype=np.int64))
    f = fma_f32(x.astype(np.float32), np.asarray(mult, dtype=np.float32), np.float32(0.0))
    return round_to_output(f, out_zp, clamp_lo, clamp_hi, out_signed)


def qlinear_add(a, b, ra, rb, fixed, *, out_zp: int, clamp_lo: int, clamp_hi: int,
                out_signed: bool) -> np.ndarray:
    """The ADD arithmetic: ``r = fma(a, ra, fma(b, rb, fixed))``, then :func:`round_to_output`.

    Parameters
    ----------
    a, b : array_like of int, shape (..., L)
        Raw int8/uint8 input values (their zero points live in ``fixed``).
    ra, rb, fixed : array_like of float32, shape (L,)
        See :func:`qlinear_add_params`.
    out_zp, clamp_lo, clamp_hi, out_signed
        See :func:`round_to_output`.

    Returns
    -------
    numpy.ndarray
        int8 or uint8 array.
    """
    a = np.asarray(a).astype(np.float32)
    b = np.asarray(b).astype(np.float32)
    t = fma_f32(b, rb, fixed)
    r = fma_f32(a, ra, t)
    return round_to_output(r, out_zp, clamp_lo, clamp_hi, out_signed)


def qlinear_add_params(sa: float, za: int, sb: float, zb: int, sc: float, zc: int):
    """ADD parameters reproducing onnxruntime's QLinearAdd (its AVX2 kernel).

    ``ra = float32(sa / sc)``, ``rb = float32(sb / sc)`` and
    ``fixed = float32(zc) - fma(ra, za, float32(rb * zb))`` (float32 arithmetic);
    the ADD instruction then uses ``out_zp = 0`` and clamps to the output type.

    Parameters
    ----------
    sa, sb, sc : float
        Scales of A, B and the output (as float32).
    za, zb, zc : int
        Zero points of A, B and the output.

    Returns
    -------
    tuple of numpy.float32
        ``(ra, rb, fixed)``.
    """
    sa, sb, sc = np.float32(sa), np.float32(sb), np.float32(sc)
    ra = np.float32(sa / sc)
    rb = np.float32(sb / sc)
    with np.errstate(all="ignore"):
        inner = fma_f32(ra, np.float32(za), np.float32(rb * np.float32(zb)))
        fixed = np.float32(np.float32(zc) - inner)
    return ra, rb, fixed


