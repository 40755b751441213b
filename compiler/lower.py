"""Lowering of single layers to tiled, double-buffered instruction streams.

A *windowed* layer (convolution, depthwise convolution, fully connected,
max/average pooling) is tiled into bands of ``T`` output rows (full width, all
input channel blocks) and groups of output-channel blocks whose weights fit in
half the weight scratchpad. Everything is double-buffered: input tiles, weight
groups, accumulator tiles and output tiles each have two slots, guarded by the
semaphore pairs of :mod:`.program`, so the DMA loads tile ``n+1`` (and stores
tile ``n-1``) while the PE array computes tile ``n`` and the PPU requantizes.

Per output-channel block the PE runs one MATMUL per (kernel tap, input block),
each sweeping the whole ``T x OW`` tile (one pixel per cycle); when the tile
is a single pixel (fully connected, global pooling) the input-block or tap
loop is folded into the instruction's loops instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..hw.config import HwConfig
from ..hw.isa import Buffer, MatmulMode, Opcode, Unit
from .program import (
    ACC_FREE,
    ACC_FULL,
    IN_FREE,
    IN_FULL,
    OUT_FREE,
    OUT_FULL,
    W_FREE,
    W_FULL,
    CompileError,
    StreamBuilder,
)

__all__ = ["initial_credits", "WindowedLayer", "AddLayer", "lower_windowed", "lower_add", "weight_blocks_for",
           "params_for", "chunk_blocks", "chunked_block_ranges"]

FIELD_MAX_COUNT = 4095
#: Largest window (global pooling and flattening fully connected layers use big ones).
MAX_KERNEL = 64


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _byte(value: int) -> int:
    return int(value) & 0xFF


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


def initial_credits(stream: StreamBuilder) -> None:
    """Two free slots of every double-buffered resource: emitted once at the start of a stream."""
    stream.credit(Unit.DMA, IN_FREE | W_FREE)
    stream.credit(Unit.PE, ACC_FREE)
    stream.credit(Unit.PPU, OUT_FREE)


@dataclass
class WindowedLayer:
    """A layer that slides a ``kernel x kernel`` window over a ``(C, H, W)`` tensor.

    ``kind`` is ``conv``, ``depthwise``, ``maxpool`` or ``avgpool`` (a fully connected
    layer is a 1x1 ``conv`` on a 1x1 image).
    """
    kind: str
    in_channels: int
    height: int
    width: int
    out_channels: int
    kernel: int
    stride: int
    pad: int
    in_signed: bool
    in_zp: int
    out_signed: bool
    out_zp: int
    clamp_lo: int
    clamp_hi: int
    #: ONNX ceil_mode (pooling): a last, partial window on the bottom/right edge, padded
    #: with the pad value like the other borders.
    ceil_mode: bool = False

    def _out(self, size: int) -> int:
        return out_size(size, self.kernel, self.stride, self.pad, self.ceil_mode)

    @property
    def out_height(self) -> int:
        return self._out(self.height)

    @property
    def out_width(self) -> int:
        return self._out(self.width)

    @property
    def macs(self) -> int:
        per_output = self.kernel * self.kernel * (self.in_channels if self.kind == "conv" else 1)
        return self.out_channels * self.out_height * self.out_width * per_output

    def check(self) -> None:
        if self.kind not in ("conv", "depthwise", "maxpool", "avgpool"):
            raise CompileError(f"unknown windowed layer kind {self.kind!r}")
        if not 1 <= self.kernel <= MAX_KERNEL:
            raise CompileError(f"kernel must be between 1 and {MAX_KERNEL}, not {self.kernel}")
        if self.stride not in (1, 2):
            raise CompileError(f"stride must be 1 or 2, not {self.stride}")
        if not 0 <= self.pad < self.kernel:
            raise CompileError(f"padding must be between 0 and kernel - 1 ({self.kernel - 1}), not {self.pad}")
        if self.kind != "conv" and self.in_channels != self.out_channels:
            raise CompileError(f"{self.kind} needs as many output channels as input channels "
                               f"({self.in_channels}), not {self.out_channels}")
        if self.out_height < 1 or self.out_width < 1:
            raise CompileError(f"a {self.kernel}x{self.kernel} window does not fit a {self.height}x{self.width} "
                               f"input with padding {self.pad}")


def weight_blocks_for(layer: WindowedLayer, lanes: int) -> int:
    """Weight blocks per output-channel block."""
    if layer.kind == "conv":
        return layer.kernel * layer.kernel * _ceil_div(layer.in_channels, lanes)
    if layer.kind == "depthwise":
        return _ceil_div(layer.kernel * layer.kernel, lanes)
    if layer.kind == "avgpool":
        return 1
    return 0


def pack_windowed_weights(layer: WindowedLayer, weight: np.ndarray | None, lanes: int) -> np.ndarray:
    """Weight blocks in the order the lowering addresses them: (out block, tap, in block).

    ``weight`` is (K, C, k, k) for conv, (C, 1, k, k) for depthwise, unused for pools.
    """
    k = layer.kernel
    cout_blocks = _ceil_div(layer.out_channels, lanes)
    per_block = weight_blocks_for(layer, lanes)
    blocks = np.zeros((cout_blocks * per_block, lanes, lanes), dtype=np.int8)
    if layer.kind == "conv":
        cin_blocks = _ceil_div(layer.in_channels, lanes)
        padded = np.zeros((cout_blocks * lanes, cin_blocks * lanes, k, k), dtype=np.int8)
        padded[:layer.out_channels, :layer.in_channels] = weight
        # [ob, oc, ib, ic, ky, kx] -> [ob, ky, kx, ib, ic (row), oc (col)]
        view = padded.reshape(cout_blocks, lanes, cin_blocks, lanes, k, k).transpose(0, 4, 5, 2, 3, 1)
        blocks[:] = view.reshape(-1, lanes, lanes)
    elif layer.kind == "depthwise":
        taps = np.zeros((cout_blocks * lanes, per_block * lanes), dtype=np.int8)
        taps[:layer.out_channels, :k * k] = weight.reshape(layer.out_channels, k * k)
        # [ob, oc, b, row] -> [ob, b, row, oc]
        blocks[:] = taps.reshape(cout_blocks, lanes, per_block, lanes).transpose(0, 2, 3, 1).reshape(-1, lanes, lanes)
    elif layer.kind == "avgpool":
        blocks[:] = 1
    return blocks


def params_for(bias: np.ndarray, multiplier: np.ndarray, channels: int, lanes: int) -> np.ndarray:
    """(2 * out blocks, L) uint32 words: per block a bias entry then a multiplier entry."""
    blocks = _ceil_div(channels, lanes)
    b = np.zeros(blocks * lanes, dtype=np.int32)
    mult = np.zeros(blocks * lanes, dtype=np.float32)
    b[:channels] = bias
    mult[:channels] = multiplier
    entries = np.empty((blocks, 2, lanes), dtype=np.uint32)
    entries[:, 0] = b.reshape(blocks, lanes).view(np.uint32)
    entries[:, 1] = mult.reshape(blocks, lanes).view(np.uint32)
    return entries.reshape(2 * blocks, lanes)


def split_folded_first(fields: dict) -> list[dict]:
    """A MATMUL whose loop accumulates into one entry (``acc_s0 == 0``, fully connected layers,
    global pooling) and that must overwrite first: its first iteration is split off, then the
    rest of its row and the remaining rows accumulate."""
    if fields.get("acc_s0", 1) != 0 or fields["n1"] * fields["n0"] == 1:
        return [fields]
    act, w = fields["act_addr"], fields["w_addr"]
    parts = [dict(fields, n1=1, n0=1)]
    if fields["n0"] > 1:
        parts.append(dict(fields, n1=1, n0=fields["n0"] - 1, act_addr=act + fields.get("act_s0", 0),
                          w_addr=w + fields.get("w_s0", 0)))
    if fields["n1"] > 1:
        parts.append(dict(fields, n1=fields["n1"] - 1, act_addr=act + fields.get("act_s1", 0),
                          w_addr=w + fields.get("w_s1", 0)))
    return parts


@dataclass
class _Tiling:
    rows: int           # output rows per tile
    in_rows: int        # input rows per tile (with halo)
    in_width: int       # input columns per tile (with padding)
    group_blocks: int   # output-channel blocks per weight group
    in_slot: int        # lines
    out_slot: int       # lines


def chunk_blocks(hw: HwConfig, layer: WindowedLayer) -> int | None:
    """Input-channel blocks per weight chunk when one output-channel block's weights do not
    fit half the weight scratchpad (a convolution with many input channels), else ``None``.

    Such a layer is lowered one output block at a time, its input channels in chunks whose
    partial sums accumulate in the accumulators (see :func:`lower_windowed`)."""
    per_block = weight_blocks_for(layer, hw.lanes)
    half_weights = hw.weight_blocks // 2
    if per_block <= half_weights:
        return None
    taps = layer.kernel * layer.kernel
    if layer.kind != "conv" or taps > half_weights or taps > FIELD_MAX_COUNT:
        raise CompileError(f"{layer.kind} layer needs {per_block} weight blocks per output-channel block, "
                           f"half the weight scratchpad holds {half_weights}; needs weight_blocks >= "
                           f"{2 * (taps if layer.kind == 'conv' else per_block)}")
    return half_weights // taps


def chunked_block_ranges(hw: HwConfig, block0: int, block1: int) -> list[tuple[int, int]]:
    """The output-block ranges a chunked convolution's part is lowered in, one after the other:
    each keeps its blocks' parameters on chip (``param_entries // 2`` blocks at most)."""
    most = max(1, hw.param_entries // 2)
    return [(b, min(block1, b + most)) for b in range(block0, block1, most)]


def plan_tiling(hw: HwConfig, layer: WindowedLayer, out_rows: int | None = None,
                out_blocks: int | None = None) -> _Tiling:
    """Tile a layer (or the part of it one core computes: ``out_rows`` rows and
    ``out_blocks`` output-channel blocks) to the scratchpads."""
    lanes = hw.lanes
    k, s = layer.kernel, layer.stride
    cin_blocks = _ceil_div(layer.in_channels, lanes)
    cout_blocks = out_blocks if out_blocks is not None else _ceil_div(layer.out_channels, lanes)
    out_rows = out_rows if out_rows is not None else layer.out_height
    per_block = weight_blocks_for(layer, lanes)
    half_weights = hw.weight_blocks // 2
    if chunk_blocks(hw, layer) is not None:
        group = 1     # one output block at a time, its weights in input-channel chunks
    else:
        group = cout_blocks if per_block == 0 else min(cout_blocks, half_weights // per_block)
    # Parameters (bias + multiplier entries per block) are double-buffered per group too.
    group = min(group, hw.param_entries // 4)
    in_width = (layer.out_width - 1) * s + k
    ow = layer.out_width
    if ow > FIELD_MAX_COUNT or in_width > FIELD_MAX_COUNT:
        raise CompileError(f"rows of {in_width} pixels exceed the {FIELD_MAX_COUNT}-iteration loop fields")
    best = None
    # Prefer whole weight groups and tall tiles; shrink the group (output-channel blocks
    # per pass) before giving up, which also shrinks the input slot of depthwise layers.
    for candidate_group in range(group, 0, -1):
        in_blocks = cin_blocks if layer.kind == "conv" else candidate_group
        for rows in range(min(out_rows, FIELD_MAX_COUNT), 0, -1):
            in_rows = (rows - 1) * s + k
            in_slot = in_blocks * in_rows * in_width
            out_slot = candidate_group * rows * ow
            if 2 * in_slot + 2 * out_slot <= hw.act_lines and 2 * rows * ow <= hw.acc_entries \
                    and in_rows * in_width * s <= 0xFFFF:
                best = _Tiling(rows, in_rows, in_width, candidate_group, in_slot, out_slot)
                break
        if best is not None:
            break
    if best is None:
        in_blocks = cin_blocks if layer.kind == "conv" else 1
        need = 2 * in_blocks * k * in_width + 2 * ow
        raise CompileError(f"{layer.kind} layer {layer.in_channels}x{layer.height}x{layer.width}: one output row "
                           f"needs {need} act lines double-buffered (act_lines = {hw.act_lines}) and "
                           f"{2 * ow} accumulator entries (acc_entries = {hw.acc_entries})")
    return best


def _emit_input_band(stream: StreamBuilder, layer: WindowedLayer, tiling: _Tiling, oy0: int, rows: int, *,
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
                sram_addr=sram_addr, sram_s1=tiling.in_width, sram_s2=tiling.in_rows * tiling.in_width,
                n2=blocks, n1=in_rows, n0=tiling.in_width,
                pad_top=pad_top, pad_bottom=in_rows - pad_top - valid_rows, pad_left=p,
                pad_right=tiling.in_width - p - valid_cols, pad_value=_byte(pad_value))


def lower_windowed(hw: HwConfig, layer: WindowedLayer, stream: StreamBuilder, *, in_line: int, out_line: int,
                   weight_line: int, param_line: int, rows: tuple[int, int] | None = None,
                   blocks: tuple[int, int] | None = None, credits: bool = True) -> dict:
    """Emit the layer, or the part of it given by output ``rows`` ``[r0, r1)`` and
    output-channel ``blocks`` ``[b0, b1)``, into ``stream``. Returns the tiling (for reports).

    The part leaves the semaphores as it found them, so the stream may continue with other
    work; ``credits`` emits the initial "two free slots" credits (once per stream: see
    :func:`initial_credits`)."""
    layer.check()
    lanes = hw.lanes
    k, s = layer.kernel, layer.stride
    OH, OW = layer.out_height, layer.out_width
    cin_blocks = _ceil_div(layer.in_channels, lanes)
    row0, row1 = rows if rows is not None else (0, OH)
    block0, block1 = blocks if blocks is not None else (0, _ceil_div(layer.out_channels, lanes))
    if not (0 <= row0 < row1 <= OH and 0 <= block0 < block1 <= _ceil_div(layer.out_channels, lanes)):
        raise CompileError(f"empty or out-of-range part: rows {row0}..{row1} of {OH}, "
                           f"blocks {block0}..{block1}")
    cout_blocks = block1 - block0
    tiling = plan_tiling(hw, layer, out_rows=row1 - row0, out_blocks=cout_blocks)
    if chunk_blocks(hw, layer) is not None:
        if credits:
            initial_credits(stream)
        reports = [_lower_chunked(hw, layer, stream, tiling, in_line=in_line, out_line=out_line,
                                  weight_line=weight_line, param_line=param_line, rows=(row0, row1), blocks=part)
                   for part in chunked_block_ranges(hw, block0, block1)]
        return dict(reports[0], tiles=sum(r["tiles"] for r in reports),
                    weight_groups=sum(r["weight_groups"] for r in reports))
    per_block = weight_blocks_for(layer, lanes)
    group = tiling.group_blocks
    groups = _ceil_div(cout_blocks, group)
    tiles_per_group = _ceil_div(row1 - row0, tiling.rows)

    half_weights = hw.weight_blocks // 2
    in_slots = [0, tiling.in_slot]
    out_slots = [2 * tiling.in_slot, 2 * tiling.in_slot + tiling.out_slot]
    acc_tile = tiling.rows * OW
    acc_slots = [0, acc_tile]

    pad_value = layer.in_zp
    if layer.kind == "maxpool":
        pad_value = -128 if layer.in_signed else 0
    mode = {"conv": MatmulMode.MATMUL, "depthwise": MatmulMode.DEPTHWISE,
            "avgpool": MatmulMode.DEPTHWISE, "maxpool": MatmulMode.MAX}[layer.kind]
    has_weights = per_block > 0
    half_params = hw.param_entries // 2
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
            stream.emit(Opcode.LOAD, signal=W_FULL, buffer=Buffer.WEIGHT,
                        dram_addr=weight_line + j * per_block * lanes,
                        sram_addr=((g % 2) * half_weights + (j - first) * per_block) * lanes,
                        n2=1, n1=per_block, n0=lanes, dram_s1=lanes, sram_s1=lanes)

    def load_weights(g):
        load_params(g)
        load_weight_chunks(g)

    def load_input(index):
        g, t = tiles[index]
        oy0 = row0 + t * tiling.rows
        if layer.kind == "conv":
            first, blocks = 0, cin_blocks
        else:
            first, last = group_range(g)
            blocks = last - first
        _emit_input_band(stream, layer, tiling, oy0, min(tiling.rows, row1 - oy0), in_line=in_line,
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
    in_plane = tiling.in_rows * tiling.in_width
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
            if layer.kind == "conv":
                for ky in range(k):
                    for kx in range(k):
                        tap = ky * k + kx
                        w0 = wslot + local * per_block + tap * cin_blocks
                        act0 = in_slot + ky * tiling.in_width + kx
                        if single_pixel:
                            instructions.append(dict(w_addr=w0, w_s0=1, act_addr=act0, act_s0=in_plane,
                                                     n1=1, n0=cin_blocks, acc_s0=0, acc_s1=0))
                        else:
                            for cb in range(cin_blocks):
                                instructions.append(dict(w_addr=w0 + cb, act_addr=act0 + cb * in_plane,
                                                         n1=rows, n0=OW, act_s1=s * tiling.in_width, act_s0=s,
                                                         acc_s1=OW, acc_s0=1))
            else:
                block_base = in_slot + local * in_plane
                foldable = single_pixel and layer.kind in ("maxpool", "avgpool")
                if foldable:
                    instructions.append(dict(w_addr=wslot + local * per_block, w_row=0, act_addr=block_base,
                                             n1=k, n0=k, act_s1=tiling.in_width, act_s0=1, acc_s1=0, acc_s0=0))
                else:
                    for ky in range(k):
                        for kx in range(k):
                            tap = ky * k + kx
                            if layer.kind == "depthwise":
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
                            in_signed=int(layer.in_signed), in_zp=_byte(layer.in_zp),
                            acc_addr=acc_slot, **fields)
            wait = ACC_FULL | (OUT_FREE if j == first else 0)
            signal = ACC_FREE | (OUT_FULL if j == last - 1 else 0)
            if j == last - 1 and t == tiles_per_group - 1:
                # The PPU is the last reader of the group's parameters (and comes after the
                # PE's last read of its weights): it frees the weight/parameter slot.
                signal |= W_FREE
            stream.emit(Opcode.REQUANT, wait=wait, signal=signal, acc_addr=acc_slot, acc_s1=OW, acc_s0=1,
                        out_addr=out_slots[index % 2] + local * tiling.rows * OW, out_s1=OW, out_s0=1,
                        n1=rows, n0=OW, param_addr=(g % 2) * half_params + 2 * local, out_signed=int(layer.out_signed),
                        out_zp=_byte(layer.out_zp), clamp_lo=_byte(layer.clamp_lo), clamp_hi=_byte(layer.clamp_hi))
        if t == 0 and g + 1 < groups:
            load_weights(g + 1)
        if index + 2 < len(tiles):
            load_input(index + 2)
        store_output(index)
    return {"tile_rows": tiling.rows, "tiles": len(tiles), "weight_groups": groups,
            "group_blocks": group, "in_slot_lines": tiling.in_slot, "out_slot_lines": tiling.out_slot}


def _lower_chunked(hw: HwConfig, layer: WindowedLayer, stream: StreamBuilder, tiling: _Tiling, *, in_line: int,
                   out_line: int, weight_line: int, param_line: int, rows: tuple[int, int],
                   blocks: tuple[int, int]) -> dict:
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
    k, s = layer.kernel, layer.stride
    OH, OW = layer.out_height, layer.out_width
    taps = k * k
    cin_blocks = _ceil_div(layer.in_channels, lanes)
    per_block = weight_blocks_for(layer, lanes)
    chunk = chunk_blocks(hw, layer)
    chunks = [(c0, min(cin_blocks, c0 + chunk)) for c0 in range(0, cin_blocks, chunk)]
    row0, row1 = rows
    block0, block1 = blocks
    half_weights = hw.weight_blocks // 2
    lpe = hw.param_lines_per_entry
    tiles_per_block = _ceil_div(row1 - row0, tiling.rows)
    tiles = [(j, t) for j in range(block0, block1) for t in range(tiles_per_block)]
    units = [(index, c) for index in range(len(tiles)) for c in range(len(chunks))]
    in_slots = [0, tiling.in_slot]
    out_slots = [2 * tiling.in_slot, 2 * tiling.in_slot + tiling.out_slot]
    acc_slots = [0, tiling.rows * OW]
    in_plane = tiling.in_rows * tiling.in_width

    # Both weight/parameter credits, then every output block's parameters.
    stream.sync(Unit.DMA, wait=W_FREE)
    stream.emit(Opcode.LOAD, wait=W_FREE, buffer=Buffer.PARAM, dram_addr=param_line + 2 * block0 * lpe, sram_addr=0,
                n2=1, n1=2 * (block1 - block0), n0=lpe, dram_s1=lpe, sram_s1=lpe)

    def load_unit(u):
        # The first two chunks use the credits taken above; later ones wait for the PE.
        index, c = units[u]
        j = tiles[index][0]
        c0, c1 = chunks[c]
        stream.emit(Opcode.LOAD, wait=W_FREE if u >= 2 else 0, signal=W_FULL, buffer=Buffer.WEIGHT,
                    dram_addr=weight_line + (j * per_block + c0) * lanes, dram_s1=lanes, dram_s2=cin_blocks * lanes,
                    sram_addr=(u % 2) * half_weights * lanes, sram_s1=lanes, sram_s2=(c1 - c0) * lanes,
                    n2=taps, n1=c1 - c0, n0=lanes)

    def band(index):
        t = tiles[index][1]
        oy0 = row0 + t * tiling.rows
        return oy0, min(tiling.rows, row1 - oy0)

    def load_input(index):
        oy0, count = band(index)
        _emit_input_band(stream, layer, tiling, oy0, count, in_line=in_line, first_block=0, blocks=cin_blocks,
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
            instructions = []
            for ky in range(k):
                for kx in range(k):
                    w0 = wslot + (ky * k + kx) * (c1 - c0)
                    act0 = in_slot + ky * tiling.in_width + kx + c0 * in_plane
                    if single_pixel:
                        instructions.append(dict(w_addr=w0, w_s0=1, act_addr=act0, act_s0=in_plane,
                                                 n1=1, n0=c1 - c0, acc_s0=0, acc_s1=0))
                    else:
                        for cb in range(c1 - c0):
                            instructions.append(dict(w_addr=w0 + cb, act_addr=act0 + cb * in_plane, n1=count, n0=OW,
                                                     act_s1=s * tiling.in_width, act_s0=s, acc_s1=OW, acc_s0=1))
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
                            in_zp=_byte(layer.in_zp), acc_addr=acc_slot, **fields)
            if u + 2 < len(units):
                load_unit(u + 2)
            u += 1
        last = index == len(tiles) - 1
        stream.emit(Opcode.REQUANT, wait=ACC_FULL | OUT_FREE, signal=ACC_FREE | OUT_FULL | (W_FREE if last else 0),
                    acc_addr=acc_slot, acc_s1=OW, acc_s0=1, out_addr=out_slots[index % 2], out_s1=OW, out_s0=1,
                    n1=count, n0=OW, param_addr=2 * (j - block0), out_signed=int(layer.out_signed),
                    out_zp=_byte(layer.out_zp), clamp_lo=_byte(layer.clamp_lo), clamp_hi=_byte(layer.clamp_hi))
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


@dataclass
class AddLayer:
    """QLinearAdd of two ``(C, H, W)`` tensors."""
    channels: int
    height: int
    width: int
    signed: bool
    clamp_lo: int
    clamp_hi: int


def lower_add(hw: HwConfig, layer: AddLayer, stream: StreamBuilder, *, a_line: int, b_line: int, out_line: int,
              param_line: int, rows: tuple[int, int] | None = None, blocks: tuple[int, int] | None = None,
              credits: bool = True) -> dict:
    """Emit the add, or its part ``rows`` ``[r0, r1)`` x channel ``blocks`` ``[b0, b1)``."""
    lanes = hw.lanes
    H, W = layer.height, layer.width
    row0, row1 = rows if rows is not None else (0, H)
    block0, block1 = blocks if blocks is not None else (0, _ceil_div(layer.channels, lanes))
    part_rows = row1 - row0
    blocks = block1 - block0
    offset = block0 * H * W
    if W > FIELD_MAX_COUNT:
        raise CompileError(f"rows of {W} pixels exceed the {FIELD_MAX_COUNT}-iteration loop fields")
    rows = None
    for candidate in range(part_rows, 0, -1):
        slot = blocks * candidate * W
        if 6 * slot <= hw.act_lines and candidate * W <= FIELD_MAX_COUNT:
            rows = candidate
            break
    if rows is None:
        raise CompileError(f"add of {layer.channels}x{H}x{W}: one row needs {6 * blocks * W} act lines "
                           f"(act_lines = {hw.act_lines})")
    slot = blocks * rows * W
    a_slots, b_slots, out_slots = (0, slot), (2 * slot, 3 * slot), (4 * slot, 5 * slot)
    if credits:
        initial_credits(stream)
    stream.emit(Opcode.LOAD, buffer=Buffer.PARAM, dram_addr=param_line, sram_addr=0, n2=1, n1=3,
                n0=hw.param_lines_per_entry, dram_s1=hw.param_lines_per_entry, sram_s1=hw.param_lines_per_entry)
    tiles = _ceil_div(part_rows, rows)

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
                    out_signed=int(layer.signed), out_zp=0, clamp_lo=_byte(layer.clamp_lo),
                    clamp_hi=_byte(layer.clamp_hi))
        if index + 2 < tiles:
            load(index + 2)
        stream.emit(Opcode.STORE, wait=OUT_FULL, signal=OUT_FREE, buffer=Buffer.ACT,
                    dram_addr=out_line + offset + y0 * W, dram_s1=W, dram_s2=H * W, sram_addr=out_slots[index % 2],
                    sram_s1=W, sram_s2=rows * W, n2=blocks, n1=count, n0=W)
    return {"tile_rows": rows, "tiles": tiles}
