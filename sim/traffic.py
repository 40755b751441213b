"""DRAM traffic of a binary, counted from its instruction streams.

The DMA moves exactly the non-padding lines of its LOADs and STOREs, so the
bytes a program moves are known from the program itself; instruction fetch
adds 32 bytes per instruction. Used by the benchmarks (a roofline bound needs
the bytes, cycles come from the RTL).
"""

from __future__ import annotations

from ..hw.binary import Binary
from ..hw.isa import Opcode, decode, decode_program

__all__ = ["dram_traffic", "dram_traffic_by_barrier"]


def _lines(f: dict) -> int:
    n2, n1, n0 = f["n2"], f["n1"], f["n0"]
    rows = max(0, n1 - f["pad_top"] - f["pad_bottom"])
    cols = max(0, n0 - f["pad_left"] - f["pad_right"])
    return n2 * rows * cols


def _words(binary: Binary) -> dict[int, list[int]]:
    """Each core's instruction words (core -> words)."""
    code = {s.dram_line: s.data for s in binary.segments if s.name.startswith("code")}
    return {stream.core: decode_program(code[stream.dram_line])[:stream.instructions] for stream in binary.streams}


def dram_traffic_by_barrier(binary: Binary) -> list[dict]:
    """Bytes the program moves between consecutive barriers, summed over its cores.

    Section ``i`` holds every core's instructions after its ``i``-th BARRIER up to and
    including its ``i + 1``-th (the first from the stream's start); the last section
    ends with ``END``. For a compiled network, section ``i`` is fusion group ``i`` and
    the last one holds only the ``END`` instructions.

    Returns
    -------
    list of dict
        Per section: ``load_bytes``, ``store_bytes`` (DMA lines, padding excluded) and
        ``fetch_bytes`` (32 per instruction, the BARRIER included).

    Raises
    ------
    ValueError
        The cores' streams hold different numbers of barriers.
    """
    lanes = binary.hw.line_bytes
    per_core = {}
    for core, words in _words(binary).items():
        sections = [{"load_bytes": 0, "store_bytes": 0, "fetch_bytes": 0}]
        for word in words:
            f = decode(word)
            section = sections[-1]
            section["fetch_bytes"] += 32
            if f["opcode"] is Opcode.LOAD:
                section["load_bytes"] += _lines(f) * lanes
            elif f["opcode"] is Opcode.STORE:
                section["store_bytes"] += _lines(f) * lanes
            elif f["opcode"] is Opcode.BARRIER:
                sections.append({"load_bytes": 0, "store_bytes": 0, "fetch_bytes": 0})
        per_core[core] = sections
    counts = {core: len(sections) - 1 for core, sections in per_core.items()}
    if len(set(counts.values())) > 1:
        raise ValueError(f"the cores' streams hold different numbers of barriers {counts}; "
                         "sections need the same count on every core")
    return [{key: sum(sections[i][key] for sections in per_core.values()) for key in sections[i]}
            for i in range(len(next(iter(per_core.values()))))]


def dram_traffic(binary: Binary) -> dict:
    """Bytes read and written by each core's DMA and fetched as instructions."""
    lanes = binary.hw.line_bytes
    words_of = _words(binary)
    per_core = []
    for stream in binary.streams:
        words = words_of[stream.core]
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
