"""ONNX frontend: onnxruntime's quantized models (QOperator or QDQ format) to the quantized graph IR.

Accepted, in QOperator format: a float input quantized by QuantizeLinear, then QLinearConv
(any group count dividing the channels), QGemm / QLinearMatMul, QLinearAdd,
QLinearGlobalAveragePool, QLinearAveragePool, MaxPool on quantized tensors,
Flatten/Reshape before a fully connected layer, Concat/QLinearConcat on
channels (any channel counts), Relu/Clip on quantized tensors (folded into the
producer's clamp), the channel shuffle Reshape -> Transpose -> Reshape, Split on
channels, nearest Resize/Upsample by integer factors, the float islands
DequantizeLinear -> ReduceMean (H, W) / Slice / Split -> QuantizeLinear that
onnxruntime's quantizer leaves, and a DequantizeLinear of the output. In QDQ
format, the same operators as float ops (Conv, Gemm, MatMul, Add,
GlobalAveragePool, AveragePool, MaxPool, Flatten, Reshape, Transpose of a
shuffle, Concat, Relu, Clip, ReduceMean, Slice, Split, Resize, Upsample) between
DequantizeLinear and QuantizeLinear nodes, read into the same IR as their
QOperator twins. Each op has a converter in
:mod:`.converters` or :mod:`.qdq` (looked up in :mod:`.registry`); the graph then goes through
the frontend passes (:mod:`dlfusion.compiler.passes`). Anything else is an
:class:`~dlfusion.compiler.ir.IRError` naming the node, its op, the format and
what is supported.
"""

from __future__ import annotations

from pathlib import Path

from ..ir import Graph, IRError
from ..passes import run_passes
from . import converters  # noqa: F401  (registers the converters)
from .qdq import QdqContext
from .registry import Context, convert, supported_ops

__all__ = ["load_onnx", "SUPPORTED_OPS", "SUPPORTED_QDQ_OPS", "model_format"]

SUPPORTED_OPS = supported_ops("QOperator")
SUPPORTED_QDQ_OPS = supported_ops("QDQ")

#: Ops whose presence makes a model QOperator.
_QOPERATOR_OPS = {"QLinearConv", "QGemm", "QLinearMatMul", "QLinearAdd", "QLinearGlobalAveragePool",
                  "QLinearAveragePool", "QLinearConcat"}


def model_format(onnx_graph) -> str:
    """``QOperator`` (onnxruntime's quantized operators), ``QDQ`` (QuantizeLinear/DequantizeLinear
    around float operators) or ``float``."""
    ops = {node.op_type for node in onnx_graph.node}
    if ops & _QOPERATOR_OPS:
        return "QOperator"
    if "DequantizeLinear" in ops:
        return "QDQ"
    return "float"


def load_onnx(path: str | Path, name: str | None = None) -> Graph:
    """Read a quantized ONNX model (QOperator or QDQ) into a checked :class:`Graph`."""
    import onnx
    from onnx import numpy_helper, shape_inference
    path = Path(path)
    try:
        model = onnx.load(str(path))
    except FileNotFoundError:
        raise IRError(f"ONNX model {str(path)!r} does not exist") from None
    except Exception as error:  # onnx raises DecodeError and friends
        raise IRError(f"{path}: not a readable ONNX model ({type(error).__name__}: {error})") from None
    try:
        model = shape_inference.infer_shapes(model)
    except Exception:  # shapes are only a cross-check; the model itself is what counts
        pass
    graph = model.graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    if len(graph.input) - sum(1 for i in graph.input if i.name in constants) != 1 or not graph.output:
        raise IRError(f"{path}: the model must have exactly one input and at least one output")
    model_input = next(i for i in graph.input if i.name not in constants)
    dims = [d.dim_value for d in model_input.type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[0] not in (0, 1) or not all(dims[1:]):
        raise IRError(f"{path}: input {model_input.name!r} must be NCHW with batch 1 and static sizes, not {dims}")

    model_format_name = model_format(graph)
    context = (QdqContext if model_format_name == "QDQ" else Context)(
        graph, constants, model_input, dims, Graph(name or path.stem, {}, [], input="", output=""))
    for node in graph.node:
        convert(context, node, model_format_name)
    ir = context.ir
    if not ir.input:
        raise IRError(f"{path}: the model input is not quantized by a QuantizeLinear (is it a quantized model?)")
    missing = [o.name for o in graph.output if o.name not in context.outputs]
    if missing:
        raise IRError(f"{path}: the model output(s) {missing} are not produced by a DequantizeLinear of a "
                      "quantized tensor")
    ordered = [context.outputs[o.name] for o in graph.output]
    ir.output, ir.more_outputs = ordered[0][0], [tensor for tensor, _ in ordered[1:]]
    ir.output_dequant = ordered[0][1] if len(ordered) == 1 else [dequant for _, dequant in ordered]
    return run_passes(ir)
