"""Converters of onnxruntime's QOperator ops into the graph IR (see :mod:`.registry`).

Each converter reads its operands from the quantized op's inputs and builds the
IR node with :mod:`.nodes` (shared with the QDQ converters of :mod:`.qdq`), where
the requantization multipliers are computed as onnxruntime computes them.
Activation functions become :attr:`~dlfusion.compiler.ir.Op.CLAMP` nodes, which
the ``fold_clamps`` pass folds into their producers; a QLinearConcat input with
another quantization is rescaled by the ``rescale_concat_inputs`` pass.
"""

from __future__ import annotations

import numpy as np

from ..ir import IRError
from . import nodes
from .registry import Context, converter, f32

__all__ = []


def _name(node) -> str:
    return node.name or node.output[0]


#: Float ops that onnxruntime's QOperator quantizer leaves between a DequantizeLinear and a QuantizeLinear
#: and that dlfusion runs quantized (as onnxruntime's QDQ format would have them: see :mod:`.qdq`).
FLOAT_ISLAND_OPS = ("ReduceMean", "Slice", "Split", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "LeakyRelu")
#: Elementwise functions of one value: exact lookup tables (:func:`.nodes.lookup`).
FUNCTION_OPS = ("Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "LeakyRelu")


@converter("QuantizeLinear")
def quantize_linear(ctx: Context, node) -> None:
    ir = ctx.ir
    if node.output[0] in ir.tensors:    # the output quantization of a float island (ReduceMean) before it
        return
    source = ctx.resolve(node.input[0])
    if source in ir.tensors:            # after a float function (and a float MaxPool): its own quantization
        scale, zero = ctx.const(node.input[1], node), ctx.const(node.input[2], node)
        x = ir.tensors[source]
        if f32(scale) != np.float32(x.scale) or int(np.asarray(zero).reshape(-1)[0]) != x.zero_point:
            raise IRError(f"{ctx.where(node)}: requantizes {source!r} (scale {x.scale}, zero point "
                          f"{x.zero_point}) to scale {float(f32(scale))}; only its own quantization is supported")
        ctx.alias[node.output[0]] = source
        return
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
    readers = ctx.consumers(node.output[0])
    model_outputs = {o.name: o for o in ctx.onnx_graph.output}
    if node.output[0] not in model_outputs and readers and \
            all(r.op_type in FLOAT_ISLAND_OPS for r in readers):
        scale, zero = ctx.const(node.input[1], node), ctx.const(node.input[2], node)
        if f32(scale) != np.float32(source.scale) or int(np.asarray(zero).reshape(-1)[0]) != source.zero_point:
            raise IRError(f"{ctx.where(node)}: dequantizes {source.name!r} with scale {float(f32(scale))}, zero "
                          f"point {int(np.asarray(zero).reshape(-1)[0])} instead of its own "
                          f"({source.scale}, {source.zero_point})")
        ctx.alias[node.output[0]] = source.name     # read by the float op through its DequantizeLinear
        return
    if node.output[0] not in model_outputs:
        raise IRError(f"{ctx.where(node)}: only the model outputs may be dequantized; this model dequantizes "
                      f"{source.name!r} in the middle (a float op follows it)")
    # The shape onnxruntime returns (batch 1): the graph's (inferred) output shape when it is static and
    # holds the tensor's elements; else what the IR's (C, H, W) came from: (1, C) after a Flatten or a
    # fully connected layer with H = W = 1, (1, C, H, W) otherwise.
    channels, height, width = source.shape
    dims = model_outputs[node.output[0]].type.tensor_type.shape.dim
    shape = [1 if index == 0 and not dim.dim_value else int(dim.dim_value) for index, dim in enumerate(dims)]
    if not (shape and all(shape) and int(np.prod(shape)) == channels * height * width):
        from ..ir import Op
        producer = ctx.ir.producer(source.name)
        flat = ctx.resolve(node.input[0]) != node.input[0] or (producer is not None and producer.op == Op.FC)
        shape = [1, channels] if flat and height == width == 1 else [1, channels, height, width]
    ctx.outputs[node.output[0]] = (source.name, {
        "name": node.output[0], "scale": float(f32(ctx.const(node.input[1], node))),
        "zero_point": int(ctx.const(node.input[2], node)), "shape": shape})


@converter("QLinearConv")
def qlinear_conv(ctx: Context, node) -> None:
    const = ctx.const
    bias = const(node.input[8], node) if len(node.input) > 8 and node.input[8] else None
    nodes.conv(ctx, node, _name(node), node.output[0], ctx.tensor(node.input[0], node), const(node.input[1], node),
               const(node.input[3], node), const(node.input[4], node), const(node.input[5], node), bias,
               const(node.input[6], node), const(node.input[7], node))


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
        weight = b if a.get("transB", 0) else b.T
        bias = const(node.input[6], node) if node.input[6] else None
        if float(a.get("alpha", 1.0)) != 1.0:
            raise IRError(f"{where}: alpha != 1 is not supported")
        y_scale, y_zero = const(node.input[7], node), const(node.input[8], node)
    else:
        weight = const(node.input[3], node).T
        bias = None
        y_scale, y_zero = const(node.input[6], node), const(node.input[7], node)
    nodes.fully_connected(ctx, node, _name(node), node.output[0], x, const(node.input[1], node), weight,
                          const(node.input[4], node), const(node.input[5], node), bias, y_scale, y_zero)


@converter("QLinearAdd")
def qlinear_add(ctx: Context, node) -> None:
    nodes.add(ctx, node, _name(node), node.output[0], ctx.tensor(node.input[0], node),
              ctx.tensor(node.input[3], node), ctx.const(node.input[6], node), ctx.const(node.input[7], node))


@converter("QLinearGlobalAveragePool")
def qlinear_global_average_pool(ctx: Context, node) -> None:
    x = ctx.tensor(node.input[0], node)
    if ctx.attrs(node).get("channels_last", 0):
        raise IRError(f"{ctx.where(node)}: channels_last=1 is not supported")
    nodes.global_average_pool(ctx, node, _name(node), node.output[0], x, ctx.const(node.input[1], node),
                              ctx.const(node.input[3], node), ctx.const(node.input[4], node))


@converter("QLinearAveragePool")
def qlinear_average_pool(ctx: Context, node) -> None:
    nodes.average_pool(ctx, node, _name(node), node.output[0], ctx.tensor(node.input[0], node),
                       ctx.const(node.input[1], node), ctx.const(node.input[3], node), ctx.const(node.input[4], node))


@converter("MaxPool")
def max_pool(ctx: Context, node) -> None:
    nodes.max_pool(ctx, node, _name(node), node.output[0], ctx.tensor(node.input[0], node))


@converter("Flatten", "Reshape")
def flatten(ctx: Context, node) -> None:
    x = ctx.tensor(node.input[0], node)
    if node.op_type == "Reshape" and np.asarray(ctx.const(node.input[1], node)).size == 5:
        final, channels = nodes.shuffle(ctx, node, x)
        nodes.channel_selection(ctx, node, _name(node), final.output[0], x, channels, *nodes.quantization_of(x))
        return
    consumers = [n.op_type for n in ctx.consumers(node.output[0])]
    feeds_fc = all(t in ("QGemm", "QLinearMatMul", "DequantizeLinear") for t in consumers)
    if not feeds_fc and x.shape[1:] != (1, 1):
        raise IRError(f"{ctx.where(node)}: a reshape is only supported before a fully connected layer "
                      f"(here it feeds {consumers})")
    ctx.alias[node.output[0]] = x.name


@converter("Concat", "QLinearConcat")
def concat(ctx: Context, node) -> None:
    if node.op_type == "Concat":
        parts = [ctx.tensor(i, node) for i in node.input]
        scale, zero = nodes.quantization_of(parts[0])
    else:   # inputs of another quantization are rescaled by the rescale_concat_inputs pass
        scale, zero = ctx.const(node.input[0], node), ctx.const(node.input[1], node)
        parts = [ctx.tensor(node.input[i], node) for i in range(2, len(node.input), 3)]
    nodes.concat(ctx, node, _name(node), node.output[0], parts, scale, zero, node.op_type == "QLinearConcat")


@converter("Relu", "Clip")
def activation(ctx: Context, node) -> None:
    nodes.clamp(ctx, node, _name(node), node.output[0], ctx.tensor(node.input[0], node), *nodes.clip_bounds(ctx, node))


@converter("Constant")
def constant(ctx: Context, node) -> None:
    """Read with the initializers before conversion."""


@converter("ReduceMean")
def reduce_mean(ctx: Context, node) -> None:
    nodes.reduce_mean(ctx, node, node.name or node.output[0], ctx.tensor(node.input[0], node))


def _island_output(ctx: Context, output: str, node, x):
    """``(name, scale, zero_point)`` of an output of a float island op: the QuantizeLinear reading it
    (QOperator: DequantizeLinear -> op -> QuantizeLinear), or, read as a quantized op, ``x``'s."""
    readers = ctx.consumers(output)
    if len(readers) == 1 and readers[0].op_type == "QuantizeLinear":
        q = readers[0]
        return q.output[0], ctx.const(q.input[1], q), ctx.const(q.input[2], q)
    island = readers and all(r.op_type in FLOAT_ISLAND_OPS for r in readers)
    dequantized = ctx.resolve(node.input[0]) != node.input[0]
    if not island and (any(r.op_type == "QuantizeLinear" for r in readers) or dequantized):
        raise IRError(f"{ctx.where(node)}: its output {output!r} must go into one QuantizeLinear or other "
                      f"{'/'.join(FLOAT_ISLAND_OPS)}")
    # read as a quantized op (or by more float ops: the values pass unchanged, x's quantization)
    return (output, *nodes.quantization_of(x))


@converter("Slice")
def slice_(ctx: Context, node) -> None:
    x = ctx.tensor(node.input[0], node)
    name, scale, zero = _island_output(ctx, node.output[0], node, x)
    nodes.channel_selection(ctx, node, _name(node), name, x, list(nodes.slice_channels(ctx, node, x)), scale, zero)


@converter("Split")
def split(ctx: Context, node) -> None:
    x = ctx.tensor(node.input[0], node)
    for index, (output, channels) in enumerate(zip(node.output, nodes.split_channels(ctx, node, x), strict=True)):
        name, scale, zero = _island_output(ctx, output, node, x)
        nodes.channel_selection(ctx, node, f"{_name(node)}:{index}", name, x, list(channels), scale, zero)


@converter("QLinearSigmoid", "QLinearLeakyRelu")
def qlinear_function(ctx: Context, node) -> None:
    nodes.lookup(ctx, node, _name(node), node.output[0], ctx.tensor(node.input[0], node),
                 node.op_type.removeprefix("QLinear"), ctx.const(node.input[3], node), ctx.const(node.input[4], node))


@converter(*FUNCTION_OPS)
def float_function(ctx: Context, node) -> None:
    """A function onnxruntime's QOperator quantizer leaves in float (HardSwish, HardSigmoid, Tanh) between
    a DequantizeLinear and a QuantizeLinear: the same table as its QLinear kernel would use."""
    x = ctx.tensor(node.input[0], node)
    readers = ctx.consumers(node.output[0])
    # a float MaxPool between it and its QuantizeLinear commutes with the (monotone) quantization
    while len(readers) == 1 and readers[0].op_type == "MaxPool":
        readers = ctx.consumers(readers[0].output[0])
    if len(readers) != 1 or readers[0].op_type != "QuantizeLinear":
        raise IRError(f"{ctx.where(node)}: its output must go into one QuantizeLinear, directly or through "
                      f"MaxPool (a float {node.op_type} between quantized ops)")
    q = readers[0]
    nodes.lookup(ctx, node, _name(node), node.output[0], x, node.op_type, ctx.const(q.input[1], q),
                 ctx.const(q.input[2], q))


@converter("QLinearMul")
def qlinear_mul(ctx: Context, node) -> None:
    const = ctx.const
    nodes.multiply(ctx, node, _name(node), node.output[0], ctx.tensor(node.input[0], node),
                   ctx.tensor(node.input[3], node), const(node.input[6], node), const(node.input[7], node),
                   in_float=False)


@converter("Resize", "Upsample")
def resize(ctx: Context, node) -> None:
    nodes.upsample(ctx, node, _name(node), node.output[0], ctx.tensor(node.input[0], node))
