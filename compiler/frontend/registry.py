"""The converter registry: one small function per ONNX op (or op family), looked up by op type.

A converter gets the :class:`Context` of the model being read and one ONNX node,
and appends what the node computes to the graph IR (or records that its output
stands for another tensor, as Flatten does). Each model format has its table:
:data:`CONVERTERS` for onnxruntime's QOperator ops (:mod:`.converters`),
:data:`QDQ_CONVERTERS` for float ops between DequantizeLinear and QuantizeLinear
(:mod:`.qdq`). An op without a converter is the registry's miss, reported with
the node's name, the model's format and the ops supported in that format.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..ir import Graph, IRError, Node, Tensor, out_size

__all__ = ["Context", "CONVERTERS", "QDQ_CONVERTERS", "converter", "convert", "supported_ops", "f32"]

#: ONNX op type -> converter, for QOperator models.
CONVERTERS: dict[str, Callable[[Context, object], None]] = {}
#: ONNX op type -> converter, for QDQ models.
QDQ_CONVERTERS: dict[str, Callable[[Context, object], None]] = {}
_TABLES = {"QOperator": CONVERTERS, "QDQ": QDQ_CONVERTERS}


def converter(*op_types: str, table: dict | None = None):
    """Register the decorated function as the converter of ``op_types`` in ``table``
    (:data:`CONVERTERS` unless given)."""
    table = CONVERTERS if table is None else table

    def register(function):
        for op_type in op_types:
            if op_type in table:
                raise ValueError(f"op {op_type!r} has two converters")
            table[op_type] = function
        return function
    return register


def supported_ops(model_format: str = "QOperator") -> tuple[str, ...]:
    """The op types with a converter for ``model_format`` (``QOperator`` or ``QDQ``)."""
    return tuple(_TABLES.get(model_format, CONVERTERS))


def f32(value) -> np.float32:
    """The first element of an ONNX scale as float32."""
    return np.float32(np.asarray(value, dtype=np.float32).reshape(-1)[0])


@dataclass
class Context:
    """What the converters share while one model is read.

    Attributes
    ----------
    onnx_graph : onnx.GraphProto
    constants : dict of str to numpy.ndarray
        Initializers and Constant outputs.
    model_input : onnx.ValueInfoProto
        The float input.
    dims : list of int
        Its NCHW shape.
    ir : Graph
        The graph being built.
    alias : dict of str to str
        Outputs that stand for another tensor (Flatten, Reshape).
    handled : set of str
        Names (or first outputs) of nodes already converted with another one (the Transpose and
        Reshape of a channel shuffle, the Q/DQ pairs between them); :func:`convert` skips them.
    outputs : dict of str to tuple
        Per model output (by ONNX name): the quantized tensor it dequantizes and its DequantizeLinear
        (scale, zero point, the shape onnxruntime returns).
    """
    onnx_graph: object
    constants: dict
    model_input: object
    dims: list
    ir: Graph
    alias: dict = field(default_factory=dict)
    handled: set = field(default_factory=set)
    outputs: dict = field(default_factory=dict)

    # -- reading the ONNX node -----------------------------------------------------------------------

    @staticmethod
    def where(node) -> str:
        return f"node {node.name!r} ({node.op_type})"

    @staticmethod
    def attrs(node) -> dict:
        from onnx import helper
        return {a.name: helper.get_attribute_value(a) for a in node.attribute}

    def const(self, name: str, node) -> np.ndarray:
        if name not in self.constants:
            raise IRError(f"{self.where(node)}: input {name!r} must be a constant initializer")
        return self.constants[name]

    def resolve(self, name: str) -> str:
        while name in self.alias:
            name = self.alias[name]
        return name

    def tensor(self, name: str, node) -> Tensor:
        """The quantized activation ``name`` (an alias resolved)."""
        name = self.resolve(name)
        if name not in self.ir.tensors:
            raise IRError(f"{self.where(node)}: input {name!r} is not a quantized activation produced by a "
                          "supported op")
        return self.ir.tensors[name]

    def consumers(self, name: str) -> list:
        """The ONNX nodes that read ``name``."""
        return [n for n in self.onnx_graph.node if name in n.input]

    def next_op(self, name: str, node):
        """The one node reading ``name``, past QuantizeLinear -> DequantizeLinear pairs (a QDQ model's
        marks between float ops); raises naming ``node`` unless there is exactly one."""
        readers = self.consumers(name)
        while len(readers) == 1 and readers[0].op_type == "QuantizeLinear":
            after = self.consumers(readers[0].output[0])
            if len(after) != 1 or after[0].op_type != "DequantizeLinear":
                break
            self.handled.update((readers[0].output[0], after[0].output[0]))
            readers = self.consumers(after[0].output[0])
        if len(readers) != 1:
            raise IRError(f"{self.where(node)}: its output must be read by one node, not "
                          f"{[r.name or r.output[0] for r in readers]}")
        return readers[0]

    def window(self, node, a: dict, kernel_default=None) -> tuple[int, int, int]:
        """``(kernel, stride, pad)`` of a square, symmetric, undilated window."""
        where = self.where(node)
        kernel = a.get("kernel_shape", kernel_default)
        strides = a.get("strides", [1, 1])
        pads = a.get("pads", [0, 0, 0, 0])
        dilations = a.get("dilations", [1, 1])
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise IRError(f"{where}: auto_pad is not supported; use explicit pads")
        if kernel is None or len(set(kernel)) != 1 or len(set(strides)) != 1 or len(set(pads)) != 1:
            raise IRError(f"{where}: only square kernels, equal strides and symmetric padding are supported "
                          f"(kernel {kernel}, strides {strides}, pads {pads})")
        if set(dilations) != {1}:
            raise IRError(f"{where}: dilation {dilations} is not supported (only 1)")
        if a.get("ceil_mode", 0) and node.op_type != "MaxPool":
            raise IRError(f"{where}: ceil_mode=1 is only supported for MaxPool")
        return int(kernel[0]), int(strides[0]), int(pads[0])

    @staticmethod
    def out_hw(h: int, w: int, k: int, s: int, p: int, ceil_mode: bool = False) -> tuple[int, int]:
        return out_size(h, k, s, p, ceil_mode), out_size(w, k, s, p, ceil_mode)

    # -- building the IR -----------------------------------------------------------------------------

    def add_tensor(self, name: str, shape, scale, zero_point) -> Tensor:
        zero = np.asarray(zero_point)
        if zero.dtype not in (np.int8, np.uint8):
            raise IRError(f"tensor {name!r}: zero point type {zero.dtype} is not int8 or uint8")
        dtype = "int8" if zero.dtype == np.int8 else "uint8"
        self.ir.tensors[name] = Tensor(name, tuple(int(v) for v in shape), dtype, float(f32(scale)),
                                       int(zero.reshape(-1)[0]))
        return self.ir.tensors[name]

    def emit(self, node: Node, shape, scale, zero_point) -> Tensor:
        """Append ``node`` with an output tensor of ``shape`` and quantization (its clamp: the whole range)."""
        out = self.add_tensor(node.output, shape, scale, zero_point)
        if node.attrs.clamp is None:
            node.attrs.clamp = out.qrange
        self.ir.nodes.append(node)
        return out


def convert(context: Context, node, model_format: str) -> None:
    """Convert one ONNX node through its registered converter.

    Raises
    ------
    IRError
        The op has no converter (naming the node, the op, the format and what is supported), or
        the converter refused the node.
    """
    if node.output and node.output[0] in context.handled:
        return
    if node.domain not in ("", "ai.onnx", "com.microsoft"):
        raise IRError(f"{context.where(node)}: domain {node.domain!r} is not supported")
    function = _TABLES.get(model_format, CONVERTERS).get(node.op_type)
    if function is None:
        raise IRError(f"{context.where(node)}: unsupported op in this {model_format} model; supported: "
                      f"{', '.join(supported_ops(model_format))}")
    function(context, node)
