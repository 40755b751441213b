"""Lowering of nearest upsampling by integer factors: DMA only.

Nearest upsampling by ``(fh, fw)`` writes input pixel ``(y, x)`` to the output pixels
``(y*fh + i, x*fw + j)``. A band of input rows (all the part's channel blocks) is
loaded with each pixel written ``fw`` times side by side (a LOAD whose outer loop
reads the same DRAM lines again, DRAM stride 0), which makes the band's output rows;
each of them is stored ``fh`` times (one STORE per replica row, every block and row
of the band). Two band slots alternate (``IN_FREE``/``IN_FULL``), so the loads of the
next band overlap the stores of this one. No PE or PPU work: the integers pass
unchanged (the output keeps the input's quantization).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...hw.asm import StreamBuilder
from ...hw.config import HwConfig
from ...hw.isa import Buffer, Opcode
from ..errors import CompileError
from .common import FIELD_MAX_COUNT, IN_FREE, IN_FULL, ceil_div, largest_band

__all__ = ["UpsampleLayer", "lower_upsample"]


@dataclass
class UpsampleLayer:
    """Nearest upsampling of a ``(C, H, W)`` tensor by ``factor_h`` x ``factor_w``."""
    channels: int
    height: int
    width: int
    factor_h: int
    factor_w: int

    @property
    def out_height(self) -> int:
        return self.height * self.factor_h

    @property
    def out_width(self) -> int:
        return self.width * self.factor_w


def lower_upsample(hw: HwConfig, layer: UpsampleLayer, stream: StreamBuilder, *, in_line: int, out_line: int,
                   rows: tuple[int, int] | None = None, blocks: tuple[int, int] | None = None) -> dict:
    """Emit the upsampling of input ``rows`` ``[r0, r1)`` x channel ``blocks`` ``[b0, b1)`` (all by default)."""
    H, W, fh, fw = layer.height, layer.width, layer.factor_h, layer.factor_w
    OH, OW = layer.out_height, layer.out_width
    row0, row1 = rows if rows is not None else (0, H)
    block0, block1 = blocks if blocks is not None else (0, ceil_div(layer.channels, hw.lanes))
    part_blocks = block1 - block0
    if OW > FIELD_MAX_COUNT or fw > FIELD_MAX_COUNT or fh > FIELD_MAX_COUNT:
        raise CompileError(f"upsampling to rows of {OW} pixels exceeds the {FIELD_MAX_COUNT}-iteration loop fields")
    band = largest_band(row1 - row0, lambda count: 2 * part_blocks * count * OW <= hw.act_lines
                        and count * W <= FIELD_MAX_COUNT)
    if band is None:
        raise CompileError(f"upsampling of {layer.channels}x{H}x{W}: one output row needs {2 * part_blocks * OW} "
                           f"act lines double-buffered (act_lines = {hw.act_lines})")
    slot = part_blocks * band * OW
    tiles = [(y, min(band, row1 - y)) for y in range(row0, row1, band)]

    def load(index):
        y0, count = tiles[index]
        for block in range(part_blocks):
            stream.emit(Opcode.LOAD, wait=IN_FREE if block == 0 else 0,
                        signal=IN_FULL if block == part_blocks - 1 else 0, buffer=Buffer.ACT,
                        dram_addr=in_line + (block0 + block) * H * W + y0 * W, dram_s1=1, dram_s2=0,
                        sram_addr=(index % 2) * slot + block * band * OW, sram_s1=fw, sram_s2=1,
                        n2=fw, n1=count * W, n0=1)

    load(0)
    if len(tiles) > 1:
        load(1)
    for index, (y0, count) in enumerate(tiles):
        for replica in range(fh):
            stream.emit(Opcode.STORE, wait=IN_FULL if replica == 0 else 0,
                        signal=IN_FREE if replica == fh - 1 else 0, buffer=Buffer.ACT,
                        dram_addr=out_line + block0 * OH * OW + (y0 * fh + replica) * OW, dram_s1=fh * OW,
                        dram_s2=OH * OW, sram_addr=(index % 2) * slot, sram_s1=OW, sram_s2=band * OW,
                        n2=part_blocks, n1=count, n0=OW)
        if index + 2 < len(tiles):
            load(index + 2)
    return {"tile_rows": band, "tiles": len(tiles)}
