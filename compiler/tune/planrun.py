"""Whole-network plans measured on the RTL: per-plan and per-group cycles, through the executor and cache.

:class:`PlanMeasurer` compiles each plan of a graph (in the parent process, where
the binary's bytes make the cache key), runs it on the RTL through an
:class:`~.executor.Executor` (:func:`run_plan_job` in a worker) and the
:class:`~.cache.MeasurementCache`, and checks the network's output against the
numpy reference of the graph (every plan computes the same function, bit for
bit): a plan whose output differs, or that stops the accelerator, fails the run,
it is never a data point.

Each :class:`PlanRun` has the plan's RTL cycles and, per fusion group, the cycles
between its barrier and the previous one (:func:`~dlfusion.sim.runtime.group_report`),
so one run measures every group of the plan at once.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ...hw.binary import Binary
from ...hw.config import HwConfig
from ...hw.errors import EXIT_ACCELERATOR, EXIT_MISMATCH, DlfusionError
from ..compile import compile_graph
from ..ir import Graph
from ..plan import Plan
from .cache import MeasurementCache, measure, measurement_key
from .executor import Executor

__all__ = ["PLAN_JOB_FORMAT", "MeasurementFailed", "PlanRun", "PlanMeasurer", "run_plan_job", "model_input"]

_log = logging.getLogger(__name__)

#: Part of every plan measurement's key: bumped when the job's result changes meaning.
PLAN_JOB_FORMAT = "tune-plan/1"


class MeasurementFailed(DlfusionError):
    """RTL runs of plans failed.

    Attributes
    ----------
    exit_status : int
        :data:`~dlfusion.hw.errors.EXIT_MISMATCH` (4) if a network output differed from its
        reference, else :data:`~dlfusion.hw.errors.EXIT_ACCELERATOR` (3).
    """

    def __init__(self, message: str, exit_status: int = EXIT_ACCELERATOR):
        super().__init__(message)
        self.exit_status = exit_status


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def model_input(graph: Graph, seed: int = 0) -> np.ndarray:
    """The seeded quantized input the tuner runs a graph on (its input tensor's dtype and shape)."""
    tensor = graph.tensors[graph.input]
    low, high = tensor.qrange
    return np.random.default_rng(seed).integers(low, high, endpoint=True, size=tensor.shape).astype(tensor.dtype)


def run_plan_job(job: dict) -> dict:
    """Run one compiled network on the RTL (an executor job; runs in a worker).

    Parameters
    ----------
    job : dict
        ``hw`` (HwConfig dict), ``binary`` (bytes), ``input`` (the network's input array).

    Returns
    -------
    dict
        ``cycles``, ``groups`` (per fusion group: ``cycles``, ``end_cycle``,
        ``dram_read_bytes``, ``dram_write_bytes``), ``output_sha256``, ``sim_seconds``.

    Raises
    ------
    AcceleratorError
        The accelerator stopped with an error.
    """
    from ...sim.rtl import RtlSimulator
    from ...sim.runtime import AcceleratorError, group_report
    hw = HwConfig.from_dict(job["hw"])
    binary = Binary.from_bytes(job["binary"])
    result = RtlSimulator(hw).run(binary, {"input": job["input"]})
    if result.error is not None:
        raise AcceleratorError(result.error, None)
    groups = [{key: int(group[key]) for key in ("cycles", "end_cycle", "dram_read_bytes", "dram_write_bytes")}
              for group in group_report(binary, result)]
    return {"cycles": int(result.cycles), "groups": groups, "output_sha256": _sha256(result.outputs["output"]),
            "sim_seconds": getattr(result, "sim_seconds", None)}


@dataclass
class PlanRun:
    """One plan measured on the RTL.

    Attributes
    ----------
    label : str
    plan : Plan
    cycles : int
        The whole program's RTL cycles.
    groups : list of dict
        Per group of ``plan``: ``nodes``, ``cores``, ``split`` and the measured ``cycles``,
        ``end_cycle``, ``dram_read_bytes``, ``dram_write_bytes``.
    seconds : float
        What the measurement cost (compiling and simulating), now or when it was cached.
    cached : bool
    """
    label: str
    plan: Plan
    cycles: int
    groups: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    cached: bool = False

    @property
    def group_cycles(self) -> int:
        """The groups' cycles summed: ``cycles`` minus the final END drain."""
        return sum(group["cycles"] for group in self.groups)

    def to_json(self) -> dict:
        return {"label": self.label, "cycles": self.cycles, "group_cycles": self.group_cycles,
                "seconds": round(self.seconds, 3), "cached": self.cached, "groups": self.groups}


class PlanMeasurer:
    """Measures plans of one graph on the RTL.

    Parameters
    ----------
    graph : Graph
    hw : HwConfig
    executor : Executor
    cache : MeasurementCache
    x : numpy.ndarray, optional
        The network input (default :func:`model_input`).
    progress : bool
        A progress bar on stderr.
    """

    def __init__(self, graph: Graph, hw: HwConfig, *, executor: Executor, cache: MeasurementCache,
                 x: np.ndarray | None = None, progress: bool = False):
        from ..reference import run_graph
        self.graph, self.hw = graph, hw
        self.executor, self.cache = executor, cache
        self.x = model_input(graph) if x is None else x
        self.expected_sha256 = _sha256(run_graph(graph, self.x))
        self.progress = progress

    def _prepare(self, item: tuple[str, Plan]):
        _, plan = item
        blob = compile_graph(self.graph, self.hw, plan, check_ir=False).to_bytes()
        key = measurement_key(self.hw, PLAN_JOB_FORMAT, blob, self.x)
        return key, {"hw": self.hw.to_dict(), "binary": blob, "input": self.x}

    def measure(self, plans: Sequence[tuple[str, Plan]], label: str = "RTL runs") -> list[PlanRun]:
        """Measure ``(label, plan)`` pairs; the runs in the same order.

        Raises
        ------
        MeasurementFailed
            A plan did not compile, the accelerator stopped, or an output differed from
            the graph's numpy reference (all failures are listed).
        """
        plans = list(plans)
        runs: dict[int, PlanRun] = {}
        errors = []
        mismatch = False
        done = 0
        indexed = list(enumerate(plans))
        for m in measure(indexed, lambda item: self._prepare(item[1]), run_plan_job, executor=self.executor,
                         cache=self.cache, hw_hash=self.hw.hash, progress=self.progress, label=label,
                         describe=lambda item: {"model": self.graph.name, "label": item[1][0],
                                                "plan": item[1][1].to_json()}):
            index, (name, plan) = m.spec
            done += 1
            if self.progress and not sys.stderr.isatty():     # a log: one line per run (a terminal has the bar)
                state = "cached" if m.cached else ("failed" if not m.ok else f"{m.seconds:.0f} s")
                _log.info("%s: %d/%d %s (%s)", label, done, len(plans), name, state)
            if not m.ok:
                errors.append(f"plan {name!r}: {m.error}")
                continue
            if m.result["output_sha256"] != self.expected_sha256:
                errors.append(f"plan {name!r}: the RTL output differs from the numpy reference of {self.graph.name}")
                mismatch = True
                continue
            if len(m.result["groups"]) != len(plan.groups):
                errors.append(f"plan {name!r}: {len(m.result['groups'])} measured groups for {len(plan.groups)} "
                              "planned")
                continue
            groups = [dict(nodes=list(group.nodes), cores=group.cores, split=group.split, **measured)
                      for group, measured in zip(plan.groups, m.result["groups"], strict=True)]
            runs[index] = PlanRun(name, plan, int(m.result["cycles"]), groups, m.seconds, m.cached)
        if errors:
            raise MeasurementFailed(f"{len(errors)} of {len(plans)} RTL runs of {self.graph.name} failed: "
                                    + "; ".join(errors), EXIT_MISMATCH if mismatch else EXIT_ACCELERATOR)
        return [runs[index] for index in range(len(plans))]
