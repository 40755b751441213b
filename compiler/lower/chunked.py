"""Lowering of a convolution whose weights for one output block exceed half the weight scratchpad:
its input channels in chunks accumulated in the accumulators."""

from __future__ import annotations

from ...hw.asm import StreamBuilder
from ...hw.config import HwConfig
from ...hw.isa import Buffer, MatmulMode, Opcode, Unit
from .common import (
    ACC_FREE,
    ACC_FULL,
    IN_FREE,
    IN_FULL,
    OUT_FREE,
    OUT_FULL,
    W_FREE,
    W_FULL,
    WindowedLayer,
    ceil_div,
    load_weight_blocks,
    lookup_fields,
    split_folded_first,
    step_instructions,
    to_byte,
    weight_blocks_for,
)
from .tiling import Tiling, chunk_blocks, emit_input_band

__all__ = ["lower_chunked"]


def lower_chunked(hw: HwConfig, layer: WindowedLayer, stream: StreamBuilder, tiling: Tiling, *, in_line: int,
                   out_line: int, weight_line: int, param_line: int, rows: tuple[int, int],
                   blocks: tuple[int, int], meta_line: int | None = None) -> dict:
    """A convolution whose weights for one output block exceed half the weight scratchpad.

    Tiles are (output block, row band) pairs; each loads its input band (all input
    channels) and computes its output block chunk by chunk of input channels: a chunk's
    weights (every tap, ``chunk_blocks`` input blocks) fill one weight slot, its MATMULs
    accumulate into the tile's accumulators, and the PE frees the slot for the chunk after
    next. The parameters of all the part's output blocks are loaded once, at the start,
    behind both weight/parameter credits (so every earlier reader has finished), and the
    PPU returns those two credits after the last requantization, so parts follow each other
    in one stream (:func:`chunked_block_ranges`)."""
    lanes = hw.lanes
    k = layer.kernel
    OH, OW = layer.out_height, layer.out_width
    taps = k * k
    cin_blocks = ceil_div(layer.in_channels, lanes)
    span = layer.step_count(lanes)    # weight blocks per output block and tap
    per_block = weight_blocks_for(layer, lanes)
    chunk = chunk_blocks(hw, layer)
    chunks = [(c0, min(span, c0 + chunk)) for c0 in range(0, span, chunk)]
    row0, row1 = rows
    block0, block1 = blocks
    half_weights = hw.weight_slot_blocks
    lpe = hw.param_lines_per_entry
    tiles_per_block = ceil_div(row1 - row0, tiling.rows)
    tiles = [(j, t) for j in range(block0, block1) for t in range(tiles_per_block)]
    units = [(index, c) for index in range(len(tiles)) for c in range(len(chunks))]
    in_slots = [0, tiling.in_slot]
    out_slots = [2 * tiling.in_slot, 2 * tiling.in_slot + tiling.out_slot]
    acc_slots = [0, tiling.rows * OW]
    in_plane = tiling.plane

    # Both weight/parameter credits, then every output block's parameters.
    stream.sync(Unit.DMA, wait=W_FREE)
    stream.emit(Opcode.LOAD, wait=W_FREE, buffer=Buffer.PARAM, dram_addr=param_line + 2 * block0 * lpe, sram_addr=0,
                n2=1, n1=2 * (block1 - block0), n0=lpe, dram_s1=lpe, sram_s1=lpe)

    def load_unit(u):
        # The first two chunks use the credits taken above; later ones wait for the PE.
        index, c = units[u]
        j = tiles[index][0]
        c0, c1 = chunks[c]
        load_weight_blocks(stream, hw, layer, wait=W_FREE if u >= 2 else 0, signal=W_FULL, weight_line=weight_line,
                           meta_line=meta_line, first=j * per_block + c0, count=c1 - c0,
                           sram_block=(u % 2) * half_weights, taps=taps, dram_tap_stride=span,
                           sram_tap_stride=c1 - c0)

    def band(index):
        t = tiles[index][1]
        oy0 = row0 + t * tiling.rows
        return oy0, min(tiling.rows, row1 - oy0)

    def load_input(index):
        oy0, count = band(index)
        emit_input_band(stream, layer, tiling, oy0, count, in_line=in_line, first_block=0, blocks=cin_blocks,
                         sram_addr=in_slots[index % 2], pad_value=layer.in_zp)

    load_input(0)
    load_unit(0)
    if len(units) > 1:
        load_unit(1)
    if len(tiles) > 1:
        load_input(1)
    u = 0
    for index, (j, _) in enumerate(tiles):
        oy0, count = band(index)
        in_slot, acc_slot = in_slots[index % 2], acc_slots[index % 2]
        single_pixel = count * OW == 1
        for c, (c0, c1) in enumerate(chunks):
            wslot = (u % 2) * half_weights
            steps = layer.steps(j, lanes)[c0:c1]
            instructions = []
            for ky in range(k):
                for kx in range(k):
                    instructions += step_instructions(
                        steps, layer, w0=wslot + (ky * k + kx) * (c1 - c0), act0=in_slot + ky * tiling.in_width + kx,
                        in_plane=in_plane, single_pixel=single_pixel, rows=count, out_width=OW,
                        in_width=tiling.in_width)
            if c == 0:
                instructions[0:1] = split_folded_first(instructions[0])
            for n, fields in enumerate(instructions):
                wait = signal = 0
                if n == 0:
                    wait = W_FULL | ((ACC_FREE | IN_FULL) if c == 0 else 0)
                if n == len(instructions) - 1:
                    if u < len(units) - 2:
                        signal |= W_FREE
                    if c == len(chunks) - 1:
                        signal |= ACC_FULL | IN_FREE
                stream.emit(Opcode.MATMUL, wait=wait, signal=signal, mode=MatmulMode.MATMUL,
                            accumulate=int(c > 0 or n > 0), in_signed=int(layer.in_signed),
                            in_zp=to_byte(layer.in_zp), acc_addr=acc_slot, **fields)
            if u + 2 < len(units):
                load_unit(u + 2)
            u += 1
        last = index == len(tiles) - 1
        stream.emit(Opcode.REQUANT, wait=ACC_FULL | OUT_FREE, signal=ACC_FREE | OUT_FULL | (W_FREE if last else 0),
                    acc_addr=acc_slot, acc_s1=OW, acc_s0=1, out_addr=out_slots[index % 2], out_s1=OW, out_s0=1,
                    n1=count, n0=OW, param_addr=2 * (j - block0), out_signed=int(layer.out_signed),
                    out_zp=to_byte(layer.out_zp), clamp_lo=to_byte(layer.clamp_lo), clamp_hi=to_byte(layer.clamp_hi),
                    **lookup_fields(layer.table))
        if last:
            stream.sync(Unit.PPU, signal=W_FREE)
        if index + 2 < len(tiles):
            load_input(index + 2)
        stream.emit(Opcode.STORE, wait=OUT_FULL, signal=OUT_FREE, buffer=Buffer.ACT,
                    dram_addr=out_line + j * OH * OW + oy0 * OW, dram_s1=OW, dram_s2=OH * OW,
                    sram_addr=out_slots[index % 2], sram_s1=OW, sram_s2=tiling.rows * OW, n2=1, n1=count, n0=OW)
    return {"tile_rows": tiling.rows, "tiles": len(tiles), "weight_groups": len(tiles) * len(chunks),
            "group_blocks": 1, "in_slot_lines": tiling.in_slot, "out_slot_lines": tiling.out_slot,
            "input_chunks": len(chunks)}

