"""Lowering of one windowed layer (convolution, depthwise, fully connected, pooling) to a tiled,
double-buffered instruction stream.

A windowed layer is tiled into bands of ``T`` output rows (full width, all
input channel blocks) and groups of output-channel blocks whose weights fit in
half the weight scratchpad (:mod:`.tiling`). Everything is double-buffered:
input tiles, weight groups, accumulator tiles and output tiles each have two
slots, guarded by the semaphore pairs of :mod:`.common`, so the DMA loads tile
``n+1`` (and stores tile ``n-1``) while the PE array computes tile ``n`` and
the PPU requantizes.

Per output-channel block the PE runs one MATMUL per (kernel tap, input block),
each sweeping the whole ``T x OW`` tile (one pixel per cycle); when the tile
is a single pixel (fully connected, global pooling) the input-block or tap
loop is folded into the instruction's loops instead. A convolution whose
weights for one output block exceed half the weight scratchpad goes to
:mod:`.chunked`.
"""

from __future__ import annotations

from ...hw.asm import StreamBuilder
from ...hw.config import HwConfig
from ...hw.isa import Buffer, Opcode
from ..errors import CompileError
from .chunked import lower_chunked
from .common import (
    ACC_FREE,
    ACC_FULL,
    IN_FREE,
    IN_FULL,
    MATMUL_MODES,
    MAX_KERNEL,
    OUT_FREE,
    OUT_FULL,
    W_FREE,
    W_FULL,
    LayerKind,
    WindowedLayer,
    ceil_div,
    initial_credits,
    load_table,
    load_weight_blocks,
    lookup_fields,
    split_folded_first,
    step_instructions,
    to_byte,
    weight_blocks_for,
)
from .globalpool import is_large_global_pool, lower_global_pool
from .tiling import chunk_blocks, chunked_block_ranges, emit_input_band, plan_tiling

__all__ = ["lower_windowed"]


def lower_windowed(hw: HwConfig, layer: WindowedLayer, stream: StreamBuilder, *, in_line: int, out_line: int,
                   weight_line: int, param_line: int, table_line: int | None = None,
                   meta_line: int | None = None, rows: tuple[int, int] | None = None,
                   blocks: tuple[int, int] | None = None, credits: bool = True) -> dict:
    """Emit the layer, or the part of it given by output ``rows`` ``[r0, r1)`` and
    output-channel ``blocks`` ``[b0, b1)``, into ``stream``. Returns the tiling (for reports).

    The part leaves the semaphores as it found them, so the stream may continue with other
    work; ``credits`` emits the initial "two free slots" credits (once per stream: see
    :func:`initial_credits`)."""
    layer.check()
    if is_large_global_pool(layer, MAX_KERNEL):
        return lower_global_pool(hw, layer, stream, in_line=in_line, out_line=out_line, weight_line=weight_line,
                                 param_line=param_line, table_line=table_line, blocks=blocks, credits=credits)
    lanes = hw.lanes
    k, s = layer.kernel, layer.stride
    OH, OW = layer.out_height, layer.out_width
    cin_blocks = ceil_div(layer.in_channels, lanes)
    row0, row1 = rows if rows is not None else (0, OH)
    block0, block1 = blocks if blocks is not None else (0, ceil_div(layer.out_channels, lanes))
    if not (0 <= row0 < row1 <= OH and 0 <= block0 < block1 <= ceil_div(layer.out_channels, lanes)):
        raise CompileError(f"empty or out-of-range part: rows {row0}..{row1} of {OH}, "
                           f"blocks {block0}..{block1}")
    cout_blocks = block1 - block0
    tiling = plan_tiling(hw, layer, out_rows=row1 - row0, out_blocks=cout_blocks)
    if layer.table:
        load_table(hw, stream, table_line)
    if chunk_blocks(hw, layer) is not None:
        if credits:
            initial_credits(stream)
        reports = [lower_chunked(hw, layer, stream, tiling, in_line=in_line, out_line=out_line,
                                  weight_line=weight_line, param_line=param_line, meta_line=meta_line,
                                  rows=(row0, row1), blocks=part)
                   for part in chunked_block_ranges(hw, block0, block1)]
        return dict(reports[0], tiles=sum(r["tiles"] for r in reports),
                    weight_groups=sum(r["weight_groups"] for r in reports))
    per_block = weight_blocks_for(layer, lanes)
    group = tiling.group_blocks
    groups = ceil_div(cout_blocks, group)
    tiles_per_group = ceil_div(row1 - row0, tiling.rows)

    half_weights = hw.weight_slot_blocks
    in_slots = [0, tiling.in_slot]
    out_slots = [2 * tiling.in_slot, 2 * tiling.in_slot + tiling.out_slot]
    acc_tile = tiling.rows * OW
    acc_slots = [0, acc_tile]

    pad_value = layer.in_zp
    if layer.kind is LayerKind.MAXPOOL:
        pad_value = -128 if layer.in_signed else 0
    mode = MATMUL_MODES[layer.kind]
    has_weights = per_block > 0
    half_params = hw.param_slot_entries
    lines_per_entry = hw.param_lines_per_entry

    if credits:
        initial_credits(stream)

    tiles = [(g, t) for g in range(groups) for t in range(tiles_per_group)]

    def group_range(g):
        first = block0 + g * group
        return first, min(block1, first + group)

    def load_params(g):
        # Into slot g % 2, once the slot is free; for layers without weights it also
        # tells the PE that the group may start.
        first, last = group_range(g)
        stream.emit(Opcode.LOAD, wait=W_FREE, signal=0 if has_weights else W_FULL, buffer=Buffer.PARAM,
                    dram_addr=param_line + 2 * first * lines_per_entry,
                    sram_addr=(g % 2) * half_params * lines_per_entry,
                    n2=1, n1=2 * (last - first), n0=lines_per_entry, dram_s1=lines_per_entry,
                    sram_s1=lines_per_entry)

    def load_weight_chunks(g):
        # One LOAD per output-channel block, each signalling W_FULL, so that the first
        # tile's compute on block j overlaps the loads of blocks j+1...
        if not has_weights:
            return
        first, last = group_range(g)
        for j in range(first, last):
            load_weight_blocks(stream, hw, layer, signal=W_FULL, weight_line=weight_line, meta_line=meta_line,
                               first=j * per_block, count=per_block,
                               sram_block=(g % 2) * half_weights + (j - first) * per_block)

    def load_weights(g):
        load_params(g)
        load_weight_chunks(g)

    def load_input(index):
        g, t = tiles[index]
        oy0 = row0 + t * tiling.rows
        if layer.kind is LayerKind.CONV:
            first, blocks = 0, cin_blocks
        else:
            first, last = group_range(g)
            blocks = last - first
        emit_input_band(stream, layer, tiling, oy0, min(tiling.rows, row1 - oy0), in_line=in_line,
                         first_block=first, blocks=blocks, sram_addr=in_slots[index % 2], pad_value=pad_value)

    def store_output(index):
        g, t = tiles[index]
        oy0 = row0 + t * tiling.rows
        rows = min(tiling.rows, row1 - oy0)
        first, last = group_range(g)
        stream.emit(Opcode.STORE, wait=OUT_FULL, signal=OUT_FREE, buffer=Buffer.ACT,
                    dram_addr=out_line + first * OH * OW + oy0 * OW, dram_s1=OW, dram_s2=OH * OW,
                    sram_addr=out_slots[index % 2], sram_s1=OW, sram_s2=tiling.rows * OW,
                    n2=last - first, n1=rows, n0=OW)

    load_params(0)
    load_input(0)
    load_weight_chunks(0)
    if len(tiles) > 1:
        load_input(1)
    acc_count = 0
    in_plane = tiling.plane
    for index, (g, t) in enumerate(tiles):
        oy0 = row0 + t * tiling.rows
        rows = min(tiling.rows, row1 - oy0)
        first, last = group_range(g)
        in_slot = in_slots[index % 2]
        wslot = (g % 2) * half_weights
        single_pixel = rows * OW == 1
        for j in range(first, last):
            local = j - first
            acc_slot = acc_slots[acc_count % 2]
            acc_count += 1
            instructions = []   # (fields) for this output block
            if layer.kind is LayerKind.CONV:
                steps = layer.steps(j, lanes)
                for ky in range(k):
                    for kx in range(k):
                        instructions += step_instructions(
                            steps, layer, w0=wslot + local * per_block + (ky * k + kx) * len(steps),
                            act0=in_slot + ky * tiling.in_width + kx, in_plane=in_plane, single_pixel=single_pixel,
                            rows=rows, out_width=OW, in_width=tiling.in_width)
            else:
                block_base = in_slot + local * in_plane
                foldable = single_pixel and layer.kind in (LayerKind.MAXPOOL, LayerKind.AVGPOOL)
                if foldable:
                    instructions.append(dict(w_addr=wslot + local * per_block, w_row=0, act_addr=block_base,
                                             n1=k, n0=k, act_s1=tiling.in_width, act_s0=1, acc_s1=0, acc_s0=0))
                else:
                    for ky in range(k):
                        for kx in range(k):
                            tap = ky * k + kx
                            if layer.kind is LayerKind.DEPTHWISE:
                                w_addr, w_row = wslot + local * per_block + tap // lanes, tap % lanes
                            else:
                                w_addr, w_row = wslot + local * per_block, 0
                            instructions.append(dict(w_addr=w_addr, w_row=w_row,
                                                     act_addr=block_base + ky * tiling.in_width + kx,
                                                     n1=rows, n0=OW, act_s1=s * tiling.in_width, act_s0=s,
                                                     acc_s1=OW, acc_s0=1))
            instructions[0:1] = split_folded_first(instructions[0])
            for n, fields in enumerate(instructions):
                wait = signal = 0
                if n == 0:
                    wait |= ACC_FREE
                    if j == first:
                        wait |= IN_FULL
                    if t == 0 and (has_weights or j == first):
                        wait |= W_FULL
                if n == len(instructions) - 1:
                    signal |= ACC_FULL
                    if j == last - 1:
                        signal |= IN_FREE
                stream.emit(Opcode.MATMUL, wait=wait, signal=signal, mode=mode, accumulate=int(n > 0),
                            in_signed=int(layer.in_signed), in_zp=to_byte(layer.in_zp),
                            acc_addr=acc_slot, **fields)
            wait = ACC_FULL | (OUT_FREE if j == first else 0)
            signal = ACC_FREE | (OUT_FULL if j == last - 1 else 0)
            if j == last - 1 and t == tiles_per_group - 1:
                # The PPU is the last reader of the group's parameters (and comes after the
                # PE's last read of its weights): it frees the weight/parameter slot.
                signal |= W_FREE
            stream.emit(Opcode.REQUANT, wait=wait, signal=signal, acc_addr=acc_slot, acc_s1=OW, acc_s0=1,
                        out_addr=out_slots[index % 2] + local * tiling.rows * OW, out_s1=OW, out_s0=1,
                        n1=rows, n0=OW, param_addr=(g % 2) * half_params + 2 * local,
                        out_signed=int(layer.out_signed), out_zp=to_byte(layer.out_zp),
                        clamp_lo=to_byte(layer.clamp_lo), clamp_hi=to_byte(layer.clamp_hi),
                        **lookup_fields(layer.table))
        if t == 0 and g + 1 < groups:
            load_weights(g + 1)
        if index + 2 < len(tiles):
            load_input(index + 2)
        store_output(index)
    return {"tile_rows": tiling.rows, "tiles": len(tiles), "weight_groups": groups,
            "group_blocks": group, "in_slot_lines": tiling.in_slot, "out_slot_lines": tiling.out_slot}
