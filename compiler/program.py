"""Building blocks for emitting programs: instruction streams, DRAM allocation, packing.

Semaphore roles used by the lowerings (one core's 8 semaphores):

==========  =====================================================
IN_FULL     an input tile has landed in the act scratchpad
IN_FREE     an input tile slot may be overwritten
ACC_FULL    an accumulator tile is complete
ACC_FREE    an accumulator tile slot may be overwritten
OUT_FULL    an output tile has been written by the PPU
OUT_FREE    an output tile slot may be overwritten
W_FULL      a weight group (and the parameters before it) has landed
W_FREE      a weight slot may be overwritten
==========  =====================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..hw.config import HwConfig
from ..hw.isa import Opcode, Unit, encode, encode_program
from ..sim.binary import Binary, Segment, Stream, Tensor

__all__ = ["IN_FULL", "IN_FREE", "ACC_FULL", "ACC_FREE", "OUT_FULL", "OUT_FREE", "W_FULL", "W_FREE",
           "StreamBuilder", "DramAllocator", "CompileError", "pack_weight_blocks", "pack_params",
           "assemble"]

IN_FULL, IN_FREE, ACC_FULL, ACC_FREE, OUT_FULL, OUT_FREE, W_FULL, W_FREE = (1 << i for i in range(8))


class CompileError(ValueError):
    """The layer or model cannot be compiled for this HwConfig (names what and why)."""


@dataclass
class StreamBuilder:
    """One core's instruction stream."""
    core: int = 0
    words: list = field(default_factory=list)

    def emit(self, opcode: Opcode, *, wait: int = 0, signal: int = 0, **fields) -> None:
        self.words.append(encode(opcode, wait=wait, signal=signal, **fields))

    def sync(self, unit: Unit, *, wait: int = 0, signal: int = 0) -> None:
        self.emit(Opcode.SYNC, wait=wait, signal=signal, unit=unit)

    def credit(self, unit: Unit, semaphores: int, count: int = 2) -> None:
        for _ in range(count):
            self.sync(unit, signal=semaphores)

    def end(self) -> None:
        self.emit(Opcode.END)


class DramAllocator:
    """Bump allocator of DRAM lines."""

    def __init__(self, hw: HwConfig, start: int = 0):
        self.hw = hw
        self.next = start

    def allocate(self, lines: int, what: str) -> int:
        address = self.next
        self.next += max(1, lines)
        if self.next > self.hw.dram_lines:
            raise CompileError(f"DRAM is full: {what} needs {lines} lines at line {address}, "
                               f"DRAM has {self.hw.dram_lines} lines ({self.hw.dram_bytes} bytes)")
        return address


def pack_weight_blocks(blocks: np.ndarray) -> bytes:
    """(N, L, L) int8 blocks (row = input lane, column = output lane) as DRAM bytes."""
    return np.ascontiguousarray(blocks.astype(np.int8)).tobytes()


def pack_params(entries: np.ndarray) -> bytes:
    """(N, L) 32-bit words (int32 or float32) as DRAM bytes, little-endian."""
    return np.ascontiguousarray(entries).view(np.uint32).astype("<u4").tobytes()


def assemble(hw: HwConfig, streams: list[StreamBuilder], data_segments: list[Segment],
             allocator: DramAllocator, inputs: list[Tensor], outputs: list[Tensor],
             metadata: dict) -> Binary:
    """Place the instruction streams in DRAM after the data and build the Binary."""
    segments = list(data_segments)
    stream_table = []
    for builder in streams:
        code = encode_program(builder.words)
        line = allocator.allocate(-(-len(code) // hw.line_bytes), f"core {builder.core} instructions")
        # Instructions must start on an instruction boundary of whole lines.
        segments.append(Segment(f"code:core{builder.core}", line, code))
        stream_table.append(Stream(builder.core, line, len(builder.words)))
    return Binary(hw, stream_table, segments, inputs, outputs, metadata)
