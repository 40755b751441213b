"""DRAM traffic of a binary, counted from its instruction streams.

The DMA moves exactly the non-padding lines of its LOADs and STOREs, so the
bytes a program moves are known from the program itself; instruction fetch
adds 32 bytes per instruction. Used by the benchmarks (a roofline bound needs
the bytes, cycles come from the RTL).
"""

from __future__ import annotations

from ..hw.isa import Opcode, decode, decode_program
from .binary import Binary

__all__ = ["dram_traffic"]


def _lines(f: dict) -> int:
    n2, n1, n0 = f["n2"], f["n1"], f["n0"]
    rows = max(0, n1 - f["pad_top"] - f["pad_bottom"])
    cols = max(0, n0 - f["pad_left"] - f["pad_right"])
    return n2 * rows * cols


def dram_traffic(binary: Binary) -> dict:
    """Bytes read and written by each core's DMA and fetched as instructions."""
    lanes = binary.hw.line_bytes
    code = {s.dram_line: s.data for s in binary.segments if s.name.startswith("code")}
    per_core = []
    for stream in binary.streams:
        words = decode_program(code[stream.dram_line])[:stream.instructions]
        loaded = stored = 0
        for word in words:
            f = decode(word)
            if f["opcode"] is Opcode.LOAD:
                loaded += _lines(f) * lanes
            elif f["opcode"] is Opcode.STORE:
                stored += _lines(f) * lanes
        per_core.append({"core": stream.core, "load_bytes": loaded, "store_bytes": stored,
                         "fetch_bytes": 32 * stream.instructions})
    total = sum(c["load_bytes"] + c["store_bytes"] + c["fetch_bytes"] for c in per_core)
    return {"per_core": per_core, "total_bytes": total,
            "dma_bytes": sum(c["load_bytes"] + c["store_bytes"] for c in per_core)}
