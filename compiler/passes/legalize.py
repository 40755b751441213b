"""Legalization: what the accelerator cannot do as read becomes what it can."""

from __future__ import annotations

import numpy as np

from ..ir import Graph, IRError, Node, Op, Tensor

__all__ = ["rescale_concat_inputs", "align_concat_inputs", "table_multiplier", "CONCAT_ALIGN"]

#: Channels a concat input (but the last) must fill whole blocks of: an activation line holds the
#: channels of one pixel in lane blocks, and the lowering writes each input into its blocks of the
#: output. 16, the default lane count, is a multiple of 4, 8 and 16 lanes (on 32 lanes an input of
#: 16 channels is refused at emission, as before).
CONCAT_ALIGN = 16


def table_multiplier(part: Tensor, y_scale: np.float32, y_zero: int, dtype, where: str) -> np.float32:
    """A float32 multiplier ``m`` with ``clamp(rne((x - zx) * m) + zy) == table[x]`` for every
    8-bit ``x``, where ``table`` is onnxruntime's QLinearConcat lookup table
    (dequantize with the input's parameters, quantize with the output's)."""
    info = np.iinfo(dtype)
    x = np.arange(info.min, info.max + 1)
    real = (x - part.zero_point).astype(np.float32) * np.float32(part.scale)
    table = np.clip(np.rint(real / y_scale) + y_zero, info.min, info.max)
    guess = np.float32(np.float32(part.scale) / y_scale)
    bits = int(guess.view(np.int32))
    for step in range(64):      # the nearest float32 values around the scale ratio
        for candidate in {bits + step, bits - step}:
            m = np.array(candidate, np.int32).view(np.float32)
            ours = np.clip(np.rint((x - part.zero_point).astype(np.float32) * m) + y_zero, info.min, info.max)
            if np.array_equal(ours, table):
                return np.float32(m)
    raise IRError(f"{where}: cannot reproduce the requantization table of input {part.name!r} "
                  "with a multiplier")


def rescale_concat_inputs(graph: Graph) -> None:
    """Before every requantizing concat (QLinearConcat: ``attrs.requantize``), an identity 1x1
    depthwise layer for each input quantized otherwise than the concat's output (named
    ``<concat>:rescale<i>``, output ``<input>:rescaled``). A plain Concat joins the integers as
    they are, so its inputs must share a quantization (the IR check says so)."""
    for concat in [n for n in graph.nodes if n.op is Op.CONCAT and n.attrs.requantize]:
        out = graph.tensors[concat.output]
        dtype = np.int8 if out.signed else np.uint8
        where = f"node {concat.name!r} (QLinearConcat)"
        for index, name in enumerate(list(concat.inputs)):
            part = graph.tensors[name]
            if np.float32(part.scale) == np.float32(out.scale) and part.zero_point == out.zero_point:
                continue
            multiplier = table_multiplier(part, np.float32(out.scale), out.zero_point, dtype, where)
            channels = part.shape[0]
            rescaled = Node(f"{concat.name}:rescale{index}", Op.DEPTHWISE, [name], f"{name}:rescaled",
                            dict(kernel=1, stride=1, pad=0, weight=np.ones((channels, 1, 1, 1), np.int8),
                                 bias=np.zeros(channels, np.int32),
                                 multiplier=np.full(channels, multiplier, np.float32), clamp=out.qrange))
            graph.tensors[rescaled.output] = Tensor(rescaled.output, part.shape, out.dtype, out.scale,
                                                    out.zero_point)
            graph.nodes.insert(graph.nodes.index(concat), rescaled)
            concat.inputs[index] = rescaled.output


def _selection(name: str, source: Tensor, output: str, channels: list[int | None]) -> Node:
    """A channel-selection CONV: output channel ``o`` is ``source``'s channel ``channels[o]`` (``None``: a
    padding channel, the zero point)."""
    weight = np.zeros((len(channels), source.shape[0], 1, 1), np.int8)
    for index, channel in enumerate(channels):
        if channel is not None:
            weight[index, channel] = 1
    return Node(name, Op.CONV, [source.name], output,
                dict(kernel=1, stride=1, pad=0, weight=weight, bias=np.zeros(len(channels), np.int32),
                     multiplier=np.ones(len(channels), np.float32), clamp=source.qrange, selection=True))


def align_concat_inputs(graph: Graph) -> None:
    """A concat with an input (but the last) of a channel count that is not a multiple of
    :data:`CONCAT_ALIGN` concatenates instead each input padded to whole blocks (a selection CONV
    ``<concat>:align<i>`` adding zero-point channels, output ``<input>:aligned``) into
    ``<output>:padded``, from which the selection ``<concat>:compact`` takes the real channels into
    the concat's output. Both are exact (the inputs share the output's quantization after
    ``rescale_concat_inputs``; multiplier 1.0)."""
    for concat in [n for n in graph.nodes if n.op is Op.CONCAT]:
        parts = [graph.tensors[name] for name in concat.inputs]
        if all(t.shape[0] % CONCAT_ALIGN == 0 for t in parts[:-1]):
            continue
        out = graph.tensors[concat.output]
        position = graph.nodes.index(concat)
        kept: list[int | None] = []
        offset = 0
        for index, part in enumerate(parts):
            channels = part.shape[0]
            padded = -(-channels // CONCAT_ALIGN) * CONCAT_ALIGN if index < len(parts) - 1 else channels
            kept += list(range(offset, offset + channels))
            offset += padded
            if padded == channels:
                continue
            aligned = _selection(f"{concat.name}:align{index}", part, f"{part.name}:aligned",
                                 [*range(channels), *([None] * (padded - channels))])
            graph.tensors[aligned.output] = Tensor(aligned.output, (padded, *part.shape[1:]), part.dtype,
                                                   part.scale, part.zero_point)
            graph.nodes.insert(position, aligned)
            position += 1
            concat.inputs[index] = aligned.output
        padded_name = f"{concat.output}:padded"
        graph.tensors[padded_name] = Tensor(padded_name, (offset, *out.shape[1:]), out.dtype, out.scale,
                                            out.zero_point)
        compact = _selection(f"{concat.name}:compact", graph.tensors[padded_name], concat.output, kept)
        concat.output = padded_name
        graph.nodes.insert(position + 1, compact)
