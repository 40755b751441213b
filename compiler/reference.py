"""Numpy reference of each quantized operator (rung 2 of the verification ladder).

Written for clarity, independently of the lowering and the golden simulator:
the arithmetic follows onnxruntime's quantized kernels (int32 accumulation of
``(x - x_zp) * w`` with zero-point padding, float32 requantization with round
half to even, QLinearAdd as its AVX2 kernel computes it).
"""

from __future__ import annotations

import numpy as np

# The ADD parameters are derived in one place; the arithmetic below stays independent.
from ..hw.numerics import qlinear_add_params

__all__ = ["qrange", "requantize", "conv2d", "depthwise_conv2d", "fully_connected", "max_pool",
           "avg_pool", "qlinear_add", "qlinear_add_params", "run_graph", "run_graph_outputs"]


def qrange(dtype) -> tuple[int, int]:
    info = np.iinfo(np.dtype(dtype))
    return int(info.min), int(info.max)


def requantize(acc: np.ndarray, multiplier: np.ndarray, zero_point: int, dtype,
               clamp: tuple[int, int] | None = None) -> np.ndarray:
    """int32 accumulators (bias included) to int8/uint8, as onnxruntime's QLinearConv/QGemm.

    ``multiplier`` broadcasts against ``acc`` (per output channel on axis 0).
    """
    lo, hi = clamp if clamp is not None else qrange(dtype)
    scaled = acc.astype(np.int32).astype(np.float32) * np.asarray(multiplier, dtype=np.float32)
    rounded = np.rint(np.clip(scaled, -2.0**31, 2.0**31 - 128)).astype(np.int64)
    return np.clip(rounded + zero_point, lo, hi).astype(dtype)


def _pad(x: np.ndarray, pad: int, value: int) -> np.ndarray:
    return np.pad(x.astype(np.int64), ((0, 0), (pad, pad), (pad, pad)), constant_values=value)


def _windows(x: np.ndarray, kernel: int, stride: int, out_h: int, out_w: int) -> np.ndarray:
    """(C, out_h, out_w, k, k) view of sliding windows."""
    view = np.lib.stride_tricks.sliding_window_view(x, (kernel, kernel), axis=(1, 2))
    return view[:, ::stride, ::stride][:, :out_h, :out_w]


def out_size(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def conv2d(x, x_zp, weight, bias, stride, pad, multiplier, y_zp, y_dtype, clamp=None):
    """QLinearConv (groups=1). x: (C, H, W); weight: (K, C, k, k) int8; bias: (K,) int32."""
    channels, height, width = x.shape
    kernel = weight.shape[2]
    out_h, out_w = out_size(height, kernel, stride, pad), out_size(width, kernel, stride, pad)
    windows = _windows(_pad(x, pad, int(x_zp)) - int(x_zp), kernel, stride, out_h, out_w)
    acc = np.einsum("chwyx,kcyx->khw", windows, weight.astype(np.int64), optimize=True)
    acc = (acc + bias.astype(np.int64)[:, None, None]).astype(np.int64)
    acc = ((acc + 2**31) % 2**32 - 2**31).astype(np.int32)
    return requantize(acc, np.asarray(multiplier, np.float32)[:, None, None], y_zp, y_dtype, clamp)


def depthwise_conv2d(x, x_zp, weight, bias, stride, pad, multiplier, y_zp, y_dtype, clamp=None):
    """QLinearConv with groups = channels. weight: (C, 1, k, k)."""
    channels, height, width = x.shape
    kernel = weight.shape[2]
    out_h, out_w = out_size(height, kernel, stride, pad), out_size(width, kernel, stride, pad)
    windows = _windows(_pad(x, pad, int(x_zp)) - int(x_zp), kernel, stride, out_h, out_w)
    acc = np.einsum("chwyx,cyx->chw", windows, weight[:, 0].astype(np.int64))
    acc = (acc + bias.astype(np.int64)[:, None, None])
    acc = ((acc + 2**31) % 2**32 - 2**31).astype(np.int32)
    return requantize(acc, np.asarray(multiplier, np.float32)[:, None, None], y_zp, y_dtype, clamp)


def fully_connected(x, x_zp, weight, bias, multiplier, y_zp, y_dtype, clamp=None):
    """QGemm with one row: x (K,), weight (N, K) int8, bias (N,)."""
    acc = weight.astype(np.int64) @ (x.astype(np.int64) - int(x_zp)) + bias.astype(np.int64)
    acc = ((acc + 2**31) % 2**32 - 2**31).astype(np.int32)
    return requantize(acc, np.asarray(multiplier, np.float32), y_zp, y_dtype, clamp)


def max_pool(x, kernel, stride, pad):
    """MaxPool on quantized values (exact: max commutes with the monotonic dequantization)."""
    lo, _ = qrange(x.dtype)
    _, height, width = x.shape
    out_h, out_w = out_size(height, kernel, stride, pad), out_size(width, kernel, stride, pad)
    windows = _windows(_pad(x, pad, lo), kernel, stride, out_h, out_w)
    return windows.max(axis=(3, 4)).astype(x.dtype)


def avg_pool(x, x_zp, kernel, stride, pad, multiplier, y_zp, y_dtype):
    """Average pooling with padding counted (count_include_pad): the window sum of
    ``x - x_zp`` times ``multiplier = x_scale / (y_scale * k * k)``, requantized."""
    _, height, width = x.shape
    out_h, out_w = out_size(height, kernel, stride, pad), out_size(width, kernel, stride, pad)
    windows = _windows(_pad(x, pad, int(x_zp)) - int(x_zp), kernel, stride, out_h, out_w)
    acc = windows.sum(axis=(3, 4)).astype(np.int32)
    return requantize(acc, np.float32(multiplier), y_zp, y_dtype)


def _fma_f32(a, b, c):
    """fma for float32 ``a`` holding small integers (|a| < 2^9): a*b is exact in float64,
    and the float64 sum is correctly rounded to float32 except in rare double-rounding
    cases, which are fixed up with exact integer arithmetic."""
    a64, b64, c64 = (np.asarray(v, dtype=np.float64) for v in (a, b, c))
    exact = a64 * b64 + c64
    result = exact.astype(np.float32)
    # Double rounding is only possible when the float64 sum was itself inexact and landed
    # exactly halfway between two float32 values.
    lower = np.nextafter(result, np.float32(-np.inf))
    upper = np.nextafter(result, np.float32(np.inf))
    halfway = (exact == (result.astype(np.float64) + lower.astype(np.float64)) / 2) | \
              (exact == (result.astype(np.float64) + upper.astype(np.float64)) / 2)
    if np.any(halfway):
        from fractions import Fraction
        flat = result.reshape(-1)
        for i in np.flatnonzero(halfway.reshape(-1)):
            av, bv, cv = (float(np.broadcast_to(v, exact.shape).reshape(-1)[i]) for v in (a64, b64, c64))
            true = Fraction(av) * Fraction(bv) + Fraction(cv)
            candidates = sorted({float(flat[i]), float(np.nextafter(flat[i], np.float32(-np.inf))),
                                 float(np.nextafter(flat[i], np.float32(np.inf)))},
                                key=lambda f: (abs(Fraction(f) - true), int(np.float32(f).view(np.uint32)) & 1))
            flat[i] = np.float32(candidates[0])
    return result


def qlinear_add(a, a_scale, a_zp, b, b_scale, b_zp, c_scale, c_zp, dtype, clamp=None):
    """QLinearAdd of two same-shape quantized tensors."""
    ra, rb, fixed = qlinear_add_params(a_scale, a_zp, b_scale, b_zp, c_scale, c_zp)
    t = _fma_f32(b.astype(np.float32), rb, fixed)
    r = _fma_f32(a.astype(np.float32), ra, t)
    lo, hi = clamp if clamp is not None else qrange(dtype)
    return np.clip(np.rint(r).astype(np.int64), lo, hi).astype(dtype)


def run_graph(graph, x: np.ndarray) -> np.ndarray:
    """Evaluate a :class:`~dlfusion.compiler.ir.Graph` on the quantized input ``x`` (C, H, W)
    with the ops above: the numpy reference of a whole compiled network (its first output; all of
    them: :func:`run_graph_outputs`)."""
    return run_graph_outputs(graph, x)[0]


def run_graph_outputs(graph, x: np.ndarray) -> list[np.ndarray]:
    """Every output of the graph on the quantized input ``x``, in the order of ``graph.outputs``."""
    from .ir import Op, computed
    from .tables import apply_table

    values = {graph.input: x}
    for node in graph.nodes:
        out = computed(graph, node)     # what the op computes: the index of its table, if it has one
        ins = [values[name] for name in node.inputs]
        a = node.attrs
        source = graph.tensors[node.inputs[0]]
        dtype = np.int8 if out.signed else np.uint8
        if node.op in (Op.CONV, Op.FC):
            y = conv2d(ins[0], source.zero_point, a.weight, a.bias, a.stride, a.pad, a.multiplier,
                       out.zero_point, dtype, a.clamp)
        elif node.op is Op.DEPTHWISE:
            y = depthwise_conv2d(ins[0], source.zero_point, a.weight, a.bias, a.stride, a.pad,
                                 a.multiplier, out.zero_point, dtype, a.clamp)
        elif node.op is Op.MAXPOOL:
            value = ins[0]
            if a.ceil_mode:
                # The extra bottom/right windows see padding (the lowest value), like ONNX.
                _, h, w = value.shape
                oh, ow = out.shape[1:]
                extra_h = max(0, (oh - 1) * a.stride + a.kernel - (h + 2 * a.pad))
                extra_w = max(0, (ow - 1) * a.stride + a.kernel - (w + 2 * a.pad))
                value = np.pad(value, ((0, 0), (0, extra_h), (0, extra_w)), constant_values=qrange(value.dtype)[0])
            y = max_pool(value, a.kernel, a.stride, a.pad)[:, :out.shape[1], :out.shape[2]]
            y = np.clip(y, *a.clamp).astype(value.dtype)
        elif node.op is Op.AVGPOOL:
            if a.ceil_mode:
                raise ValueError(f"{node.name}: average pooling with ceil_mode has no reference")
            y = avg_pool(ins[0], source.zero_point, a.kernel, a.stride, a.pad, a.multiplier,
                         out.zero_point, dtype)
            y = np.clip(y, *a.clamp).astype(dtype)
        elif node.op is Op.ADD:
            y = qlinear_add(ins[0], a.a_scale, a.a_zp, ins[1], a.b_scale, a.b_zp, out.scale,
                            out.zero_point, dtype, a.clamp)
        elif node.op is Op.CONCAT:
            y = np.concatenate(ins, axis=0)
        elif node.op is Op.UPSAMPLE:
            fh, fw = a.factors
            y = np.repeat(np.repeat(ins[0], fh, axis=1), fw, axis=2)
        elif node.op is Op.LOOKUP:
            y = ins[0]
        elif node.op is Op.SCALE:
            scale = sum(part.astype(np.int32) for part in ins[1:])
            y = requantize((ins[0].astype(np.int32) - source.zero_point) * scale, a.multiplier, out.zero_point,
                           dtype, a.clamp)
        else:
            raise ValueError(f"{node.name}: no reference for {node.op}")
        if a.table is not None:
            y = apply_table(a.table, y, graph.tensors[node.output].signed)
        values[node.output] = y
    return [values[name] for name in graph.outputs]
