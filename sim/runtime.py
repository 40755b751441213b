"""Backend interface: run a binary on the golden simulator or on the RTL.

:func:`run` is the one entry point; both backends return a :class:`RunResult`
with the logical output arrays, the cycle count, per-core counters
(:data:`COUNTER_NAMES`), the barrier passages with the DRAM lines moved so far,
and the accelerator error, if any. :func:`group_report` turns the barrier
passages of a compiled network into per-fusion-group cycles and DRAM bytes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from ..hw.binary import Binary, BinaryError
from ..hw.isa import ErrorCode

__all__ = [
    "COUNTER_NAMES", "BACKENDS", "ErrorInfo", "RunResult", "AcceleratorError", "GroupReportError",
    "build_dram_image", "read_outputs", "run", "group_report",
]

#: Per-core performance counters, in the order the hardware reports them.
#:
#: ``instructions``: instructions dispatched, including END and BARRIER;
#: ``dma_busy``, ``pe_busy``, ``ppu_busy``: cycles the unit is executing an instruction;
#: ``dma_stall``: cycles the DMA has a DRAM request waiting for the shared port;
#: ``sem_wait``: cycles a unit's queue head waits on semaphores (summed over units);
#: ``barrier_wait``: cycles the dispatcher spends in BARRIER.
COUNTER_NAMES = ("instructions", "dma_busy", "dma_stall", "pe_busy", "ppu_busy", "sem_wait", "barrier_wait")

#: Accepted ``backend`` names of :func:`run`.
BACKENDS = ("golden", "rtl")


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


class AcceleratorError(RuntimeError):
    """The accelerator stopped with an error (raised by ``run(..., check=True)``).

    Attributes
    ----------
    info : ErrorInfo
    result : RunResult
    """

    def __init__(self, info: ErrorInfo, result: RunResult | None = None):
        super().__init__(f"accelerator error: {info}")
        self.info = info
        self.result = result


class GroupReportError(ValueError):
    """The barrier passages of a run do not match the binary's fusion groups."""


def group_report(binary: Binary, result: RunResult) -> list[dict]:
    """Cycles, DRAM bytes and utilization of each fusion group of a compiled network.

    Every group of ``binary.metadata["groups"]`` (written by the compiler) ends with a
    barrier across all the program's cores; group ``i`` spans from the passage of
    barrier ``i - 1`` (or the start) to the passage of barrier ``i``. What follows the
    last barrier (the cores' ``END``) belongs to no group, so the groups' cycles add
    up to ``result.cycles`` minus that drain.

    Parameters
    ----------
    binary : Binary
    result : RunResult
        A run of ``binary`` that ended without error.

    Returns
    -------
    list of dict
        Per group: ``index``, ``nodes``, ``cores``, ``split``, ``macs`` (from the
        metadata), ``end_cycle`` (the barrier's cycle), ``cycles``, ``dram_read_bytes``,
        ``dram_write_bytes``, ``dram_bytes`` (lines moved at the DRAM port between the
        two barriers, instruction fetch included, times ``hw.line_bytes``) and
        ``utilization`` (``macs / (hw.macs_per_cycle * cores * cycles)``). Empty when
        the binary has no groups (a single layer).

    Raises
    ------
    GroupReportError
        The run did not pass exactly one all-core barrier per group.
    """
    groups = binary.metadata.get("groups") or []
    if not groups:
        return []
    hw = binary.hw
    mask = binary.core_mask
    events = [event for event in result.barriers if event["cores"] == mask]
    if len(events) != len(groups):
        stopped = f" (the run stopped with {result.error})" if result.error is not None else ""
        raise GroupReportError(f"the {result.backend} run passed {len(events)} barrier(s) of all the program's "
                               f"cores (mask {mask:#x}){stopped}, but the binary has {len(groups)} groups; "
                               "every group must end with one such barrier")
    report = []
    previous = {"cycle": 0, "dram_read_lines": 0, "dram_write_lines": 0}
    for group, event in zip(groups, events, strict=True):
        cycles = event["cycle"] - previous["cycle"]
        read = (event["dram_read_lines"] - previous["dram_read_lines"]) * hw.line_bytes
        write = (event["dram_write_lines"] - previous["dram_write_lines"]) * hw.line_bytes
        macs = int(group.get("macs", 0))
        cores = int(group["cores"])
        report.append({
            "index": int(group["index"]), "nodes": list(group["nodes"]), "cores": cores,
            "split": group.get("split"), "macs": macs, "end_cycle": int(event["cycle"]), "cycles": int(cycles),
            "dram_read_bytes": int(read), "dram_write_bytes": int(write), "dram_bytes": int(read + write),
            "utilization": macs / (hw.macs_per_cycle * cores * max(1, cycles)),
        })
        previous = event
    return report


def build_dram_image(binary: Binary, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The initial DRAM contents: the binary's segments, then the inputs.

    Parameters
    ----------
    binary : Binary
    inputs : dict of str to numpy.ndarray
        Every input named by ``binary.inputs``, as logical arrays.

    Returns
    -------
    numpy.ndarray
        uint8 array of ``binary.hw.dram_bytes`` bytes (zero where nothing is placed).

    Raises
    ------
    BinaryError
        An input is missing or unknown, has the wrong shape or dtype, or a segment
        does not fit in DRAM.
    """
    hw = binary.hw
    missing = sorted({t.name for t in binary.inputs} - set(inputs))
    if missing:
        raise BinaryError(f"missing input(s) {missing}; this binary takes "
                          f"{sorted(t.name for t in binary.inputs)}")
    dram = np.zeros(hw.dram_bytes, np.uint8)
    for segment in list(binary.segments) + binary.input_segments(inputs):
        start = segment.dram_line * hw.line_bytes
        end = start + len(segment.data)
        if segment.dram_line < 0 or end > hw.dram_bytes:
            raise BinaryError(f"segment {segment.name!r} (bytes {start}..{end}) does not fit in DRAM "
                              f"({hw.dram_bytes} bytes)")
        dram[start:end] = np.frombuffer(segment.data, np.uint8)
    return dram


def read_outputs(binary: Binary, dram: np.ndarray) -> dict[str, np.ndarray]:
    """The binary's outputs as logical arrays, read from a DRAM image (uint8, flat)."""
    lanes = binary.hw.lanes
    dram = np.asarray(dram, np.uint8).reshape(-1)
    outputs = {}
    for tensor in binary.outputs:
        start = tensor.dram_line * lanes
        raw = dram[start:start + tensor.lines(lanes) * lanes].tobytes()
        outputs[tensor.name] = binary.from_lines(tensor, raw)
    return outputs


def run(binary: Binary, inputs: dict[str, np.ndarray] | None = None, backend: str = "golden", *,
        check: bool = False, **options) -> RunResult:
    """Run ``binary`` on a backend.

    Parameters
    ----------
    binary : Binary
    inputs : dict of str to numpy.ndarray
        Every input of the binary.
    backend : {"golden", "rtl"}
        The golden simulator (``dlfusion.sim.golden``) or the Verilated RTL
        (``dlfusion.sim.rtl``, imported only when asked for).
    check : bool
        Raise :class:`AcceleratorError` if the program stops with an error.
    **options
        Passed to the RTL simulator; the golden simulator takes none.

    Returns
    -------
    RunResult

    Raises
    ------
    ValueError
        Unknown backend, or options given to the golden backend.
    AcceleratorError
        ``check`` is true and the accelerator reported an error.
    BinaryError
        The binary does not match the configuration, or the inputs are wrong.
    """
    inputs = {} if inputs is None else inputs
    if backend == "golden":
        if options:
            raise ValueError(f"the golden backend takes no options, got {sorted(options)}")
        from .golden import GoldenSimulator
        result = GoldenSimulator(binary.hw).run(binary, inputs)
    elif backend == "rtl":
        from .rtl import RtlSimulator
        result = RtlSimulator(binary.hw, **options).run(binary, inputs)
    else:
        raise ValueError(f"unknown backend {backend!r}; accepted: {', '.join(BACKENDS)}")
    if check and result.error is not None:
        raise AcceleratorError(result.error, result)
    return result
