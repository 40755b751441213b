"""Run a binary on a backend: the one entry point of the golden simulator and the RTL.

:func:`run` chooses the backend by name through :mod:`.backend`; every backend
returns a :class:`~.result.RunResult` with the logical output arrays, the cycle
count, per-core counters, the barrier passages with the DRAM lines moved so far,
and the accelerator error, if any. :func:`group_report` turns the barrier
passages of a compiled network into per-fusion-group cycles and DRAM bytes.
"""

from __future__ import annotations

import numpy as np

from ..hw.binary import Binary
from ..hw.errors import AcceleratorFault, InputError
from .backend import BACKENDS, open_backend
from .result import ErrorInfo, RunResult

__all__ = ["BACKENDS", "AcceleratorError", "GroupReportError", "run", "group_report"]


class AcceleratorError(AcceleratorFault):
    """The accelerator stopped with an error (raised by ``run(..., check=True)``; status 3).

    Attributes
    ----------
    info : ErrorInfo
    result : RunResult
    """

    def __init__(self, info: ErrorInfo, result: RunResult | None = None):
        super().__init__(f"accelerator error: {info}")
        self.info = info
        self.result = result


class GroupReportError(InputError):
    """The barrier passages of a run do not match the binary's fusion groups (status 2)."""


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


def run(binary: Binary, inputs: dict[str, np.ndarray] | None = None, backend: str = "golden", *,
        check: bool = False, **options) -> RunResult:
    """Run ``binary`` on a backend.

    Parameters
    ----------
    binary : Binary
    inputs : dict of str to numpy.ndarray
        Every input of the binary.
    backend : {"golden", "rtl"}
        A name of :data:`~.backend.REGISTRY`: the golden simulator
        (``dlfusion.sim.golden``) or the Verilated RTL (``dlfusion.sim.rtl``,
        imported only when asked for).
    check : bool
        Raise :class:`AcceleratorError` if the program stops with an error.
    **options
        Passed to the backend's class (the RTL's ``waves``, ``max_cycles``, ...);
        the golden simulator takes none.

    Returns
    -------
    RunResult

    Raises
    ------
    InputError
        Unknown backend, or an option the backend does not take.
    AcceleratorError
        ``check`` is true and the accelerator reported an error.
    BinaryError
        The binary does not match the configuration, or the inputs are wrong.
    """
    result = open_backend(backend, binary.hw, **options).run(binary, {} if inputs is None else inputs)
    if check and result.error is not None:
        raise AcceleratorError(result.error, result)
    return result
