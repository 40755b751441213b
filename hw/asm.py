"""Building programs: instruction streams (emitted or only counted), DRAM lines, the binary.

Everything that makes instruction streams uses this module: the compiler's
lowering and the random programs of the differential tests. A
:class:`StreamBuilder` sends each instruction to a *sink*: :class:`WordSink`
encodes it (:func:`~.isa.encode`, which checks every field), :class:`CountSink`
only counts what it will make the hardware do (instructions, DMA lines, PE and
PPU steps), so the compiler's cost features come from the same lowering that
emits the program, at a fraction of the cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .binary import Binary, Segment, Stream, Tensor
from .config import HwConfig
from .errors import InputError
from .isa import Buffer, Opcode, Unit, encode, encode_program

__all__ = ["AsmError", "WordSink", "CountSink", "Counts", "StreamBuilder", "DramAllocator", "pack_weight_blocks",
           "pack_params", "assemble"]


class AsmError(InputError):
    """A program does not fit the configuration (DRAM is full)."""


class WordSink:
    """Encodes every instruction into :attr:`words` (256-bit integers)."""

    def __init__(self):
        self.words: list[int] = []

    def emit(self, opcode: Opcode, wait: int, signal: int, fields: dict) -> None:
        self.words.append(encode(opcode, wait=wait, signal=signal, **fields))

    def __len__(self) -> int:
        return len(self.words)


@dataclass
class Counts:
    """What a stream makes one core do.

    Attributes
    ----------
    instructions : int
    load_lines, store_lines : int
        DMA lines read from and written to DRAM (padding is not read).
    constant_lines : int
        Of ``load_lines``, those loaded into the weight and parameter scratchpads.
    pe_steps, ppu_steps : int
        Loop iterations of MATMULs (one pixel each) and of REQUANTs and ADDs.
    """
    instructions: int = 0
    load_lines: int = 0
    store_lines: int = 0
    constant_lines: int = 0
    pe_steps: int = 0
    ppu_steps: int = 0

    @property
    def dma_lines(self) -> int:
        return self.load_lines + self.store_lines


class CountSink(Counts):
    """Counts the instructions instead of encoding them (see :class:`Counts`)."""

    def emit(self, opcode: Opcode, wait: int, signal: int, fields: dict) -> None:
        self.instructions += 1
        get = fields.get
        if opcode is Opcode.LOAD:
            lines = (get("n2", 0) * (get("n1", 0) - get("pad_top", 0) - get("pad_bottom", 0))
                     * (get("n0", 0) - get("pad_left", 0) - get("pad_right", 0)))
            self.load_lines += lines
            if get("buffer", Buffer.ACT) is not Buffer.ACT:
                self.constant_lines += lines
        elif opcode is Opcode.STORE:
            self.store_lines += get("n2", 0) * get("n1", 0) * get("n0", 0)
        elif opcode is Opcode.MATMUL:
            self.pe_steps += get("n1", 0) * get("n0", 0)
        elif opcode in (Opcode.REQUANT, Opcode.ADD):
            self.ppu_steps += get("n1", 0) * get("n0", 0)

    def __len__(self) -> int:
        return self.instructions


class StreamBuilder:
    """One core's instruction stream, sent to ``sink`` (a new :class:`WordSink` by default).

    Parameters
    ----------
    core : int
    sink : WordSink or CountSink
    """

    def __init__(self, core: int = 0, sink: WordSink | CountSink | None = None):
        self.core = core
        self.sink = sink if sink is not None else WordSink()

    @property
    def words(self) -> list[int]:
        """The encoded instructions (a :class:`WordSink` only)."""
        return self.sink.words

    def __len__(self) -> int:
        return len(self.sink)

    def emit(self, opcode: Opcode, *, wait: int = 0, signal: int = 0, **fields) -> None:
        self.sink.emit(opcode, wait, signal, fields)

    def sync(self, unit: Unit, *, wait: int = 0, signal: int = 0) -> None:
        self.sink.emit(Opcode.SYNC, wait, signal, {"unit": unit})

    def credit(self, unit: Unit, semaphores: int, count: int = 2) -> None:
        for _ in range(count):
            self.sync(unit, signal=semaphores)

    def end(self) -> None:
        self.sink.emit(Opcode.END, 0, 0, {})


class DramAllocator:
    """DRAM lines, allocated first-fit from ``start`` and reusable once released.

    Attributes
    ----------
    high_water : int
        One past the highest line ever allocated.
    """

    def __init__(self, hw: HwConfig, start: int = 0):
        self.hw = hw
        self.free = [(start, hw.dram_lines)]
        self.high_water = start

    def allocate(self, lines: int, what: str) -> int:
        """The first line of ``lines`` free lines (at least one) for ``what``.

        Raises
        ------
        AsmError
            No free range is large enough.
        """
        lines = max(1, lines)
        for index, (begin, end) in enumerate(self.free):
            if end - begin >= lines:
                self.free[index] = (begin + lines, end)
                self.high_water = max(self.high_water, begin + lines)
                return begin
        raise AsmError(f"DRAM is full: {what} needs {lines} lines; DRAM has {self.hw.dram_lines} lines "
                       f"({self.hw.dram_bytes} bytes)")

    def release(self, begin: int, lines: int) -> None:
        self.free.append((begin, begin + max(1, lines)))
        self.free.sort()
        merged = []
        for b, e in self.free:
            if merged and merged[-1][1] >= b:
                merged[-1] = (merged[-1][0], max(merged[-1][1], e))
            else:
                merged.append((b, e))
        self.free = merged


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
    segments, stream_table = list(data_segments), []
    for builder in streams:
        code = encode_program(builder.words)
        line = allocator.allocate(-(-len(code) // hw.line_bytes), f"core {builder.core} instructions")
        # Instructions must start on an instruction boundary of whole lines.
        segments.append(Segment(f"code:core{builder.core}", line, code))
        stream_table.append(Stream(builder.core, line, len(builder.words)))
    return Binary(hw, stream_table, segments, inputs, outputs, metadata)
