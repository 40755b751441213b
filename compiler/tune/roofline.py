"""The roofline lower bound of a whole network on a HwConfig.

A network cannot run faster than its compute on every PE of the cores it uses,
nor than the least DRAM traffic any schedule needs: every weight and the
per-channel parameters (int32 bias and float32 multiplier of the convolutions
and fully connected layers) read once, the input read once and the output written
once, over the shared port's bytes per cycle. The zoo benchmark prints it beside
each RTL measurement and the tuning report divides the ``none`` baseline by it:
the largest speedup any plan could reach.
"""

from __future__ import annotations

import numpy as np

from ...hw.config import HwConfig
from ..ir import Graph

__all__ = ["min_dram_bytes", "roofline"]


def min_dram_bytes(graph: Graph) -> int:
    """Weights, parameters, input and output, each moved once."""
    constants = 0
    for node in graph.nodes:
        for key in ("weight", "bias", "multiplier"):     # int8 weights; int32 bias and float32 multipliers
            value = getattr(node.attrs, key)
            if isinstance(value, np.ndarray):
                constants += int(value.nbytes)
    io_bytes = sum(int(np.prod(graph.tensors[name].shape)) for name in (graph.input, *graph.outputs))
    return constants + io_bytes


def roofline(graph: Graph, hw: HwConfig, cores: int | None = None) -> dict:
    """``{"cycles", "bound", "compute_cycles", "memory_cycles", "min_dram_bytes"}`` on ``cores`` (default all).

    ``bound`` is ``"compute"`` or ``"memory"``, whichever term is larger.
    """
    cores = hw.cores if cores is None else cores
    if not 1 <= cores <= hw.cores:
        raise ValueError(f"roofline: cores must be 1..{hw.cores} on this HwConfig, got {cores}")
    traffic = min_dram_bytes(graph)
    compute = graph.macs / (hw.macs_per_cycle * cores)
    memory = traffic / hw.dram_bytes_per_cycle
    return {"cycles": int(np.ceil(max(compute, memory))), "bound": "compute" if compute >= memory else "memory",
            "compute_cycles": int(np.ceil(compute)), "memory_cycles": int(np.ceil(memory)),
            "min_dram_bytes": traffic}
