"""What a backend reports after running a binary: :class:`RunResult`, its :class:`ErrorInfo`
and the per-core counters it carries (:data:`COUNTER_NAMES`).

Every backend (:mod:`.golden`, :mod:`.rtl`) returns these; they sit below the
backends and the runtime, so that neither needs the other to build or read a result.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from ..hw.isa import ErrorCode

__all__ = ["COUNTER_NAMES", "ErrorInfo", "RunResult"]

#: Per-core performance counters, in the order the hardware reports them.
#:
#: ``instructions``: instructions dispatched, including END and BARRIER;
#: ``dma_busy``, ``pe_busy``, ``ppu_busy``: cycles the unit is executing an instruction;
#: ``dma_stall``: cycles the DMA has a DRAM request waiting for the shared port;
#: ``sem_wait``: cycles a unit's queue head waits on semaphores (summed over units);
#: ``barrier_wait``: cycles the dispatcher spends in BARRIER.
COUNTER_NAMES = ("instructions", "dma_busy", "dma_stall", "pe_busy", "ppu_busy", "sem_wait", "barrier_wait")


@dataclass
class ErrorInfo:
    """An accelerator error: what, on which core, at which instruction.

    Attributes
    ----------
    code : ErrorCode
    core : int
    pc : int
        Index of the offending instruction in that core's stream.
    """
    code: ErrorCode
    core: int
    pc: int

    def __str__(self) -> str:
        return f"{ErrorCode(self.code).name} on core {self.core} at instruction {self.pc}"

    def to_json(self) -> dict:
        return {"code": ErrorCode(self.code).name, "core": int(self.core), "pc": int(self.pc)}


@dataclass
class RunResult:
    """What a backend reports after running a binary.

    Attributes
    ----------
    backend : str
        ``"golden"`` or ``"rtl"``.
    outputs : dict of str to numpy.ndarray
        Logical output arrays (empty if the run stopped with an error).
    cycles : int
        Cycles until the last core finished (an estimate for the golden backend).
    counters : list of dict
        Per core (index = core number), the counters named in :data:`COUNTER_NAMES`.
    error : ErrorInfo or None
    barriers : list of dict
        One entry per cycle in which at least one core passed a barrier, in time order:
        ``{"cycle": int, "cores": int, "dram_read_lines": int, "dram_write_lines": int}``:
        the cycle (counted from the start, as ``cycles``), the mask of the cores passing
        in it, and the DRAM lines read (instruction fetch and DMA loads) and written
        (DMA stores) at the shared port before it. Measured by the RTL testbench; the
        golden simulator's event model estimates cycles and fetch, its DMA lines are exact.
    dram_read_lines, dram_write_lines : int or None
        The lines read and written over the whole run (None if the backend does not count).
    metadata : dict
        Backend-specific measurements (the RTL harness's timings).
    """
    backend: str
    outputs: dict[str, np.ndarray]
    cycles: int
    counters: list[dict]
    error: ErrorInfo | None = None
    metadata: dict = field(default_factory=dict)
    barriers: list[dict] = field(default_factory=list)
    dram_read_lines: int | None = None
    dram_write_lines: int | None = None

    @property
    def cycles_estimated(self) -> bool:
        """Whether ``cycles`` and the counters come from a model rather than the RTL."""
        return self.backend != "rtl"

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict:
        """A JSON-serialisable summary: cycles, error, counters and a sha256 per output."""
        return {
            "backend": self.backend,
            "cycles": int(self.cycles),
            "cycles_estimated": self.cycles_estimated,
            "error": None if self.error is None else self.error.to_json(),
            "counters": [{name: int(c.get(name, 0)) for name in COUNTER_NAMES} for c in self.counters],
            "dram_read_lines": self.dram_read_lines,
            "dram_write_lines": self.dram_write_lines,
            "outputs": {
                name: {"shape": list(array.shape), "dtype": str(array.dtype),
                       "sha256": hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()}
                for name, array in sorted(self.outputs.items())
            },
        }
