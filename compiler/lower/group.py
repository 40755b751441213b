"""One plan group on its cores: the lowering's single entry point.

The compiler's emit step calls :func:`lower_group` with streams that encode
instructions and the DRAM lines of the tensors and constants; the tuner's static
features call it with streams that only count (:class:`~dlfusion.hw.asm.CountSink`)
and any addresses, since no count depends on a DRAM address. Both therefore see
the same instructions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ...hw.asm import StreamBuilder
from ...hw.config import HwConfig
from ..errors import CompileError
from ..ir import Graph, Op
from .common import AddLayer, Split, ceil_div, layer_of, partition
from .elementwise import lower_add
from .fused import FusedGroup
from .resize import UpsampleLayer, lower_upsample
from .scale import ScaleLayer, lower_scale
from .windowed import lower_windowed

__all__ = ["GroupLowering", "lower_group", "core_parts"]


@dataclass
class GroupLowering:
    """What :func:`lower_group` did.

    Attributes
    ----------
    report : dict
        A fusion group's band tiling (``band_rows``, ``bands``, ``act_lines``) for the binary's
        metadata; empty for a single layer.
    tiles : list of int
        Per core (of the group's ``cores``): tiles (a layer's weight groups x row bands) or bands
        (a fusion group) it computes.
    """
    report: dict = field(default_factory=dict)
    tiles: list[int] = field(default_factory=list)


def core_parts(split: Split, cores: int, rows: int, blocks: int) -> list[tuple]:
    """Per core that gets work: its output ``(rows, blocks)`` ranges (``None`` for all of one axis)."""
    if split is Split.ROWS:
        return [((r0, r1), None) for r0, r1 in partition(rows, cores)]
    return [(None, (b0, b1)) for b0, b1 in partition(blocks, cores)]


def lower_group(graph: Graph, hw: HwConfig, nodes: list[str], cores: int, split: Split,
                streams: list[StreamBuilder], *, address: Callable[[str], int], constants: dict,
                label: str, fused: FusedGroup | None = None, layout=None) -> GroupLowering:
    """Lower the group ``nodes`` on ``cores`` cores into ``streams[0:cores]`` (no barrier).

    Parameters
    ----------
    address : callable
        A DRAM tensor's first line (called in the order tensors are first needed).
    constants : dict
        Per node, ``weight_line``, ``param_line`` and (with a lookup table) ``table_line`` of its
        constants in DRAM.
    label : str
        Names the group in errors.
    fused, layout : optional
        A fusion group's :class:`FusedGroup` and layout for ``cores``, when already made.
    """
    lanes = hw.lanes
    node = next(node for node in graph.nodes if node.name == nodes[0])
    if len(nodes) > 1:
        fused = fused or FusedGroup(graph, hw, nodes, label=label)
        layout = layout or fused.layout(cores)
        for name in fused.inputs:
            address(name)
        report = fused.emit(streams, layout, address=address, constants=constants)
        return GroupLowering(report, [len(schedule.bands) for schedule in layout.schedules])
    if node.op is Op.CONCAT:
        return GroupLowering()      # the producers already wrote into the concat's channel blocks
    out = address(node.output)
    x = graph.tensors[node.inputs[0]]
    tiles = []
    if node.op is Op.UPSAMPLE:
        layer = UpsampleLayer(x.shape[0], x.shape[1], x.shape[2], *node.attrs.factors)
        for core, (rows, blocks) in enumerate(core_parts(split, cores, x.shape[1], ceil_div(x.shape[0], lanes))):
            try:
                report = lower_upsample(hw, layer, streams[core], in_line=address(node.inputs[0]), out_line=out,
                                        rows=rows, blocks=blocks)
            except CompileError as error:
                raise CompileError(f"{label}: {error}") from None
            tiles.append(report["tiles"])
        return GroupLowering(tiles=tiles)
    if node.op is Op.SCALE:
        y = graph.tensors[node.output]
        layer = ScaleLayer(x.shape[0], x.shape[1], x.shape[2], x.signed, x.zero_point, y.signed, y.zero_point,
                           *node.attrs.clamp)
        for core, (rows, blocks) in enumerate(core_parts(split, cores, x.shape[1], ceil_div(x.shape[0], lanes))):
            try:
                report = lower_scale(hw, layer, streams[core], x_line=address(node.inputs[0]),
                                     part_lines=[address(name) for name in node.inputs[1:]], out_line=out,
                                     param_line=constants[node.name]["param_line"], rows=rows, blocks=blocks,
                                     credits=False)
            except CompileError as error:
                raise CompileError(f"{label}: {error}") from None
            tiles.append(report["tiles"])
        return GroupLowering(tiles=tiles)
    if node.op in (Op.ADD, Op.LOOKUP):
        # a LOOKUP is an ADD of its input with itself that adds nothing (see lower_add)
        a_name, b_name = node.inputs if node.op is Op.ADD else (node.inputs[0], node.inputs[0])
        clamp = node.attrs.clamp if node.op is Op.ADD else x.qrange
        layer = AddLayer(x.shape[0], x.shape[1], x.shape[2], x.signed, *clamp, node.attrs.table is not None)
        for core, (rows, blocks) in enumerate(core_parts(split, cores, x.shape[1], ceil_div(x.shape[0], lanes))):
            report = lower_add(hw, layer, streams[core], a_line=address(a_name), b_line=address(b_name),
                               out_line=out, param_line=constants[node.name]["param_line"],
                               table_line=constants[node.name].get("table_line"), rows=rows, blocks=blocks,
                               credits=False)
            tiles.append(report["tiles"])
        return GroupLowering(tiles=tiles)
    layer = layer_of(graph, node)
    for core, (rows, blocks) in enumerate(core_parts(split, cores, layer.out_height,
                                                     ceil_div(layer.out_channels, lanes))):
        try:
            report = lower_windowed(hw, layer, streams[core], in_line=address(node.inputs[0]), out_line=out,
                                    weight_line=constants[node.name]["weight_line"],
                                    param_line=constants[node.name]["param_line"],
                                    table_line=constants[node.name].get("table_line"),
                                    meta_line=constants[node.name].get("meta_line"), rows=rows, blocks=blocks,
                                    credits=False)
        except CompileError as error:
            raise CompileError(f"{label}: {error}") from None
        tiles.append(report["tiles"])
    return GroupLowering(tiles=tiles)
