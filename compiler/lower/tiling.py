"""Tiling a windowed layer to the scratchpads: output-row bands, weight groups, input-channel chunks."""

from __future__ import annotations

from dataclasses import dataclass

from ...hw.asm import StreamBuilder
from ...hw.config import HwConfig
from ...hw.isa import Buffer, Opcode, Sparsity
from ..errors import CompileError
from .common import (
    FIELD_MAX_COUNT,
    FIELD_MAX_STRIDE,
    IN_FREE,
    IN_FULL,
    LayerKind,
    WindowedLayer,
    ceil_div,
    to_byte,
    weight_blocks_for,
)

__all__ = ["Tiling", "channel_plane", "plan_tiling", "chunk_blocks", "chunked_block_ranges", "emit_input_band"]


@dataclass
class Tiling:
    rows: int           # output rows per tile
    in_rows: int        # input rows per tile (with halo)
    in_width: int       # input columns per tile (with padding)
    group_blocks: int   # output-channel blocks per weight group
    in_slot: int        # lines
    out_slot: int       # lines
    plane: int          # lines from one input channel block to the next (odd for a sparse layer)


def channel_plane(layer: WindowedLayer, in_rows: int, in_width: int) -> int:
    """Lines per input channel block of a tile: ``in_rows * in_width``, made odd for a sparse layer (the
    lines of a sparse MATMUL's window are a plane apart and must fall in distinct activation banks)."""
    plane = in_rows * in_width
    return plane + 1 if layer.sparsity is not Sparsity.DENSE and plane % 2 == 0 else plane

def chunk_blocks(hw: HwConfig, layer: WindowedLayer) -> int | None:
    """Input-channel blocks per weight chunk when one output-channel block's weights do not
    fit half the weight scratchpad (a convolution with many input channels), else ``None``.

    Such a layer is lowered one output block at a time, its input channels in chunks whose
    partial sums accumulate in the accumulators (see :func:`lower_windowed`)."""
    per_block = weight_blocks_for(layer, hw.lanes)
    half_weights = hw.weight_slot_blocks
    if per_block <= half_weights:
        return None
    taps = layer.kernel * layer.kernel
    if layer.kind is not LayerKind.CONV or taps > half_weights or taps > FIELD_MAX_COUNT:
        raise CompileError(f"{layer.kind} layer needs {per_block} weight blocks per output-channel block, "
                           f"half the weight scratchpad holds {half_weights}; needs weight_blocks >= "
                           f"{2 * (taps if layer.kind == 'conv' else per_block)}")
    return half_weights // taps


def chunked_block_ranges(hw: HwConfig, block0: int, block1: int) -> list[tuple[int, int]]:
    """The output-block ranges a chunked convolution's part is lowered in, one after the other:
    each keeps its blocks' parameters on chip (``param_slot_entries`` blocks at most)."""
    most = max(1, hw.param_slot_entries)
    return [(b, min(block1, b + most)) for b in range(block0, block1, most)]


def plan_tiling(hw: HwConfig, layer: WindowedLayer, out_rows: int | None = None,
                out_blocks: int | None = None) -> Tiling:
    """Tile a layer (or the part of it one core computes: ``out_rows`` rows and
    ``out_blocks`` output-channel blocks) to the scratchpads."""
    lanes = hw.lanes
    k, s = layer.kernel, layer.stride
    cin_blocks = ceil_div(layer.in_channels, lanes)
    cout_blocks = out_blocks if out_blocks is not None else ceil_div(layer.out_channels, lanes)
    out_rows = out_rows if out_rows is not None else layer.out_height
    per_block = weight_blocks_for(layer, lanes)
    half_weights = hw.weight_slot_blocks
    if chunk_blocks(hw, layer) is not None:
        group = 1     # one output block at a time, its weights in input-channel chunks
    else:
        group = cout_blocks if per_block == 0 else min(cout_blocks, half_weights // per_block)
    # Parameters (bias + multiplier entries per block) are double-buffered per group too.
    group = min(group, hw.param_slot_entries // 2)
    in_width = (layer.out_width - 1) * s + k
    ow = layer.out_width
    if ow > FIELD_MAX_COUNT or in_width > FIELD_MAX_COUNT:
        raise CompileError(f"rows of {in_width} pixels exceed the {FIELD_MAX_COUNT}-iteration loop fields")
    best = None
    # Prefer whole weight groups and tall tiles; shrink the group (output-channel blocks
    # per pass) before giving up, which also shrinks the input slot of depthwise layers.
    for candidate_group in range(group, 0, -1):
        in_blocks = cin_blocks if layer.kind is LayerKind.CONV else candidate_group
        for rows in range(min(out_rows, FIELD_MAX_COUNT), 0, -1):
            in_rows = (rows - 1) * s + k
            plane = channel_plane(layer, in_rows, in_width)
            in_slot = in_blocks * plane
            out_slot = candidate_group * rows * ow
            if 2 * in_slot + 2 * out_slot <= hw.act_lines and 2 * rows * ow <= hw.acc_entries \
                    and in_rows * in_width * s <= FIELD_MAX_STRIDE:
                best = Tiling(rows, in_rows, in_width, candidate_group, in_slot, out_slot, plane)
                break
        if best is not None:
            break
    if best is None:
        in_blocks = cin_blocks if layer.kind is LayerKind.CONV else 1
        need = 2 * in_blocks * k * in_width + 2 * ow
        raise CompileError(f"{layer.kind} layer {layer.in_channels}x{layer.height}x{layer.width}: one output row "
                           f"needs {need} act lines double-buffered (act_lines = {hw.act_lines}) and "
                           f"{2 * ow} accumulator entries (acc_entries = {hw.acc_entries})")
    return best


def emit_input_band(stream: StreamBuilder, layer: WindowedLayer, tiling: Tiling, oy0: int, rows: int, *,
                     in_line: int, first_block: int, blocks: int, sram_addr: int, pad_value: int) -> None:
    """LOAD the input rows (halo and padding included) of the band of ``rows`` output rows from
    ``oy0``, channel blocks ``[first_block, first_block + blocks)``, into an input slot."""
    k, s, p = layer.kernel, layer.stride, layer.pad
    H, W = layer.height, layer.width
    in_rows = (rows - 1) * s + k
    first_row = oy0 * s - p
    pad_top = max(0, -first_row)
    valid_rows = max(0, min(H, first_row + in_rows) - max(0, first_row))
    valid_cols = min(W, tiling.in_width - p)
    stream.emit(Opcode.LOAD, wait=IN_FREE, signal=IN_FULL, buffer=Buffer.ACT,
                dram_addr=in_line + first_block * H * W + max(0, first_row) * W, dram_s1=W, dram_s2=H * W,
                sram_addr=sram_addr, sram_s1=tiling.in_width, sram_s2=tiling.plane,
                n2=blocks, n1=in_rows, n0=tiling.in_width,
                pad_top=pad_top, pad_bottom=in_rows - pad_top - valid_rows, pad_left=p,
                pad_right=tiling.in_width - p - valid_cols, pad_value=to_byte(pad_value))
