"""Converters of QDQ models (onnxruntime's ``quant_format=QuantFormat.QDQ``) into the graph IR.

A QDQ model keeps the float operators and marks what is quantized with
QuantizeLinear/DequantizeLinear pairs: ``DQ(x) -> Conv(DQ(w int8), DQ(b int32)) -> Q``.
onnxruntime runs such a model by fusing each ``DQ -> op -> Q`` group into the
quantized kernel of the QOperator format (its QDQ transformer,
``onnxruntime/core/optimizer/qdq_transformer/``: Conv into QLinearConv, Gemm into
QGemm, MatMul into QLinearMatMul, Add into QLinearAdd, (Global)AveragePool into
QLinear(Global)AveragePool, Concat into QLinearConcat; the Q/DQ pair around
MaxPool, Flatten and Reshape is dropped when it keeps the quantization). The
converters here do the same fusion: each float op reads its activations through
the DequantizeLinear nodes before it (the quantized tensor and its scale and zero
point), its int8 weights and int32 bias from the constants those DequantizeLinear
nodes read, and its output quantization from the one QuantizeLinear after it, and
builds the IR node with the builders of :mod:`.nodes` that the QOperator
converters use. The IR node is named as onnxruntime names the QOperator twin's
node (``<node>_quant`` for the QLinear ops, the float name for MaxPool), so a QDQ
model and its QOperator twin give the same graph IR and the same binary; an IR
tensor is the ONNX quantized tensor (the QuantizeLinear's output).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..ir import IRError, Tensor
from . import nodes
from .registry import CONVERTERS, QDQ_CONVERTERS, Context, converter, f32

__all__ = ["QdqContext"]

FORMAT = "QDQ"


def qdq_converter(*op_types: str):
    return converter(*op_types, table=QDQ_CONVERTERS)


@dataclass
class QdqContext(Context):
    """A :class:`~.registry.Context` that also finds the DequantizeLinear before and the
    QuantizeLinear after a float op.

    Attributes
    ----------
    producer : dict of str to onnx.NodeProto
        The node producing each tensor.
    """
    producer: dict = field(default_factory=dict)
    float_ops: dict = field(default_factory=dict)

    def __post_init__(self):
        self.producer = {name: node for node in self.onnx_graph.node for name in node.output}
        self.float_ops = ort_float_ops(self.onnx_graph, self.constants)

    def refuse_float(self, node) -> None:
        """Refuse ``node`` if onnxruntime runs it in float32 (:func:`ort_float_ops`)."""
        reason = self.float_ops.get(node.name or node.output[0])
        if reason is not None:
            raise IRError(f"{self.where(node)}: onnxruntime (x86-64) runs this {node.op_type} in float32, not as its "
                          f"int8 QLinear kernel ({reason}); its float rounding next to ties is not reproducible "
                          "exactly: quantize with uint8 activations or in QOperator format")

    @staticmethod
    def where(node) -> str:
        # the float ops of QDQ models written by hand are often unnamed: name them by their output
        return f"node {node.name or node.output[0]!r} ({node.op_type})"

    # -- operands --------------------------------------------------------------------------------------

    def quantization(self, node) -> tuple[np.ndarray, np.ndarray]:
        """``(scale, zero_point)`` of a QuantizeLinear or DequantizeLinear (ONNX's default zero point:
        uint8 0)."""
        scale = self.const(node.input[1], node)
        zero = self.const(node.input[2], node) if len(node.input) > 2 and node.input[2] else np.uint8(0)
        return scale, zero

    def dequantized(self, name: str, node):
        """The DequantizeLinear producing the float input ``name`` of ``node``."""
        dq = self.producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear":
            what = f"produced by {self.where(dq)}" if dq is not None else "a graph input or initializer"
            raise IRError(f"{self.where(node)}: input {name!r} must come from a DequantizeLinear in this QDQ "
                          f"model (it is {what})")
        return dq

    def activation(self, name: str, node) -> tuple[Tensor, np.ndarray]:
        """The quantized activation read by ``node`` as its float input ``name`` and the scale it is
        dequantized with (as the QOperator op's ``x_scale`` input)."""
        resolved = self.resolve(name)         # a DequantizeLinear (or Flatten) output: its quantized tensor
        if resolved not in self.ir.tensors:
            self.dequantized(name, node)
        x = self.tensor(name, node)
        return x, np.float32(x.scale)

    def weight(self, name: str, node, dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(values, scale, zero_point)`` of the constant ``dtype`` tensor that a DequantizeLinear turns
        into the float input ``name`` (a weight: int8, a bias: int32)."""
        dq = self.dequantized(name, node)
        if dq.input[0] not in self.constants:
            raise IRError(f"{self.where(node)}: input {name!r} must be a constant initializer dequantized by "
                          f"{self.where(dq)}")
        values = self.constants[dq.input[0]]
        if values.dtype != dtype:
            raise IRError(f"{self.where(node)}: {name!r} must be {np.dtype(dtype).name} (dequantized by "
                          f"{self.where(dq)}), not {values.dtype}")
        return (values, *self.quantization(dq))

    def bias(self, node, index: int):
        """The int32 bias at input ``index`` of ``node``, or ``None``; onnxruntime's fusion takes the
        quantized values as they are (QLinearConv's and QGemm's bias input)."""
        if len(node.input) <= index or not node.input[index]:
            return None
        values, _, zero = self.weight(node.input[index], node, np.int32)
        if np.any(zero != 0):
            raise IRError(f"{self.where(node)}: bias zero points must be 0")
        return values

    def output_quantization(self, node) -> tuple[str, np.ndarray, np.ndarray]:
        """``(quantized tensor, scale, zero_point)`` of the one QuantizeLinear reading ``node``'s output."""
        readers = self.consumers(node.output[0])
        if len(readers) != 1 or readers[0].op_type != "QuantizeLinear":
            feeds = [f"{r.name or r.output[0]} ({r.op_type})" for r in readers] or \
                ["the model output" if node.output[0] in {o.name for o in self.onnx_graph.output} else "nothing"]
            raise IRError(f"{self.where(node)}: in a QDQ model its output must go into one QuantizeLinear "
                          f"(dlfusion runs quantized ops only); it feeds {', '.join(feeds)}")
        return (readers[0].output[0], *self.quantization(readers[0]))

    @staticmethod
    def same_quantization(x: Tensor, scale, zero) -> bool:
        zero = np.asarray(zero)
        return (f32(scale) == np.float32(x.scale) and int(zero.reshape(-1)[0]) == x.zero_point
                and (zero.dtype == np.int8) == x.signed)


#: Float ops whose fused QLinear kernel onnxruntime picks only when the types of their quantized inputs and
#: output agree (and, for Conv and MatMul, are not int8): else they run in float32 between the Q/DQ nodes.
_FUSED_IF_TYPES_AGREE = ("Conv", "MatMul", "Gemm", "Add", "Mul", "AveragePool", "GlobalAveragePool")
_INT8_NOT_ALLOWED = ("Conv", "MatMul")


def ort_float_ops(onnx_graph, constants) -> dict:
    """The arithmetic float ops of a QDQ model that onnxruntime's CPU provider runs in float32 on x86-64
    (its default ``session.qdqisint8allowed=0``), each with the reason; empty for uint8 activations.

    On x86-64 onnxruntime does not fuse int8-activation groups into its int8 QLinear kernels: its
    ``QDQS8ToU8Transformer`` first rewrites an int8 QuantizeLinear -> DequantizeLinear pair into uint8 (zero
    point + 128, exact), but only a QuantizeLinear with exactly one output edge once each reader has its own
    DequantizeLinear (``EnsureUniqueDQForNodeUnit``), i.e. a tensor read by one node. A tensor read by
    several nodes (a residual branch) stays int8, and a Conv (MatMul) reading it or writing it, or an Add,
    (Global)AveragePool, Gemm whose quantized inputs and output end up of different types, is left as a
    float op on the dequantized values: ``Q(DQ(x) conv DQ(w) + DQ(b))`` in float32 (MLAS SGEMM),
    whose rounding errors decide the values next to a rounding tie differently from the exact int32
    accumulation (and the float Add and average from QLinearAdd's and QLinearAveragePool's). Concat, MaxPool
    and the other data-movement ops are left out: in float they compute what their fused kernels do.
    Checked against onnxruntime 1.32's optimized graphs of seven zoo models with int8 activations.

    Two more of its rewrites are followed: its common subexpression elimination (level basic, before the
    QDQ rewrites) merges QuantizeLinear nodes reading the same tensor with the same scale and zero point
    initializers (by name), so ``quantize_static``'s ``DedicatedQDQPair`` (one Q/DQ pair per reader, same
    initializers) is undone and the tensor is shared again; and a node whose output several
    QuantizeLinear nodes read (dedicated pairs with their own initializer copies) is not fused at all,
    its QDQ node unit needs exactly one."""
    outputs = {o.name for o in onnx_graph.output}
    readers: dict = {}
    merged: dict = {}    # (input, scale, zero point, attributes) -> the first such QuantizeLinear: CSE
    alias: dict = {}     # output of a QuantizeLinear CSE merges away -> the output it is merged into
    for n in onnx_graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] not in constants:
            key = (tuple(n.input), tuple(a.SerializeToString() for a in n.attribute))
            alias[n.output[0]] = merged.setdefault(key, n).output[0]
        for name in n.input:
            readers.setdefault(alias.get(name, name), []).append(n)
    producer = {name: n for n in onnx_graph.node for name in n.output}

    def zero_dtype(node):
        if len(node.input) > 2 and node.input[2] in constants:
            return np.asarray(constants[node.input[2]]).dtype
        return np.dtype(np.uint8)

    kind = {}            # quantized tensor (a QuantizeLinear output) -> "int8" or "uint8" as onnxruntime runs it
    int8_model = False
    for q in onnx_graph.node:
        if q.op_type != "QuantizeLinear" or q.input[0] in constants or alias[q.output[0]] != q.output[0]:
            continue
        if zero_dtype(q) != np.int8:
            kind[q.output[0]] = "uint8"
            continue
        int8_model = True
        edges = [dq for dq in readers.get(q.output[0], [])]
        fan_out = sum(max(1, len(readers.get(dq.output[0], []))) if dq.op_type == "DequantizeLinear" else 1
                      for dq in edges)
        pair = (len(edges) == 1 and edges[0].op_type == "DequantizeLinear" and fan_out == 1
                and q.output[0] not in outputs and np.asarray(constants.get(q.input[2], 0)).size == 1
                and len(edges[0].input) > 2 and zero_dtype(edges[0]) == np.int8
                and np.array_equal(constants.get(q.input[2]), constants.get(edges[0].input[2])))
        kind[q.output[0]] = "uint8" if pair else "int8"
    for name, target in alias.items():
        kind[name] = kind[target]
    if not int8_model:
        return {}

    def quantized_input(name):
        dq = producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] in constants:
            return None
        return kind.get(dq.input[0])

    found = {}
    for n in onnx_graph.node:
        if n.op_type not in _FUSED_IF_TYPES_AGREE:
            continue
        ins = [quantized_input(name) for name in n.input if name]
        ins = [t for t in ins if t is not None]
        after = readers.get(n.output[0], [])
        if len(after) == 1 and after[0].op_type in ("Relu", "Clip"):   # onnxruntime's redundant clip node
            after = readers.get(after[0].output[0], [])
        outs = [kind.get(r.output[0]) for r in after if r.op_type == "QuantizeLinear"]
        types = set(ins) | set(t for t in outs if t is not None)
        if not ins or not outs:
            continue
        if len({alias[r.output[0]] for r in after if r.op_type == "QuantizeLinear"}) > 1:
            found[n.name or n.output[0]] = "several QuantizeLinear nodes read its output " \
                "(onnxruntime fuses a node with one)"
        elif len(types) > 1:
            found[n.name or n.output[0]] = "its quantized inputs and output are of different types " \
                "(a tensor read by several nodes stays int8, the others become uint8)"
        elif n.op_type in _INT8_NOT_ALLOWED and types == {"int8"}:
            found[n.name or n.output[0]] = "it reads or writes an int8 tensor read by several nodes"
    return found


def _qlinear_name(node) -> str:
    """onnxruntime's name of the QOperator node quantizing ``node`` (``<name>_quant``)."""
    return f"{node.name}_quant" if node.name else node.output[0]


# -- the ends of the quantized graph -------------------------------------------------------------------

@qdq_converter("QuantizeLinear")
def quantize_linear(ctx: QdqContext, node) -> None:
    scale, zero = ctx.quantization(node)
    if node.input[0] == ctx.model_input.name:
        if ctx.ir.input:
            raise IRError(f"{ctx.where(node)}: the model input is quantized twice")
        ctx.add_tensor(node.output[0], ctx.dims[1:], scale, zero)
        ctx.ir.input = node.output[0]
        ctx.ir.input_quant = {"name": ctx.model_input.name, "scale": float(f32(scale)),
                              "zero_point": int(np.asarray(zero).reshape(-1)[0]),
                              "dtype": str(np.asarray(zero).dtype), "shape": [1, *ctx.dims[1:]]}
        return
    if node.output[0] in ctx.ir.tensors:     # the output quantization of the op before it
        return
    x = ctx.tensor(node.input[0], node)      # a Flatten/Reshape output: Q must keep its quantization
    if not ctx.same_quantization(x, scale, zero):
        raise IRError(f"{ctx.where(node)}: requantizing {x.name!r} (scale {x.scale}, zero point "
                      f"{x.zero_point}) to scale {float(f32(scale))}, zero point {int(zero)} is not supported "
                      "after a Flatten/Reshape")
    ctx.alias[node.output[0]] = x.name


@qdq_converter("DequantizeLinear")
def dequantize_linear(ctx: QdqContext, node) -> None:
    if node.input[0] in ctx.constants:       # a weight or bias: read by the op it feeds
        return
    x = ctx.tensor(node.input[0], node)
    scale, zero = ctx.quantization(node)
    if not ctx.same_quantization(x, scale, zero):
        raise IRError(f"{ctx.where(node)}: dequantizes {x.name!r} with scale {float(f32(scale))}, zero point "
                      f"{int(zero)} instead of its own ({x.scale}, {x.zero_point})")
    if node.output[0] in {o.name for o in ctx.onnx_graph.output}:   # a model output, read as in QOperator
        CONVERTERS["DequantizeLinear"](ctx, node)
    else:
        ctx.alias[node.output[0]] = x.name


# -- the float ops, each between DequantizeLinear and QuantizeLinear ----------------------------------

@qdq_converter("Conv")
def conv(ctx: QdqContext, node) -> None:
    ctx.refuse_float(node)
    x, x_scale = ctx.activation(node.input[0], node)
    w, w_scale, w_zero = ctx.weight(node.input[1], node, np.int8)
    output, y_scale, y_zero = ctx.output_quantization(node)
    nodes.conv(ctx, node, _qlinear_name(node), output, x, x_scale, w, w_scale, w_zero, ctx.bias(node, 2),
               y_scale, y_zero)


@qdq_converter("Gemm", "MatMul")
def gemm(ctx: QdqContext, node) -> None:
    ctx.refuse_float(node)
    where, a = ctx.where(node), ctx.attrs(node)
    x, x_scale = ctx.activation(node.input[0], node)
    b, w_scale, w_zero = ctx.weight(node.input[1], node, np.int8)
    if node.op_type == "Gemm":
        if a.get("transA", 0):
            raise IRError(f"{where}: transA=1 is not supported")
        if float(a.get("alpha", 1.0)) != 1.0 or (len(node.input) > 2 and float(a.get("beta", 1.0)) != 1.0):
            raise IRError(f"{where}: alpha or beta != 1 is not supported")
        weight, bias = (b if a.get("transB", 0) else b.T), ctx.bias(node, 2)
    else:
        weight, bias = b.T, None
    output, y_scale, y_zero = ctx.output_quantization(node)
    nodes.fully_connected(ctx, node, _qlinear_name(node), output, x, x_scale, weight, w_scale, w_zero, bias,
                          y_scale, y_zero)


@qdq_converter("Add")
def add(ctx: QdqContext, node) -> None:
    ctx.refuse_float(node)
    x, _ = ctx.activation(node.input[0], node)
    y, _ = ctx.activation(node.input[1], node)
    output, y_scale, y_zero = ctx.output_quantization(node)
    nodes.add(ctx, node, _qlinear_name(node), output, x, y, y_scale, y_zero)


@qdq_converter("GlobalAveragePool")
def global_average_pool(ctx: QdqContext, node) -> None:
    ctx.refuse_float(node)
    x, x_scale = ctx.activation(node.input[0], node)
    output, y_scale, y_zero = ctx.output_quantization(node)
    nodes.global_average_pool(ctx, node, _qlinear_name(node), output, x, x_scale, y_scale, y_zero)


@qdq_converter("AveragePool")
def average_pool(ctx: QdqContext, node) -> None:
    ctx.refuse_float(node)
    x, x_scale = ctx.activation(node.input[0], node)
    output, y_scale, y_zero = ctx.output_quantization(node)
    if ctx.same_quantization(x, y_scale, y_zero):
        # onnxruntime's QDQ quantizer writes AveragePool so (a "direct 8-bit" op); its QLinearAveragePool
        # averages in float and rounds y / y_scale + zero_point, which one float32 multiplier does not
        # reproduce at the exact halves that a 1 / count multiplier makes frequent
        raise IRError(f"{ctx.where(node)}: an average pool that keeps its input's quantization (as onnxruntime's "
                      "QDQ quantizer writes it) is not supported: its rounding at exact halves differs from "
                      "onnxruntime's QLinearAveragePool; quantize the model in QOperator format")
    nodes.average_pool(ctx, node, _qlinear_name(node), output, x, x_scale, y_scale, y_zero)


def _keeping(ctx: QdqContext, node, x: Tensor) -> str:
    """The quantized output of an op that must keep its input's quantization (MaxPool, Relu, Clip)."""
    output, scale, zero = ctx.output_quantization(node)
    if not ctx.same_quantization(x, scale, zero):
        raise IRError(f"{ctx.where(node)}: its QuantizeLinear changes the quantization of {x.name!r} (scale "
                      f"{x.scale}, zero point {x.zero_point} -> {float(f32(scale))}, {int(zero)}); only a "
                      f"{node.op_type} that keeps it is supported")
    return output


@qdq_converter("MaxPool")
def max_pool(ctx: QdqContext, node) -> None:
    x, _ = ctx.activation(node.input[0], node)
    nodes.max_pool(ctx, node, node.name or node.output[0], _keeping(ctx, node, x), x)


@qdq_converter("Relu", "Clip")
def activation(ctx: QdqContext, node) -> None:
    x, _ = ctx.activation(node.input[0], node)
    nodes.clamp(ctx, node, node.name or node.output[0], _keeping(ctx, node, x), x, *nodes.clip_bounds(ctx, node))


@qdq_converter("Concat")
def concat(ctx: QdqContext, node) -> None:
    parts = [ctx.activation(name, node)[0] for name in node.input]
    output, scale, zero = ctx.output_quantization(node)
    # onnxruntime runs it as QLinearConcat: inputs of another quantization are requantized
    nodes.concat(ctx, node, _qlinear_name(node), output, parts, scale, zero, requantize=True)


@qdq_converter("Flatten", "Reshape")
def flatten(ctx: QdqContext, node) -> None:
    x, _ = ctx.activation(node.input[0], node)
    if node.op_type == "Reshape" and np.asarray(ctx.const(node.input[1], node)).size == 5:
        final, channels = nodes.shuffle(ctx, node, x)
        output, y_scale, y_zero = ctx.output_quantization(final)
        ctx.handled.add(output)
        nodes.channel_selection(ctx, node, node.name or node.output[0], output, x, channels, y_scale, y_zero)
        return
    readers = ctx.consumers(node.output[0])
    # through the Q/DQ pair that follows it to the float ops reading it
    for q in [r for r in readers if r.op_type == "QuantizeLinear"]:
        readers.remove(q)
        for dq in ctx.consumers(q.output[0]):
            readers.extend(ctx.consumers(dq.output[0]) if dq.op_type == "DequantizeLinear" else [dq])
    consumers = [r.op_type for r in readers]
    if not all(t in ("Gemm", "MatMul") for t in consumers) and x.shape[1:] != (1, 1):
        raise IRError(f"{ctx.where(node)}: a reshape is only supported before a fully connected layer "
                      f"(here it feeds {consumers})")
    ctx.alias[node.output[0]] = x.name


@qdq_converter("Constant")
def constant(ctx: QdqContext, node) -> None:
    """Read with the initializers before conversion."""


@qdq_converter("ReduceMean")
def reduce_mean(ctx: QdqContext, node) -> None:
    x, _ = ctx.activation(node.input[0], node)
    nodes.reduce_mean(ctx, node, node.name or node.output[0], x)


@qdq_converter("Slice")
def slice_(ctx: QdqContext, node) -> None:
    x, _ = ctx.activation(node.input[0], node)
    output, y_scale, y_zero = ctx.output_quantization(node)
    nodes.channel_selection(ctx, node, node.name or node.output[0], output, x,
                            list(nodes.slice_channels(ctx, node, x)), y_scale, y_zero)


@qdq_converter("Split")
def split(ctx: QdqContext, node) -> None:
    x, _ = ctx.activation(node.input[0], node)
    for index, channels in enumerate(nodes.split_channels(ctx, node, x)):
        readers = ctx.consumers(node.output[index])
        if len(readers) != 1 or readers[0].op_type != "QuantizeLinear":
            raise IRError(f"{ctx.where(node)}: in a QDQ model its output {node.output[index]!r} must go into one "
                          "QuantizeLinear")
        y_scale, y_zero = ctx.quantization(readers[0])
        nodes.channel_selection(ctx, node, f"{node.name or node.output[0]}:{index}", readers[0].output[0], x,
                                list(channels), y_scale, y_zero)


@qdq_converter("Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "LeakyRelu")
def function(ctx: QdqContext, node) -> None:
    """A lookup table; onnxruntime's QLinearSigmoid / QLinearLeakyRelu and its float kernel between the
    Q/DQ nodes compute the same table."""
    x, _ = ctx.activation(node.input[0], node)
    readers = ctx.consumers(node.output[0])
    if len(readers) == 1 and readers[0].op_type == "MaxPool":
        # a float MaxPool between it and its QuantizeLinear (the quantizer leaves Tanh, HardSwish ... in float)
        # commutes with the monotone quantization: the MaxPool reads the table's output
        pool = readers[0]
        _, y_scale, y_zero = ctx.output_quantization(pool)
        output = node.output[0]
    else:
        output, y_scale, y_zero = ctx.output_quantization(node)
    nodes.lookup(ctx, node, node.name or node.output[0], output, x, node.op_type, y_scale, y_zero)


@qdq_converter("Mul")
def mul(ctx: QdqContext, node) -> None:
    a, _ = ctx.activation(node.input[0], node)
    b, _ = ctx.activation(node.input[1], node)
    output, y_scale, y_zero = ctx.output_quantization(node)
    nodes.multiply(ctx, node, _qlinear_name(node), output, a, b, y_scale, y_zero,
                   in_float=(node.name or node.output[0]) in ctx.float_ops)


@qdq_converter("Resize", "Upsample")
def resize(ctx: QdqContext, node) -> None:
    x, _ = ctx.activation(node.input[0], node)
    nodes.upsample(ctx, node, node.name or node.output[0], _keeping(ctx, node, x), x)
