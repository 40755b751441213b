"""Emit: a planned graph to a binary (constants, the DRAM layout, the lowered streams, the container).

Constants (weights and parameters) are placed first, in node order. Activations
live in DRAM in the channel-blocked layout, allocated (:class:`~dlfusion.hw.asm.DramAllocator`)
when first needed and released once their last consumer's group has finished; a
concat's inputs are placed inside its output, so their producers write straight
into its channel blocks. Every group ends with a barrier across all the cores of
the program, so a group's outputs are in DRAM before the next group reads them.
The instruction streams go last (:func:`~dlfusion.hw.asm.assemble`).
"""

from __future__ import annotations

import numpy as np

from ..hw.asm import AsmError, DramAllocator, StreamBuilder, assemble, pack_params, pack_weight_blocks
from ..hw.binary import Binary, Segment
from ..hw.binary import Tensor as DramTensor
from ..hw.config import HwConfig
from ..hw.isa import Opcode
from ..hw.numerics import qlinear_add_params
from .errors import CompileError
from .ir import WINDOWED, Graph, Op, computed
from .lower.common import ceil_div, initial_credits, layer_of, pack_windowed, params_for
from .lower.group import lower_group
from .plan import Plan, group_label

__all__ = ["place_constants", "weight_bytes", "ActivationLayout", "emit_program"]


def place_constants(graph: Graph, hw: HwConfig) -> tuple[list[Segment], dict[str, dict], int]:
    """DRAM segments of every node's weights (and a sparse layer's metadata), parameters and lookup table
    from line 0; per node its ``weight_line``, ``meta_line``, ``param_line`` and ``table_line``; the first
    line after them."""
    lanes = hw.lanes
    segments: list[Segment] = []
    cursor = 0
    constants: dict[str, dict] = {}
    for node in graph.nodes:
        entry = {}
        if node.op in WINDOWED:
            layer = layer_of(graph, node)
            out_channels = graph.tensors[node.output].shape[0]
            blocks, meta = pack_windowed(layer, node.attrs.weight, lanes)
            if node.op is Op.MAXPOOL:
                bias, multiplier = np.zeros(out_channels, np.int32), np.ones(out_channels, np.float32)
            elif node.op is Op.AVGPOOL:
                bias = np.zeros(out_channels, np.int32)
                multiplier = np.full(out_channels, node.attrs.multiplier, np.float32)
            else:
                bias, multiplier = node.attrs.bias, node.attrs.multiplier
            params = params_for(bias, multiplier, out_channels, lanes)
            if len(blocks):
                entry["weight_line"] = cursor
                segments.append(Segment(f"weights:{node.name}", cursor, pack_weight_blocks(blocks)))
                cursor += len(blocks) * lanes
            else:
                entry["weight_line"] = 0
            if meta is not None:
                entry["meta_line"] = cursor
                segments.append(Segment(f"meta:{node.name}", cursor, meta.tobytes()))
                cursor += len(meta) * hw.meta_lines_per_block
            entry["param_line"] = cursor
            segments.append(Segment(f"params:{node.name}", cursor, pack_params(params)))
            cursor += params.shape[0] * hw.param_lines_per_entry
        elif node.op is Op.SCALE:
            channels = graph.tensors[node.output].shape[0]
            params = params_for(np.zeros(channels, np.int32), np.full(channels, node.attrs.multiplier, np.float32),
                                channels, lanes)
            entry["param_line"] = cursor
            segments.append(Segment(f"params:{node.name}", cursor, pack_params(params)))
            cursor += params.shape[0] * hw.param_lines_per_entry
        elif node.op in (Op.ADD, Op.LOOKUP):
            if node.op is Op.ADD:
                out = computed(graph, node)
                ra, rb, fixed = qlinear_add_params(node.attrs.a_scale, node.attrs.a_zp, node.attrs.b_scale,
                                                   node.attrs.b_zp, out.scale, out.zero_point)
            else:       # the identity: r = a * 1 + (b * 0 + 0)
                ra, rb, fixed = np.float32(1.0), np.float32(0.0), np.float32(0.0)
            params = np.stack([np.full(lanes, v, np.float32).view(np.uint32) for v in (ra, rb, fixed)])
            entry["param_line"] = cursor
            segments.append(Segment(f"params:{node.name}", cursor, pack_params(params)))
            cursor += 3 * hw.param_lines_per_entry
        if node.attrs.table is not None:
            entry["table_line"] = cursor
            segments.append(Segment(f"table:{node.name}", cursor, node.attrs.table.tobytes()))
            cursor += hw.lut_lines_per_table
        constants[node.name] = entry
    if cursor > hw.dram_lines:
        raise CompileError(f"the model's weights need {cursor} DRAM lines; DRAM has {hw.dram_lines}")
    return segments, constants, cursor


def weight_bytes(binary: Binary) -> int:
    """DRAM bytes of the weights of a binary :func:`place_constants` laid out (a sparse layer's metadata
    included)."""
    return sum(len(segment.data) for segment in binary.segments if segment.name.split(":")[0] in ("weights", "meta"))


class ActivationLayout:
    """DRAM lines of the activations of a planned graph, from ``start`` on.

    :meth:`place` allocates a tensor when it is first needed (a concat's inputs inside its
    output); :meth:`release_after` frees the tensors whose last consumer is in a finished group.
    """

    def __init__(self, graph: Graph, hw: HwConfig, plan: Plan, start: int):
        self.graph, self.hw = graph, hw
        self.pool = DramAllocator(hw, start)
        group_of = {name: index for index, group in enumerate(plan.groups) for name in group.nodes}
        self.last_use = {graph.input: 0}
        for node in graph.nodes:
            for name in node.inputs:
                self.last_use[name] = max(self.last_use.get(name, 0), group_of[node.name])
        for name in graph.outputs:
            self.last_use[name] = len(plan.groups)
        # A concat's inputs are written straight into its output (channel blocks must align).
        self.concat_parent: dict[str, tuple[str, int]] = {}
        for node in graph.nodes:
            if node.op is Op.CONCAT:
                offset = 0
                for index, name in enumerate(node.inputs):
                    channels = graph.tensors[name].shape[0]
                    if index < len(node.inputs) - 1 and channels % hw.lanes:
                        raise CompileError(f"{node.name}: concat input {name!r} has {channels} channels, not a "
                                           f"multiple of the {hw.lanes} lanes")
                    self.concat_parent[name] = (node.output, offset)
                    offset += channels // hw.lanes
        self.address: dict[str, int] = {}
        self.lines_of: dict[str, int] = {}

    def place(self, name: str) -> int:
        """The first DRAM line of tensor ``name``."""
        if name in self.address:
            return self.address[name]
        if name in self.concat_parent:
            parent, block_offset = self.concat_parent[name]
            _, h, w = self.graph.tensors[parent].shape
            self.address[name] = self.place(parent) + block_offset * h * w
            return self.address[name]
        c, h, w = self.graph.tensors[name].shape
        self.lines_of[name] = ceil_div(c, self.hw.lanes) * h * w
        try:
            self.address[name] = self.pool.allocate(self.lines_of[name], f"tensor {name!r}")
        except AsmError as error:
            raise CompileError(str(error)) from None
        return self.address[name]

    def release_after(self, group_index: int) -> None:
        for name in list(self.address):
            if self.last_use.get(name, -1) <= group_index and name in self.lines_of:
                self.pool.release(self.address[name], self.lines_of.pop(name))


def emit_program(graph: Graph, hw: HwConfig, plan: Plan) -> Binary:
    """The binary of a validated ``plan`` of a checked ``graph``."""
    program_cores = max(group.cores for group in plan.groups)
    nodes = {node.name: node for node in graph.nodes}
    segments, constants, cursor = place_constants(graph, hw)
    layout = ActivationLayout(graph, hw, plan, cursor)
    layout.place(graph.input)
    streams = [StreamBuilder(core) for core in range(program_cores)]
    for stream in streams:
        initial_credits(stream)
    group_info = []
    mask = (1 << program_cores) - 1
    for index, group in enumerate(plan.groups):
        layout.place(nodes[group.nodes[-1]].output)
        lowered = lower_group(graph, hw, group.nodes, group.cores, group.split, streams, address=layout.place,
                              constants=constants, label=group_label(index, group))
        for stream in streams:
            stream.emit(Opcode.BARRIER, core_mask=mask)
        group_info.append({"index": index, "nodes": group.nodes, "cores": group.cores, "split": str(group.split),
                           "macs": sum(nodes[n].macs for n in group.nodes), **lowered.report,
                           "barrier_index": [len(s) - 1 for s in streams]})
        layout.release_after(index)
    for stream in streams:
        stream.end()

    x, y = graph.tensors[graph.input], graph.tensors[graph.output]
    inputs = [DramTensor("input", layout.address[graph.input], x.shape, x.dtype)]
    # "output", then "output1", "output2", ... for a model's further outputs
    outputs = [DramTensor("output" if index == 0 else f"output{index}", layout.address[name],
                          graph.tensors[name].shape, graph.tensors[name].dtype)
               for index, name in enumerate(graph.outputs)]
    metadata = {"model": graph.name, "macs": graph.macs, "plan": plan.to_json(), "groups": group_info,
                "input_quant": graph.input_quant, "output_dequant": graph.output_dequant,
                "output_scale": y.scale, "output_zero_point": y.zero_point}
    # The code goes after everything else.
    try:
        return assemble(hw, streams, segments, DramAllocator(hw, start=layout.pool.high_water), inputs, outputs,
                        metadata)
    except AsmError as error:
        raise CompileError(str(error)) from None
