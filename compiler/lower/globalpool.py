"""Lowering of a global average pool over a map larger than a window the windowed lowering holds
(EfficientNet's squeeze-and-excitation on a 112x112 map): the input in bands of rows, summed into one
accumulator entry per channel block, then one REQUANT.

The sum is the windowed lowering's (a DEPTHWISE MATMUL with a weight of ones, stride-0 accumulator
addresses), only split over bands: ``acc = sum (x - zp)`` exactly, so the result is the same bit for bit.
"""

from __future__ import annotations

from ...hw.asm import StreamBuilder
from ...hw.config import HwConfig
from ...hw.isa import Buffer, MatmulMode, Opcode, Unit
from ..errors import CompileError
from .common import (
    ACC_FREE,
    ACC_FULL,
    FIELD_MAX_COUNT,
    IN_FREE,
    IN_FULL,
    OUT_FREE,
    OUT_FULL,
    W_FREE,
    W_FULL,
    LayerKind,
    WindowedLayer,
    ceil_div,
    initial_credits,
    largest_band,
    load_table,
    load_whole_constants,
    lookup_fields,
    split_folded_first,
    to_byte,
)

__all__ = ["is_large_global_pool", "lower_global_pool"]


def is_large_global_pool(layer: WindowedLayer, max_kernel: int) -> bool:
    """An average pool over the whole map (one output pixel, no padding) with a window above ``max_kernel``."""
    return (layer.kind is LayerKind.AVGPOOL and layer.kernel > max_kernel and layer.pad == 0
            and layer.kernel == layer.height == layer.width)


def lower_global_pool(hw: HwConfig, layer: WindowedLayer, stream: StreamBuilder, *, in_line: int, out_line: int,
                      weight_line: int, param_line: int, table_line: int | None = None,
                      blocks: tuple[int, int] | None = None, credits: bool = True) -> dict:
    """Emit the pool, or its channel ``blocks`` ``[b0, b1)`` (output rows do not split: there is one)."""
    lanes = hw.lanes
    H, W = layer.height, layer.width
    block0, block1 = blocks if blocks is not None else (0, ceil_div(layer.out_channels, lanes))
    count = block1 - block0
    if count > hw.weight_blocks or 2 * count > hw.param_entries:
        raise CompileError(f"a global pool of {count} channel blocks needs {count} weight blocks and {2 * count} "
                           f"parameter entries (weight_blocks = {hw.weight_blocks}, param_entries = "
                           f"{hw.param_entries})")
    if W > FIELD_MAX_COUNT:
        raise CompileError(f"rows of {W} pixels exceed the {FIELD_MAX_COUNT}-iteration loop fields")
    band = largest_band(H, lambda rows: 2 * rows * W + 2 <= hw.act_lines and rows <= FIELD_MAX_COUNT)
    if band is None:
        raise CompileError(f"global pool of {layer.in_channels}x{H}x{W}: one row needs {2 * W + 2} act lines "
                           f"(act_lines = {hw.act_lines})")
    in_slots, out_slots = (0, band * W), (2 * band * W, 2 * band * W + 1)
    acc_slots = (0, hw.acc_slot_entries)
    bands = ceil_div(H, band)
    if credits:
        initial_credits(stream)
    if layer.table:
        load_table(hw, stream, table_line)
    lpe = hw.param_lines_per_entry
    load_whole_constants(stream, [
        dict(buffer=Buffer.PARAM, dram_addr=param_line + 2 * block0 * lpe, sram_addr=0, n2=1, n1=2 * count, n0=lpe,
             dram_s1=lpe, sram_s1=lpe),
        dict(buffer=Buffer.WEIGHT, dram_addr=weight_line + block0 * lanes, sram_addr=0, n2=1, n1=count * lanes, n0=1,
             dram_s1=1, sram_s1=1)])
    steps = [(j, b) for j in range(count) for b in range(bands)]

    def load(index):
        j, b = steps[index]
        y0 = b * band
        stream.emit(Opcode.LOAD, wait=IN_FREE, signal=IN_FULL, buffer=Buffer.ACT,
                    dram_addr=in_line + (block0 + j) * H * W + y0 * W, dram_s1=W, sram_addr=in_slots[index % 2],
                    sram_s1=W, n2=1, n1=min(band, H - y0), n0=W)

    load(0)
    if len(steps) > 1:
        load(1)
    for index, (j, b) in enumerate(steps):
        rows = min(band, H - b * band)
        acc = acc_slots[j % 2]
        fields = dict(w_addr=j, w_row=0, w_s1=0, w_s0=0, act_addr=in_slots[index % 2], act_s1=W, act_s0=1,
                      acc_addr=acc, acc_s1=0, acc_s0=0, n1=rows, n0=W)
        # the block's first band overwrites its accumulator with its first pixel, then accumulates
        parts = split_folded_first(fields) if b == 0 else [fields]
        for n, part in enumerate(parts):
            wait = (IN_FULL | (ACC_FREE if b == 0 else 0) | (W_FULL if index == 0 else 0)) if n == 0 else 0
            signal = (IN_FREE | (ACC_FULL if b == bands - 1 else 0)) if n == len(parts) - 1 else 0
            stream.emit(Opcode.MATMUL, wait=wait, signal=signal, mode=MatmulMode.DEPTHWISE,
                        accumulate=int(b > 0 or n > 0), in_signed=int(layer.in_signed), in_zp=to_byte(layer.in_zp),
                        **part)
        if index + 2 < len(steps):
            load(index + 2)
        if b == bands - 1:
            last = j == count - 1
            stream.emit(Opcode.REQUANT, wait=ACC_FULL | OUT_FREE, signal=ACC_FREE | OUT_FULL | (W_FREE if last else 0),
                        acc_addr=acc, acc_s1=0, acc_s0=0, out_addr=out_slots[j % 2], out_s1=0, out_s0=0, n1=1, n0=1,
                        param_addr=2 * j, out_signed=int(layer.out_signed), out_zp=to_byte(layer.out_zp),
                        clamp_lo=to_byte(layer.clamp_lo), clamp_hi=to_byte(layer.clamp_hi),
                        **lookup_fields(layer.table))
            if last:
                stream.sync(Unit.PPU, signal=W_FREE)
            stream.emit(Opcode.STORE, wait=OUT_FULL, signal=OUT_FREE, buffer=Buffer.ACT,
                        dram_addr=out_line + block0 + j, sram_addr=out_slots[j % 2], n2=1, n1=1, n0=1)
    return {"tile_rows": band, "tiles": len(steps)}
