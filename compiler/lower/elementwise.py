"""Lowering of elementwise layers on the PPU: QLinearAdd of two tensors, and a lookup table on one
(an ADD of the tensor with itself, ``ra = 1``, ``rb = fixed = 0``: the identity, then the table)."""

from __future__ import annotations

from ...hw.asm import StreamBuilder
from ...hw.config import HwConfig
from ...hw.isa import Buffer, Opcode
from ..errors import CompileError
from .common import (
    FIELD_MAX_COUNT,
    IN_FREE,
    IN_FULL,
    OUT_FREE,
    OUT_FULL,
    AddLayer,
    ceil_div,
    initial_credits,
    largest_band,
    load_table,
    lookup_fields,
    to_byte,
)

__all__ = ["lower_add"]


def lower_add(hw: HwConfig, layer: AddLayer, stream: StreamBuilder, *, a_line: int, b_line: int, out_line: int,
              param_line: int, table_line: int | None = None, rows: tuple[int, int] | None = None,
              blocks: tuple[int, int] | None = None, credits: bool = True) -> dict:
    """Emit the add, or its part ``rows`` ``[r0, r1)`` x channel ``blocks`` ``[b0, b1)``."""
    lanes = hw.lanes
    H, W = layer.height, layer.width
    row0, row1 = rows if rows is not None else (0, H)
    block0, block1 = blocks if blocks is not None else (0, ceil_div(layer.channels, lanes))
    part_rows = row1 - row0
    blocks = block1 - block0
    offset = block0 * H * W
    if W > FIELD_MAX_COUNT:
        raise CompileError(f"rows of {W} pixels exceed the {FIELD_MAX_COUNT}-iteration loop fields")
    rows = largest_band(part_rows, lambda count: 6 * blocks * count * W <= hw.act_lines
                        and count * W <= FIELD_MAX_COUNT)
    if rows is None:
        raise CompileError(f"add of {layer.channels}x{H}x{W}: one row needs {6 * blocks * W} act lines "
                           f"(act_lines = {hw.act_lines})")
    slot = blocks * rows * W
    a_slots, b_slots, out_slots = (0, slot), (2 * slot, 3 * slot), (4 * slot, 5 * slot)
    if credits:
        initial_credits(stream)
    if layer.table:
        load_table(hw, stream, table_line)
    stream.emit(Opcode.LOAD, buffer=Buffer.PARAM, dram_addr=param_line, sram_addr=0, n2=1, n1=3,
                n0=hw.param_lines_per_entry, dram_s1=hw.param_lines_per_entry, sram_s1=hw.param_lines_per_entry)
    tiles = ceil_div(part_rows, rows)

    def load(index):
        y0 = row0 + index * rows
        count = min(rows, row1 - y0)
        # A waits for the slot pair to be free; B, behind it in the in-order DMA queue,
        # signals that both have landed.
        for line, slots, wait, signal in ((a_line, a_slots, IN_FREE, 0), (b_line, b_slots, 0, IN_FULL)):
            stream.emit(Opcode.LOAD, wait=wait, signal=signal, buffer=Buffer.ACT,
                        dram_addr=line + offset + y0 * W, dram_s1=W, dram_s2=H * W, sram_addr=slots[index % 2],
                        sram_s1=W, sram_s2=rows * W, n2=blocks, n1=count, n0=W)

    load(0)
    if tiles > 1:
        load(1)
    for index in range(tiles):
        y0 = row0 + index * rows
        count = min(rows, row1 - y0)
        stream.emit(Opcode.ADD, wait=IN_FULL | OUT_FREE, signal=IN_FREE | OUT_FULL,
                    a_addr=a_slots[index % 2], a_s1=rows * W, a_s0=1,
                    b_addr=b_slots[index % 2], b_s1=rows * W, b_s0=1,
                    out_addr=out_slots[index % 2], out_s1=rows * W, out_s0=1,
                    n1=blocks, n0=count * W, param_addr=0, in_signed=int(layer.signed),
                    out_signed=int(layer.signed), out_zp=0, clamp_lo=to_byte(layer.clamp_lo),
                    clamp_hi=to_byte(layer.clamp_hi), **lookup_fields(layer.table))
        if index + 2 < tiles:
            load(index + 2)
        stream.emit(Opcode.STORE, wait=OUT_FULL, signal=OUT_FREE, buffer=Buffer.ACT,
                    dram_addr=out_line + offset + y0 * W, dram_s1=W, dram_s2=H * W, sram_addr=out_slots[index % 2],
                    sram_s1=W, sram_s2=rows * W, n2=blocks, n1=count, n0=W)
    return {"tile_rows": rows, "tiles": tiles}

