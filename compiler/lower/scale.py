"""Lowering of a per-channel scale computed at run time: QLinearMul of a ``(C, H, W)`` tensor by a
``(C, 1, 1)`` one (the excitation of a squeeze-and-excitation block).

It is a depthwise 1x1 convolution whose weights are data: ``acc = (x - zx) * (s - zs)`` exactly, then
REQUANT with bias 0 and onnxruntime's ratio ``sx * ss / sy`` as the multiplier gives its QLinearMul
bit for bit (:func:`dlfusion.compiler.tables.qlinear_mul`: the float32 product of the integer and the
ratio, rounded half to even, plus the zero point). The PE's weights are int8 and ``s - zs`` spans nine
bits, so the scale comes as ``P`` int8 tensors adding up to ``s - zs`` (lookup tables of ``s``, see
:func:`dlfusion.compiler.frontend.nodes.channel_scale`), loaded from DRAM into the weight scratchpad as
row 0 of blocks ``P j + p`` for channel block ``j``: ``P`` DEPTHWISE MATMULs accumulate them.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    ceil_div,
    initial_credits,
    largest_band,
    load_whole_constants,
    to_byte,
)

__all__ = ["ScaleLayer", "lower_scale"]


@dataclass
class ScaleLayer:
    """``x * s`` per channel: ``(C, H, W)`` by ``(C, 1, 1)``, requantized."""
    channels: int
    height: int
    width: int
    in_signed: bool
    in_zp: int
    out_signed: bool
    out_zp: int
    clamp_lo: int
    clamp_hi: int


def lower_scale(hw: HwConfig, layer: ScaleLayer, stream: StreamBuilder, *, x_line: int, part_lines: list[int],
                out_line: int, param_line: int, rows: tuple[int, int] | None = None,
                blocks: tuple[int, int] | None = None, credits: bool = True) -> dict:
    """Emit the scale, or its part ``rows`` ``[r0, r1)`` x channel ``blocks`` ``[b0, b1)``; ``part_lines``
    hold the int8 parts of the scale (one line per channel block each)."""
    lanes = hw.lanes
    H, W = layer.height, layer.width
    row0, row1 = rows if rows is not None else (0, H)
    block0, block1 = blocks if blocks is not None else (0, ceil_div(layer.channels, lanes))
    blocks = block1 - block0
    parts = len(part_lines)
    if parts * blocks > hw.weight_blocks or 2 * blocks > hw.param_entries:
        raise CompileError(f"a channel scale of {blocks} channel blocks needs {parts * blocks} weight blocks and "
                           f"{2 * blocks} parameter entries (weight_blocks = {hw.weight_blocks}, param_entries = "
                           f"{hw.param_entries})")
    if W > FIELD_MAX_COUNT:
        raise CompileError(f"rows of {W} pixels exceed the {FIELD_MAX_COUNT}-iteration loop fields")
    band = largest_band(row1 - row0, lambda count: 4 * blocks * count * W <= hw.act_lines
                        and count * W <= hw.acc_slot_entries and count * W <= FIELD_MAX_COUNT)
    if band is None:
        raise CompileError(f"channel scale of {layer.channels}x{H}x{W}: one row needs {4 * blocks * W} act lines "
                           f"(act_lines = {hw.act_lines})")
    slot = blocks * band * W
    in_slots, out_slots = (0, slot), (2 * slot, 3 * slot)
    acc_slots = (0, hw.acc_slot_entries)
    if credits:
        initial_credits(stream)
    # The whole weight and parameter scratchpads (both W_FREE credits): the parts of the scale as row 0
    # of blocks P j + p, and per block its bias (0) and multiplier.
    lpe = hw.param_lines_per_entry
    load_whole_constants(stream, [
        dict(buffer=Buffer.PARAM, dram_addr=param_line + 2 * block0 * lpe, sram_addr=0, n2=1, n1=2 * blocks, n0=lpe,
             dram_s1=lpe, sram_s1=lpe),
        *(dict(buffer=Buffer.WEIGHT, dram_addr=line + block0, sram_addr=part * lanes, n2=1, n1=blocks, n0=1,
               dram_s1=1, sram_s1=parts * lanes) for part, line in enumerate(part_lines))])
    tiles = ceil_div(row1 - row0, band)

    def load(index):
        y0 = row0 + index * band
        stream.emit(Opcode.LOAD, wait=IN_FREE, signal=IN_FULL, buffer=Buffer.ACT,
                    dram_addr=x_line + block0 * H * W + y0 * W, dram_s1=W, dram_s2=H * W,
                    sram_addr=in_slots[index % 2], sram_s1=W, sram_s2=band * W, n2=blocks,
                    n1=min(band, row1 - y0), n0=W)

    load(0)
    if tiles > 1:
        load(1)
    acc_count = 0
    for index in range(tiles):
        y0 = row0 + index * band
        count = min(band, row1 - y0)
        for j in range(blocks):
            acc = acc_slots[acc_count % 2]
            acc_count += 1
            act = in_slots[index % 2] + j * band * W
            for part in range(parts):
                wait = (ACC_FREE | (IN_FULL if j == 0 else 0) | (W_FULL if index == 0 and j == 0 else 0)) \
                    if part == 0 else 0
                signal = (ACC_FULL | (IN_FREE if j == blocks - 1 else 0)) if part == parts - 1 else 0
                stream.emit(Opcode.MATMUL, wait=wait, signal=signal, mode=MatmulMode.DEPTHWISE,
                            accumulate=int(part > 0), in_signed=int(layer.in_signed), in_zp=to_byte(layer.in_zp),
                            w_row=0, w_addr=parts * j + part, act_addr=act, act_s1=W, act_s0=1, acc_addr=acc, acc_s1=W,
                            acc_s0=1, n1=count, n0=W)
            signal = ACC_FREE | (OUT_FULL if j == blocks - 1 else 0)
            if index == tiles - 1 and j == blocks - 1:
                signal |= W_FREE
            stream.emit(Opcode.REQUANT, wait=ACC_FULL | (OUT_FREE if j == 0 else 0), signal=signal, acc_addr=acc,
                        acc_s1=W, acc_s0=1, out_addr=out_slots[index % 2] + j * band * W, out_s1=W, out_s0=1,
                        n1=count, n0=W, param_addr=2 * j, out_signed=int(layer.out_signed),
                        out_zp=to_byte(layer.out_zp), clamp_lo=to_byte(layer.clamp_lo),
                        clamp_hi=to_byte(layer.clamp_hi))
        if index == tiles - 1:
            stream.sync(Unit.PPU, signal=W_FREE)
        if index + 2 < tiles:
            load(index + 2)
        stream.emit(Opcode.STORE, wait=OUT_FULL, signal=OUT_FREE, buffer=Buffer.ACT,
                    dram_addr=out_line + block0 * H * W + y0 * W, dram_s1=W, dram_s2=H * W,
                    sram_addr=out_slots[index % 2], sram_s1=W, sram_s2=band * W, n2=blocks, n1=count, n0=W)
    return {"tile_rows": band, "tiles": tiles}
