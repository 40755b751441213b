"""Converters of onnxruntime's QOperator ops into the graph IR (see :mod:`.registry`).

Requantization multipliers are computed as onnxruntime computes them:
``float32(float32(x_scale * w_scale[c]) / y_scale)``. Activation functions
become :attr:`~dlfusion.compiler.ir.Op.CLAMP` nodes, which the ``fold_clamps``
pass folds into their producers; a QLinearConcat input with another
quantization is rescaled by the ``rescale_concat_inputs`` pass.
"""

from __future__ import annotations

import numpy as np

from ..ir import IRError, Node, Op
from .registry import Context, converter, f32

__all__ = []


def _name(node) -> str:
    return node.name or node.output[0]


def _requant_multiplier(x_scale, w_scale, y_scale, channels: int) -> np.ndarray:
    w_scale = np.broadcast_to(np.asarray(w_scale, np.float32).reshape(-1), (channels,))
    return (np.float32(x_scale) * w_scale).astype(np.float32) / np.float32(y_scale)


@converter("QuantizeLinear")
def quantize_linear(ctx: Context, node) -> None:
    ir = ctx.ir
    if node.input[0] != ctx.model_input.name or ir.input:
        raise IRError(f"{ctx.where(node)}: only the model input may be quantized (QuantizeLinear); "
                      "this model quantizes an intermediate tensor")
    scale, zero = ctx.const(node.input[1], node), ctx.const(node.input[2], node)
    ctx.add_tensor(node.output[0], ctx.dims[1:], scale, zero)
    ir.input = node.output[0]
    ir.input_quant = {"name": ctx.model_input.name, "scale": float(f32(scale)), "zero_point": int(zero),
                      "dtype": str(np.asarray(zero).dtype), "shape": [1, *ctx.dims[1:]]}


@converter("DequantizeLinear")
def dequantize_linear(ctx: Context, node) -> None:
    source = ctx.tensor(node.input[0], node)
    if node.output[0] != ctx.onnx_graph.output[0].name:
        raise IRError(f"{ctx.where(node)}: only the model output may be dequantized; this model dequantizes "
                      f"{source.name!r} in the middle (a float op follows it)")
    ctx.ir.output = source.name
    ctx.ir.output_dequant = {"name": node.output[0], "scale": float(f32(ctx.const(node.input[1], node))),
                             "zero_point": int(ctx.const(node.input[2], node))}


@converter("QLinearConv")
def qlinear_conv(ctx: Context, node) -> None:
    where, a = ctx.where(node), ctx.attrs(node)
    x = ctx.tensor(node.input[0], node)
    w = ctx.const(node.input[3], node)
    if np.any(ctx.const(node.input[5], node) != 0):
        raise IRError(f"{where}: weight zero points must be 0 (symmetric int8 weights)")
    if w.dtype != np.int8:
        raise IRError(f"{where}: weights must be int8, not {w.dtype}")
    k, s, p = ctx.window(node, a, list(w.shape[2:]))
    group = int(a.get("group", 1))
    c, h, wd = x.shape
    out_channels = w.shape[0]
    bias = ctx.const(node.input[8], node).astype(np.int32) if len(node.input) > 8 and node.input[8] \
        else np.zeros(out_channels, np.int32)
    multiplier = _requant_multiplier(f32(ctx.const(node.input[1], node)), ctx.const(node.input[4], node),
                                     f32(ctx.const(node.input[6], node)), out_channels)
    if group == 1:
        op = Op.CONV
    elif group == c == out_channels and w.shape[1] == 1:
        op = Op.DEPTHWISE
    else:
        raise IRError(f"{where}: grouped convolution with group={group} is not supported "
                      f"(only 1 and depthwise, group = channels = {c})")
    ctx.emit(Node(_name(node), op, [x.name], node.output[0],
                  dict(kernel=k, stride=s, pad=p, weight=w.astype(np.int8), bias=bias, multiplier=multiplier)),
             (out_channels, *ctx.out_hw(h, wd, k, s, p)), ctx.const(node.input[6], node),
             ctx.const(node.input[7], node))


@converter("QGemm", "QLinearMatMul")
def qlinear_matmul(ctx: Context, node) -> None:
    where, a = ctx.where(node), ctx.attrs(node)
    const = ctx.const
    x = ctx.tensor(node.input[0], node)
    if node.op_type == "QGemm":
        if a.get("transA", 0):
            raise IRError(f"{where}: transA=1 is not supported")
        if len(node.input) < 9 or not node.input[7]:
            raise IRError(f"{where}: QGemm with a float output is not supported (needs y_scale)")
        b = const(node.input[3], node)
        b_zero = const(node.input[5], node)
        weight = b if a.get("transB", 0) else b.T
        bias = const(node.input[6], node).astype(np.int32) if node.input[6] else np.zeros(weight.shape[0], np.int32)
        if float(a.get("alpha", 1.0)) != 1.0:
            raise IRError(f"{where}: alpha != 1 is not supported")
        b_scale, y_scale, y_zero = const(node.input[4], node), const(node.input[7], node), const(node.input[8], node)
    else:
        b = const(node.input[3], node)
        b_zero = const(node.input[5], node)
        weight = b.T
        bias = np.zeros(weight.shape[0], np.int32)
        b_scale, y_scale, y_zero = const(node.input[4], node), const(node.input[6], node), const(node.input[7], node)
    if np.any(b_zero != 0) or weight.dtype != np.int8:
        raise IRError(f"{where}: weights must be int8 with zero points 0")
    c, h, wd = x.shape
    if weight.shape[1] != c * h * wd or h != wd:
        raise IRError(f"{where}: a {weight.shape} weight does not match the flattened {x.shape} input")
    out_channels = weight.shape[0]
    multiplier = _requant_multiplier(f32(const(node.input[1], node)), b_scale, f32(y_scale), out_channels)
    ctx.emit(Node(_name(node), Op.FC, [x.name], node.output[0],
                  dict(kernel=h, stride=1, pad=0, bias=bias, multiplier=multiplier,
                       weight=weight.reshape(out_channels, c, h, wd).astype(np.int8))),
             (out_channels, 1, 1), y_scale, y_zero)


@converter("QLinearAdd")
def qlinear_add(ctx: Context, node) -> None:
    x, y = ctx.tensor(node.input[0], node), ctx.tensor(node.input[3], node)
    if x.shape != y.shape:
        raise IRError(f"{ctx.where(node)}: broadcasting add ({x.shape} + {y.shape}) is not supported")
    ctx.emit(Node(_name(node), Op.ADD, [x.name, y.name], node.output[0],
                  dict(a_scale=x.scale, a_zp=x.zero_point, b_scale=y.scale, b_zp=y.zero_point)),
             x.shape, ctx.const(node.input[6], node), ctx.const(node.input[7], node))


@converter("QLinearGlobalAveragePool")
def qlinear_global_average_pool(ctx: Context, node) -> None:
    where, a = ctx.where(node), ctx.attrs(node)
    x = ctx.tensor(node.input[0], node)
    if a.get("channels_last", 0):
        raise IRError(f"{where}: channels_last=1 is not supported")
    c, h, wd = x.shape
    if h != wd:
        raise IRError(f"{where}: global pooling of a non-square {h}x{wd} map is not supported")
    x_scale, y_scale = f32(ctx.const(node.input[1], node)), f32(ctx.const(node.input[3], node))
    multiplier = np.float32(x_scale / (y_scale * np.float32(h * wd)))
    ctx.emit(Node(_name(node), Op.AVGPOOL, [x.name], node.output[0], dict(kernel=h, stride=1, pad=0,
                                                                          multiplier=multiplier)),
             (c, 1, 1), y_scale, ctx.const(node.input[4], node))


@converter("QLinearAveragePool")
def qlinear_average_pool(ctx: Context, node) -> None:
    a = ctx.attrs(node)
    x = ctx.tensor(node.input[0], node)
    k, s, p = ctx.window(node, a)
    if p and not a.get("count_include_pad", 0):
        raise IRError(f"{ctx.where(node)}: padded average pooling needs count_include_pad=1")
    c, h, wd = x.shape
    x_scale, y_scale = f32(ctx.const(node.input[1], node)), f32(ctx.const(node.input[3], node))
    multiplier = np.float32(x_scale / (y_scale * np.float32(k * k)))
    ctx.emit(Node(_name(node), Op.AVGPOOL, [x.name], node.output[0], dict(kernel=k, stride=s, pad=p,
                                                                          multiplier=multiplier)),
             (c, *ctx.out_hw(h, wd, k, s, p)), y_scale, ctx.const(node.input[4], node))


@converter("MaxPool")
def max_pool(ctx: Context, node) -> None:
    a = ctx.attrs(node)
    x = ctx.tensor(node.input[0], node)
    if len(node.output) > 1 and node.output[1]:
        raise IRError(f"{ctx.where(node)}: MaxPool indices are not supported")
    k, s, p = ctx.window(node, a)
    c, h, wd = x.shape
    ceil = bool(a.get("ceil_mode", 0))
    ctx.emit(Node(_name(node), Op.MAXPOOL, [x.name], node.output[0], dict(kernel=k, stride=s, pad=p, ceil_mode=ceil)),
             (c, *ctx.out_hw(h, wd, k, s, p, ceil)), np.float32(x.scale),
             np.asarray(x.zero_point, np.int8 if x.signed else np.uint8))


@converter("Flatten", "Reshape")
def flatten(ctx: Context, node) -> None:
    x = ctx.tensor(node.input[0], node)
    consumers = [n.op_type for n in ctx.consumers(node.output[0])]
    feeds_fc = all(t in ("QGemm", "QLinearMatMul", "DequantizeLinear") for t in consumers)
    if not feeds_fc and x.shape[1:] != (1, 1):
        raise IRError(f"{ctx.where(node)}: a reshape is only supported before a fully connected layer "
                      f"(here it feeds {consumers})")
    ctx.alias[node.output[0]] = x.name


@converter("Concat", "QLinearConcat")
def concat(ctx: Context, node) -> None:
    a = ctx.attrs(node)
    if int(a.get("axis", 1)) != 1:
        raise IRError(f"{ctx.where(node)}: only channel concatenation (axis=1) is supported")
    if node.op_type == "Concat":
        parts = [ctx.tensor(i, node) for i in node.input]
        scale, zero = np.float32(parts[0].scale), np.asarray(parts[0].zero_point,
                                                           np.int8 if parts[0].signed else np.uint8)
    else:   # inputs of another quantization are rescaled by the rescale_concat_inputs pass
        scale, zero = ctx.const(node.input[0], node), ctx.const(node.input[1], node)
        parts = [ctx.tensor(node.input[i], node) for i in range(2, len(node.input), 3)]
    shape = (sum(t.shape[0] for t in parts), *parts[0].shape[1:])
    attrs = {"requantize": True} if node.op_type == "QLinearConcat" else {}
    ctx.emit(Node(_name(node), Op.CONCAT, [t.name for t in parts], node.output[0], attrs), shape, scale, zero)


@converter("Relu", "Clip")
def activation(ctx: Context, node) -> None:
    a = ctx.attrs(node)
    x = ctx.tensor(node.input[0], node)
    lo, hi = x.qrange
    if node.op_type == "Relu":
        lo = max(lo, x.zero_point)
    else:
        low, high = a.get("min", None), a.get("max", None)
        if len(node.input) > 1 and node.input[1]:
            low = float(ctx.const(node.input[1], node))
        if len(node.input) > 2 and node.input[2]:
            high = float(ctx.const(node.input[2], node))
        if low is not None:
            lo = max(lo, int(np.clip(np.rint(np.float32(low) / np.float32(x.scale)) + x.zero_point, *x.qrange)))
        if high is not None:
            hi = min(hi, int(np.clip(np.rint(np.float32(high) / np.float32(x.scale)) + x.zero_point, *x.qrange)))
    ctx.emit(Node(_name(node), Op.CLAMP, [x.name], node.output[0], dict(clamp=(lo, hi), source=node.op_type)),
             x.shape, np.float32(x.scale), np.asarray(x.zero_point, np.int8 if x.signed else np.uint8))


@converter("Constant")
def constant(ctx: Context, node) -> None:
    """Read with the initializers before conversion."""
