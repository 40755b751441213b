"""The quantized graph IR: one op enum, tensors with scales and zero points.

A :class:`Graph` is a list of :class:`Node` in topological order over named
:class:`Tensor` values of shape ``(C, H, W)`` (batch 1). Every op carries what
its lowering needs (int8 weights, int32 biases, float32 requantization
multipliers computed the way onnxruntime computes them). :func:`check` is the
invariant check run between passes (always in tests).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from ..hw.errors import InputError
from ..hw.isa import Sparsity

__all__ = ["Op", "Tensor", "NodeAttrs", "Node", "Graph", "IRError", "check", "out_size", "WINDOWED", "TRANSIENT",
           "TABLE_OPS", "computed"]


def out_size(size: int, kernel: int, stride: int, pad: int, ceil_mode: bool = False) -> int:
    """Output size of a window (ONNX rules, including ceil_mode: a last window must start
    inside the input or its left padding)."""
    span = size + 2 * pad - kernel
    if not ceil_mode:
        return span // stride + 1
    count = -(-span // stride) + 1
    if (count - 1) * stride >= size + pad:
        count -= 1
    return count


class IRError(InputError):
    """A graph violates an IR invariant or uses something the compiler does not support."""


class Op(enum.Enum):
    CONV = "conv"                  #: QLinearConv (groups = 1 or grouped), or a 0/1 channel selection
    DEPTHWISE = "depthwise"        #: QLinearConv, groups = channels
    FC = "fc"                      #: QGemm / QLinearMatMul on a flattened (C, 1, 1) tensor
    ADD = "add"                    #: QLinearAdd
    MAXPOOL = "maxpool"            #: MaxPool on a quantized tensor
    AVGPOOL = "avgpool"            #: QLinearAveragePool / QLinearGlobalAveragePool
    CONCAT = "concat"              #: channel concatenation (same scale and zero point)
    UPSAMPLE = "upsample"          #: nearest Resize by integer factors (keeps the quantization)
    LOOKUP = "lookup"              #: an elementwise function of one byte (sigmoid, tanh, SiLU, ...) as a table
    SCALE = "scale"                #: QLinearMul by a per-channel (C, 1, 1) tensor (squeeze-and-excitation)
    CLAMP = "clamp"                #: Relu/Clip as read; folded into its producer by a pass (never lowered)


#: Ops that the windowed lowering handles (a k x k window over the input).
WINDOWED = (Op.CONV, Op.DEPTHWISE, Op.FC, Op.MAXPOOL, Op.AVGPOOL)
#: Ops that exist only between the frontend and the passes that legalize them.
TRANSIENT = (Op.CLAMP,)


@dataclass
class Tensor:
    """A quantized activation of logical shape ``(C, H, W)``."""
    name: str
    shape: tuple[int, int, int]
    dtype: str          # "int8" | "uint8"
    scale: float
    zero_point: int

    @property
    def signed(self) -> bool:
        return self.dtype == "int8"

    @property
    def qrange(self) -> tuple[int, int]:
        return (-128, 127) if self.signed else (0, 255)


@dataclass(kw_only=True)
class NodeAttrs:
    """What an operator carries, by name; the fields an op does not use stay at their defaults.

    Attributes
    ----------
    kernel, stride, pad : int
        Windowed ops (CONV, DEPTHWISE, FC, MAXPOOL, AVGPOOL): a square window, symmetric padding.
    ceil_mode : bool
        MAXPOOL: ONNX ceil_mode (a last, partial window).
    weight : numpy.ndarray or None
        CONV/FC int8 ``(K, C, k, k)``, DEPTHWISE int8 ``(C, 1, k, k)``.
    bias : numpy.ndarray or None
        CONV/FC/DEPTHWISE int32 ``(K,)``.
    multiplier : numpy.ndarray, numpy.float32 or None
        CONV/FC/DEPTHWISE float32 ``(K,)`` requantization multipliers; AVGPOOL a float32 scalar.
    clamp : tuple of int or None
        Every op: ``(lo, hi)`` of its output (Relu and Clip are folded in here).
    macs : int
        Multiply-accumulates (the ``annotate_macs`` pass).
    a_scale, a_zp, b_scale, b_zp : float, int
        ADD: the inputs' quantization.
    requantize : bool
        CONCAT from QLinearConcat: inputs of another quantization are rescaled.
    source : str
        CLAMP: the ONNX op it was read from.
    groups : int
        CONV: ONNX ``group``; the weight is held dense ``(K, C, k, k)``, zero outside the block
        diagonal, and the lowering skips the all-zero ``L x L`` weight blocks.
    factors : tuple of int
        UPSAMPLE: the integer ``(height, width)`` factors of a nearest upsampling.
    table : numpy.ndarray or None
        LOOKUP, and CONV/DEPTHWISE/FC/AVGPOOL/ADD after the ``fold_lookups`` pass: 256 uint8 output
        bytes indexed by the byte the op computes (after its clamp); see :mod:`..tables`.
    multiplier (SCALE)
        The float32 ratio ``x_scale * s_scale / y_scale`` of onnxruntime's QLinearMul; the inputs are
        ``x`` and int8 ``(C, 1, 1)`` tensors whose sum is the scale less its zero point.
    table_input : Tensor or None
        With ``table`` on a CONV/DEPTHWISE/FC/AVGPOOL/ADD: the quantization the op computes (the
        table's index), before the table maps it to the node's output tensor.
    sparsity : Sparsity
        CONV/FC: the N:M pattern its weights run with on the sparse PE array (set by the
        ``choose_sparsity`` pass from the int8 weights and the HwConfig; DENSE otherwise).
    selection : bool
        CONV: a 1x1 convolution with a 0/1 weight (at most one 1 per output channel; none: a
        padding channel, the zero point) and bias 0 that moves channels (Slice, Split, a channel
        shuffle, the realignment of a Concat). With multiplier 1.0 and the input's zero point it is
        exact, since ``x - zp`` is an integer the requantization returns unchanged (a Concat input
        of another quantization gets the rescaling multiplier of ``rescale_concat_inputs``). Its
        all-zero weight blocks are skipped too.
    """
    kernel: int = 1
    stride: int = 1
    pad: int = 0
    ceil_mode: bool = False
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    multiplier: np.ndarray | np.float32 | None = None
    clamp: tuple[int, int] | None = None
    macs: int = 0
    a_scale: float = 1.0
    a_zp: int = 0
    b_scale: float = 1.0
    b_zp: int = 0
    requantize: bool = False
    source: str = ""
    groups: int = 1
    selection: bool = False
    factors: tuple[int, int] = (1, 1)
    table: np.ndarray | None = None
    table_input: Tensor | None = None
    sparsity: Sparsity = Sparsity.DENSE


#: Ops whose output may go through a lookup table (the PPU writes their output bytes).
TABLE_OPS = (Op.CONV, Op.DEPTHWISE, Op.FC, Op.AVGPOOL, Op.ADD)


def computed(graph: Graph, node: Node) -> Tensor:
    """The quantization ``node`` computes before its lookup table (its output tensor when it has none)."""
    if node.attrs.table_input is not None:
        return node.attrs.table_input
    return graph.tensors[node.output]


@dataclass
class Node:
    """One operator: ``op`` of ``inputs`` into ``output``, with its :class:`NodeAttrs` (a dict of
    their names is accepted and converted: an unknown name is an error)."""
    name: str
    op: Op
    inputs: list[str]
    output: str
    attrs: NodeAttrs = field(default_factory=NodeAttrs)

    def __post_init__(self):
        if isinstance(self.attrs, dict):
            self.attrs = NodeAttrs(**self.attrs)

    @property
    def macs(self) -> int:
        return int(self.attrs.macs)


@dataclass
class Graph:
    name: str
    tensors: dict[str, Tensor]
    nodes: list[Node]
    input: str
    output: str
    #: onnxruntime's QuantizeLinear of the float input and DequantizeLinear of the output (with several
    #: outputs, a list of them in the order of :attr:`outputs`)
    input_quant: dict = field(default_factory=dict)
    output_dequant: dict | list = field(default_factory=dict)
    #: The model's outputs after the first (``output``), in the ONNX model's order (a detector's heads).
    more_outputs: list[str] = field(default_factory=list)

    @property
    def outputs(self) -> list[str]:
        """Every output tensor, the first being :attr:`output`."""
        return [self.output, *self.more_outputs]

    def rename_output(self, old: str, new: str) -> None:
        """An output tensor ``old`` is now called ``new`` (a pass removed the node producing it)."""
        if self.output == old:
            self.output = new
        self.more_outputs = [new if name == old else name for name in self.more_outputs]

    def producer(self, tensor: str) -> Node | None:
        for node in self.nodes:
            if node.output == tensor:
                return node
        return None

    def consumers(self, tensor: str) -> list[Node]:
        return [node for node in self.nodes if tensor in node.inputs]

    @property
    def macs(self) -> int:
        return sum(node.macs for node in self.nodes)


def check(graph: Graph, *, legal: bool = True) -> None:
    """Raise :class:`IRError` unless every invariant holds.

    ``legal`` also asks what the lowering needs: no :data:`TRANSIENT` op, and concat inputs
    that share the output's quantization (the graph after the passes); without it, the
    invariants of the graph between the frontend's passes."""
    defined = {graph.input}
    if graph.input not in graph.tensors:
        raise IRError(f"graph input {graph.input!r} has no tensor")
    names = set()
    for node in graph.nodes:
        if node.name in names:
            raise IRError(f"node name {node.name!r} is used twice")
        names.add(node.name)
        for name in node.inputs:
            if name not in defined:
                raise IRError(f"{node.name}: input {name!r} is used before it is produced (order is not topological)")
        if node.output in defined:
            raise IRError(f"{node.name}: output {node.output!r} is produced twice")
        if node.output not in graph.tensors:
            raise IRError(f"{node.name}: output {node.output!r} has no tensor")
        defined.add(node.output)
        out = graph.tensors[node.output]
        ins = [graph.tensors[name] for name in node.inputs]
        table = node.attrs.table
        if table is not None:
            if node.op is not Op.LOOKUP and node.op not in TABLE_OPS:
                raise IRError(f"{node.name}: a {node.op.value} cannot apply a lookup table")
            if table.shape != (256,) or table.dtype != np.uint8:
                raise IRError(f"{node.name}: a lookup table is 256 uint8 bytes, not {table.shape} {table.dtype}")
            if node.op is not Op.LOOKUP and (node.attrs.table_input is None
                                             or node.attrs.table_input.shape != out.shape):
                raise IRError(f"{node.name}: a folded lookup table needs table_input of the output's shape")
        elif node.attrs.table_input is not None:
            raise IRError(f"{node.name}: table_input without a table")
        if node.attrs.table_input is not None:
            out = node.attrs.table_input      # the op's own checks are on what it computes
        c, h, w = ins[0].shape
        if node.op in WINDOWED:
            k, s, p = node.attrs.kernel, node.attrs.stride, node.attrs.pad
            ceil = bool(node.attrs.ceil_mode)
            expected_hw = (out_size(h, k, s, p, ceil), out_size(w, k, s, p, ceil))
            if out.shape[1:] != expected_hw:
                raise IRError(f"{node.name}: output spatial shape {out.shape[1:]} != {expected_hw}")
            if node.op in (Op.CONV, Op.FC):
                weight = node.attrs.weight
                if weight is None:
                    raise IRError(f"{node.name}: a {node.op.value} needs int8 weights {(out.shape[0], c, k, k)}")
                if weight.shape != (out.shape[0], c, k, k) or weight.dtype != np.int8:
                    raise IRError(f"{node.name}: weight {weight.shape} {weight.dtype} does not match "
                                  f"{(out.shape[0], c, k, k)} int8")
                groups = node.attrs.groups
                if groups != 1:
                    if node.op is not Op.CONV or c % groups or out.shape[0] % groups:
                        raise IRError(f"{node.name}: group={groups} must divide the {c} input and "
                                      f"{out.shape[0]} output channels of a conv")
                    group_of_out = np.arange(out.shape[0]) // (out.shape[0] // groups)
                    group_of_in = np.arange(c) // (c // groups)
                    outside = group_of_out[:, None] != group_of_in[None, :]
                    if np.any(weight[outside] != 0):
                        raise IRError(f"{node.name}: a grouped conv's weight must be zero outside its "
                                      f"{groups} diagonal blocks")
                if node.attrs.selection and (k != 1 or np.any((weight != 0) & (weight != 1))
                                             or np.any((weight != 0).sum(axis=1) > 1)
                                             or np.any(node.attrs.bias != 0)):
                    raise IRError(f"{node.name}: a channel selection is a 1x1 conv with at most one weight 1 "
                                  "per output channel and bias 0")
            if node.op in (Op.DEPTHWISE, Op.MAXPOOL, Op.AVGPOOL) and out.shape[0] != c:
                raise IRError(f"{node.name}: {node.op.value} changes the channel count {c} -> {out.shape[0]}")
            if node.op in (Op.CONV, Op.FC, Op.DEPTHWISE):
                for key, dtype in (("bias", np.int32), ("multiplier", np.float32)):
                    value = getattr(node.attrs, key)
                    if value is None or value.shape != (out.shape[0],) or value.dtype != dtype:
                        raise IRError(f"{node.name}: {key} must be ({out.shape[0]},) {np.dtype(dtype).name}")
            if node.op is Op.MAXPOOL and (out.scale != ins[0].scale or out.zero_point != ins[0].zero_point
                                          or out.dtype != ins[0].dtype):
                raise IRError(f"{node.name}: MaxPool must keep the quantization of its input")
        elif node.op is Op.ADD:
            if len(ins) != 2 or ins[0].shape != ins[1].shape or out.shape != ins[0].shape:
                raise IRError(f"{node.name}: add needs two inputs of the output's shape")
            if len({t.dtype for t in (*ins, out)}) != 1:
                raise IRError(f"{node.name}: add inputs and output must share a dtype")
        elif node.op is Op.CONCAT:
            if any(t.shape[1:] != out.shape[1:] for t in ins) or sum(t.shape[0] for t in ins) != out.shape[0]:
                raise IRError(f"{node.name}: concat shapes do not add up")
            if legal and any((t.scale, t.zero_point, t.dtype) != (out.scale, out.zero_point, out.dtype)
                             for t in ins):
                raise IRError(f"{node.name}: concat inputs must share the output's quantization")
        elif node.op is Op.UPSAMPLE:
            fh, fw = node.attrs.factors
            if fh < 1 or fw < 1 or out.shape != (c, h * fh, w * fw):
                raise IRError(f"{node.name}: upsampling {ins[0].shape} by {node.attrs.factors} gives "
                              f"{(c, h * fh, w * fw)}, not {out.shape}")
            if (out.scale, out.zero_point, out.dtype) != (ins[0].scale, ins[0].zero_point, ins[0].dtype):
                raise IRError(f"{node.name}: a nearest upsampling must keep the quantization of its input")
        elif node.op is Op.SCALE:
            if not 2 <= len(ins) <= 4 or out.shape != ins[0].shape or any(
                    t.shape != (c, 1, 1) or not t.signed for t in ins[1:]):
                raise IRError(f"{node.name}: a channel scale multiplies a (C, H, W) tensor by one to three int8 "
                              "(C, 1, 1) parts of its scale")
        elif node.op is Op.LOOKUP:
            if len(ins) != 1 or out.shape != ins[0].shape or table is None:
                raise IRError(f"{node.name}: a lookup maps one tensor to one of its shape through its table")
        elif node.op is Op.CLAMP:
            if legal:
                raise IRError(f"{node.name}: a {node.op.value} node must be folded into its producer before lowering")
            if len(ins) != 1 or (out.shape, out.scale, out.zero_point, out.dtype) != \
                    (ins[0].shape, ins[0].scale, ins[0].zero_point, ins[0].dtype):
                raise IRError(f"{node.name}: a clamp keeps its input's shape and quantization")
        else:
            raise IRError(f"{node.name}: unknown op {node.op!r}")
    for name in graph.outputs:
        if name not in defined:
            raise IRError(f"graph output {name!r} is never produced")
    if len(set(graph.outputs)) != len(graph.outputs):
        raise IRError(f"graph outputs {graph.outputs} name a tensor twice")
