"""Lookup tables of quantized elementwise functions, computed as onnxruntime computes them.

The PPU applies a 256-entry table to an output byte (``docs/isa.md``, "Lookup
tables"), so any function of one int8/uint8 value is exact if its table is.
onnxruntime's CPU kernels build such tables (``qlinear_lookup_table.cc``) by
dequantizing all 256 inputs, running the float function over them and
quantizing the results with ``MlasQuantizeLinear``; its float operators
(between a DequantizeLinear and a QuantizeLinear) do the same arithmetic
element by element. This module repeats that arithmetic in float32 numpy:

* dequantize: ``float32(scale * float32(q - zero_point))``;
* the function: ``MlasComputeLogistic`` and ``MlasComputeTanh`` are Eigen's
  rational approximations, evaluated with fused multiply-adds (the x86-64 FMA3
  kernels onnxruntime picks on AVX2 machines); HardSigmoid is
  ``clip(alpha * x + beta, 0, 1)``, HardSwish ``x * HardSigmoid(x; 1/6, 1/2)``,
  LeakyRelu ``x if x >= 0 else alpha * x``, each operation rounded to float32;
* quantize: ``x / scale`` rounded to float32, clamped to the type's range less
  the zero point, rounded half to even, plus the zero point.

SiLU (``x * sigmoid(x)``) is the QLinearMul of a byte and its own sigmoid's
byte, so it is a table too: :func:`qlinear_mul` follows onnxruntime's
QLinearMul kernel (the integer product of the zero-point-free inputs times the
float32 ratio ``sa * sb / sc``, plus the output zero point, rounded half to
even, saturated), :func:`float_mul` its float Mul between DequantizeLinear and
QuantizeLinear nodes. ``tests/compiler/test_tables.py`` checks every table
against onnxruntime on all 256 inputs.
"""

from __future__ import annotations

import numpy as np

from ..hw.numerics import fma_f32

__all__ = ["UNARY_FUNCTIONS", "all_inputs", "dequantize", "quantize", "unary_table", "qlinear_mul", "float_mul",
           "compose", "clamp_table", "apply_table"]

_F = np.float32

_LOGISTIC_P = [_F(v) for v in (4.37031012579801e-11, 1.15627324459942e-07, 6.08574864600143e-05,
                               8.51377133304701e-03, 2.48287947061529e-01)]
_LOGISTIC_Q = [_F(v) for v in (6.10247389755681e-13, 5.76102136993427e-09, 6.29106785017040e-06,
                               1.70198817374094e-03, 1.16817656904453e-01, 9.93151921023180e-01)]
_TANH_P = [_F(v) for v in (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11,
                           5.12229709037114e-08, 1.48572235717979e-05, 6.37261928875436e-04,
                           4.89352455891786e-03)]
_TANH_Q = [_F(v) for v in (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03,
                           4.89352518554385e-03)]


def _dtype(signed: bool):
    return np.int8 if signed else np.uint8


def all_inputs(signed: bool) -> np.ndarray:
    """The 256 values of the type in table order: entry ``i`` is the byte ``i`` (an int8 ``-1`` is 255)."""
    return np.arange(256, dtype=np.uint8).view(_dtype(signed))


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """``float32(scale * float32(q - zero_point))``."""
    return (_F(scale) * (q.astype(np.int32) - int(zero_point)).astype(_F)).astype(_F)


def quantize(x: np.ndarray, scale: float, zero_point: int, signed: bool) -> np.ndarray:
    """``MlasQuantizeLinear``: ``x / scale``, clamped, rounded half to even, plus the zero point."""
    info = np.iinfo(_dtype(signed))
    v = (np.asarray(x, _F) / _F(scale)).astype(_F)
    v = np.clip(v, _F(info.min - int(zero_point)), _F(info.max - int(zero_point)))
    return (np.rint(v).astype(np.int32) + int(zero_point)).astype(_dtype(signed))


def _rational(v: np.ndarray, p: list, q: list) -> np.ndarray:
    """``v * P(v^2) / Q(v^2)`` by Horner's rule with fused multiply-adds (MLAS's FMA3 kernels)."""
    squared = (v * v).astype(_F)
    num = fma_f32(squared, p[0], p[1])
    for c in p[2:]:
        num = fma_f32(num, squared, c)
    num = (num * v).astype(_F)
    den = fma_f32(squared, q[0], q[1])
    for c in q[2:]:
        den = fma_f32(den, squared, c)
    return (num / den).astype(_F)


def _logistic(x, **_):
    v = np.clip(x, _F(-18.0), _F(18.0)).astype(_F)
    return np.clip((_rational(v, _LOGISTIC_P, _LOGISTIC_Q) + _F(0.5)).astype(_F), _F(0.0), _F(1.0))


def _tanh(x, **_):
    return _rational(np.clip(x, _F(-9.0), _F(9.0)).astype(_F), _TANH_P, _TANH_Q)


def _hard_sigmoid(x, alpha=0.2, beta=0.5):
    return np.clip(((_F(alpha) * x).astype(_F) + _F(beta)).astype(_F), _F(0.0), _F(1.0))


def _hard_swish(x, **_):
    return (x * _hard_sigmoid(x, alpha=_F(1.0 / 6.0), beta=_F(0.5))).astype(_F)


def _leaky_relu(x, alpha=0.01):
    return np.where(x >= 0, x, (_F(alpha) * x).astype(_F)).astype(_F)


#: ONNX op -> its float32 function (keyword arguments: the op's attributes).
UNARY_FUNCTIONS = {"Sigmoid": _logistic, "Tanh": _tanh, "HardSigmoid": _hard_sigmoid, "HardSwish": _hard_swish,
                   "LeakyRelu": _leaky_relu}


def unary_table(op: str, x_scale: float, x_zero: int, x_signed: bool, y_scale: float, y_zero: int,
                y_signed: bool, **attrs) -> np.ndarray:
    """The table of ``quantize(op(dequantize(x)))``: 256 output bytes (uint8), indexed by the input byte.

    Parameters
    ----------
    op : str
        A key of :data:`UNARY_FUNCTIONS`.
    x_scale, x_zero, x_signed, y_scale, y_zero, y_signed
        The input's and the output's quantization.
    **attrs
        The op's float attributes (``alpha``, ``beta``).
    """
    x = dequantize(all_inputs(x_signed), x_scale, x_zero)
    y = UNARY_FUNCTIONS[op](x, **{k: _F(v) for k, v in attrs.items()})
    return quantize(y, y_scale, y_zero, y_signed).view(np.uint8)


def qlinear_mul(a: np.ndarray, a_scale, a_zero, b: np.ndarray, b_scale, b_zero, c_scale, c_zero,
                signed: bool) -> np.ndarray:
    """onnxruntime's QLinearMul: ``sat(rne(float32(float32((a - za)(b - zb)) * ratio) + zc))`` with
    ``ratio = float32(float32(sa * sb) / sc)``."""
    info = np.iinfo(_dtype(signed))
    ratio = _F(_F(_F(a_scale) * _F(b_scale)) / _F(c_scale))
    product = (a.astype(np.int32) - int(a_zero)) * (b.astype(np.int32) - int(b_zero))
    r = ((product.astype(_F) * ratio).astype(_F) + _F(c_zero)).astype(_F)
    return np.clip(np.rint(r).astype(np.int64), info.min, info.max).astype(_dtype(signed))


def float_mul(a: np.ndarray, a_scale, a_zero, b: np.ndarray, b_scale, b_zero, c_scale, c_zero,
              signed: bool) -> np.ndarray:
    """A float Mul between DequantizeLinear and QuantizeLinear nodes (as onnxruntime runs it when it does not
    fuse them into QLinearMul): ``quantize(dequantize(a) * dequantize(b))``."""
    product = (dequantize(a, a_scale, a_zero) * dequantize(b, b_scale, b_zero)).astype(_F)
    return quantize(product, c_scale, c_zero, signed)


def compose(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The table of ``second`` applied after ``first``."""
    return second[first]


def clamp_table(table: np.ndarray, lo: int, hi: int, signed: bool) -> np.ndarray:
    """``table`` with its outputs clamped to ``[lo, hi]`` (values of the output type)."""
    return np.clip(table.view(_dtype(signed)), lo, hi).astype(_dtype(signed)).view(np.uint8)


def apply_table(table: np.ndarray, x: np.ndarray, out_signed: bool) -> np.ndarray:
    """``table`` looked up with the bytes of ``x``: the output of the output type."""
    return table[np.asarray(x).view(np.uint8)].view(_dtype(out_signed))
