"""The oracle: the best plan in a reduced space, from groups measured on the RTL.

The space: contiguous groups of up to ``max_group`` nodes, each on a core count
of :meth:`~.features.Workload.core_counts`, split by rows (and, for a single
layer on several cores, by channels). A plan's cycles are the sum of its
groups' cycles (every group ends with a barrier of all cores and its outputs go
through DRAM), so each candidate group is measured once and the best plan is a
shortest path over node positions (:func:`best_plan`).

Measuring: one RTL run of a whole-network plan measures all its groups (per
group cycles between barriers), so the candidates are covered by *tiling*
plans (:func:`tiling_plans`): for every length ``L``, offset ``o < L``, core
count ``c`` and split ``s``, the nodes before ``o`` run alone and the rest in
consecutive groups of ``L`` on ``c`` cores; a group that does not fuse or fit
is cut into the longest fitting prefix and the rest. Every candidate of the
space is a group of some tiling plan; groups measured in several plans keep
the median and record the spread (:class:`CandidateTable`).

Additivity is checked, not assumed: the chosen plan is run on the RTL and its
cycles compared with the sum of its groups' measurements
(:data:`ADDITIVITY_TOLERANCE` is the bound the tests assert).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..plan import Group, Plan
from .errors import TuneError
from .features import Candidate, Workload
from .planrun import PlanMeasurer, PlanRun

__all__ = ["DEFAULT_MAX_GROUP", "ADDITIVITY_TOLERANCE", "tiling_plans", "CandidateTable", "best_plan",
           "OracleResult", "run_oracle"]

#: Longest group in the oracle's space (and the strategies' fusion search).
DEFAULT_MAX_GROUP = 4
#: Bound on ``|RTL cycles of a plan's groups - sum of their measurements| / RTL cycles`` for the
#: oracle's plan: what :func:`run_oracle` reports as ``additive`` and the tests assert.
ADDITIVITY_TOLERANCE = 0.02


def _key(nodes, cores: int, split: str) -> Candidate:
    return tuple(nodes), int(cores), "rows" if cores == 1 else split


def _chunk(workload: Workload, nodes: tuple[str, ...], cores: int, split: str) -> list[Group]:
    """``nodes`` as groups on ``cores`` cores: one group if it fits, else the longest fitting
    prefix and then the rest the same way."""
    groups = []
    start = 0
    while start < len(nodes):
        end = len(nodes)
        while end - start > 1 and workload.fits(nodes[start:end], cores) is not None:
            end -= 1
        run = list(nodes[start:end])
        groups.append(Group(run, cores, split if len(run) == 1 and cores > 1 else "rows"))
        start = end
    return groups


def tiling_plans(workload: Workload, max_group: int = DEFAULT_MAX_GROUP) -> list[tuple[str, Plan]]:
    """The plans whose groups cover every candidate of the oracle's space (see the module docstring).

    Returns
    -------
    list of (str, Plan)
        ``("L{length}-o{offset}-c{cores}-{split}", plan)``, the plan ``L1-o0-c1-rows`` first
        (every layer alone on one core: the ``none`` baseline).
    """
    if max_group < 1:
        raise TuneError(f"max_group must be at least 1, not {max_group}")
    names = workload.names
    graph, hw = workload.graph, workload.hw
    plans = []
    for length in range(1, min(max_group, len(names)) + 1):
        for offset in range(length if length > 1 else 1):
            for cores in workload.core_counts():
                for split in (("rows", "channels") if length == 1 and cores > 1 else ("rows",)):
                    groups = [Group([name], cores, split) for name in names[:offset]]
                    for start in range(offset, len(names), length):
                        groups += _chunk(workload, tuple(names[start:start + length]), cores, split)
                    plan = Plan(graph.name, hw.hash, groups)
                    plans.append((f"L{length}-o{offset}-c{cores}-{split}", plan))
    return plans


@dataclass
class CandidateTable:
    """Measured cycles of candidate groups: every measurement of each ``(nodes, cores, split)``."""
    measurements: dict[Candidate, list[int]] = field(default_factory=dict)

    def add_runs(self, runs: Iterable[PlanRun]) -> None:
        for run in runs:
            for group in run.groups:
                self.measurements.setdefault(_key(group["nodes"], group["cores"], group["split"]), []).append(
                    int(group["cycles"]))

    def cycles(self) -> dict[Candidate, float]:
        """The median of each candidate's measurements."""
        return {key: float(statistics.median(values)) for key, values in self.measurements.items()}

    def spread(self, key: Candidate) -> float:
        """``(max - min) / median`` of a candidate's measurements (0 if measured once)."""
        values = self.measurements[key]
        return (max(values) - min(values)) / max(1.0, statistics.median(values))

    def summary(self) -> dict:
        repeated = [key for key, values in self.measurements.items() if len(values) > 1]
        spreads = sorted(self.spread(key) for key in repeated)
        return {"candidates": len(self.measurements), "measurements": sum(map(len, self.measurements.values())),
                "repeated": len(repeated),
                "median_spread": spreads[len(spreads) // 2] if spreads else 0.0,
                "max_spread": spreads[-1] if spreads else 0.0}


def best_plan(workload: Workload, costs: Mapping[Candidate, float],
              max_group: int | None = None) -> tuple[Plan, float]:
    """The plan of least total cost whose groups are all in ``costs`` (dynamic programming).

    Parameters
    ----------
    workload : Workload
    costs : mapping of (nodes, cores, split) to float
        Candidate groups (contiguous runs of the graph's nodes, in order) and their cost.
    max_group : int, optional
        Ignore candidates longer than this.

    Returns
    -------
    (Plan, float)
        The plan and its cost (the sum of its groups'). Ties go to the candidate seen first
        in ``costs`` order at each position.

    Raises
    ------
    TuneError
        No combination of the candidates covers the graph.
    """
    names = workload.names
    starting: dict[int, list[tuple[Candidate, float]]] = {}
    for key, cost in costs.items():
        nodes = key[0]
        if max_group is not None and len(nodes) > max_group:
            continue
        start = workload.position.get(nodes[0])
        if start is None or tuple(names[start:start + len(nodes)]) != tuple(nodes):
            raise TuneError(f"candidate {list(nodes)} is not a contiguous run of {workload.graph.name}'s nodes")
        starting.setdefault(start, []).append((key, float(cost)))
    count = len(names)
    best: list[float] = [0.0] + [float("inf")] * count
    choice: list[Candidate | None] = [None] * (count + 1)
    for start in range(count):
        if best[start] == float("inf"):
            continue
        for key, cost in starting.get(start, []):
            end = start + len(key[0])
            if best[start] + cost < best[end]:
                best[end] = best[start] + cost
                choice[end] = key
    if best[count] == float("inf"):
        raise TuneError(f"the candidate groups do not cover {workload.graph.name} (no plan reaches its last node)")
    groups = []
    end = count
    while end > 0:
        nodes, cores, split = choice[end]
        groups.append(Group(list(nodes), cores, split))
        end -= len(nodes)
    plan = Plan(workload.graph.name, workload.hw.hash, groups[::-1])
    return plan, best[count]


@dataclass
class OracleResult:
    """What :func:`run_oracle` found.

    Attributes
    ----------
    plan : Plan
    predicted_cycles : float
        The sum of the chosen groups' measurements (medians).
    run : PlanRun
        The chosen plan measured on the RTL as a whole.
    search_seconds : float
        Cold-cache cost: the seconds of every tiling run when it was measured, plus the search.
    tiling_runs : list of PlanRun
    table : CandidateTable
    """
    plan: Plan
    predicted_cycles: float
    run: PlanRun
    search_seconds: float
    tiling_runs: list[PlanRun]
    table: CandidateTable

    @property
    def additivity_error(self) -> float:
        """``(RTL cycles of the plan's groups - their summed measurements) / RTL cycles of the groups``."""
        return (self.run.group_cycles - self.predicted_cycles) / max(1, self.run.group_cycles)

    @property
    def additive(self) -> bool:
        return abs(self.additivity_error) <= ADDITIVITY_TOLERANCE

    def group_errors(self) -> list[float]:
        """Per chosen group: (its cycles in the whole-plan run - its measurement) / its measurement."""
        costs = self.table.cycles()
        return [(group["cycles"] - costs[_key(group["nodes"], group["cores"], group["split"])])
                / max(1.0, costs[_key(group["nodes"], group["cores"], group["split"])])
                for group in self.run.groups]

    def summary(self) -> dict:
        errors = [abs(e) for e in self.group_errors()]
        return {"plans_measured": len(self.tiling_runs), **self.table.summary(),
                "predicted_cycles": round(self.predicted_cycles), "rtl_cycles": self.run.cycles,
                "rtl_group_cycles": self.run.group_cycles, "additivity_error": self.additivity_error,
                "additivity_tolerance": ADDITIVITY_TOLERANCE, "additive": self.additive,
                "max_group_error": max(errors) if errors else 0.0,
                "median_group_error": sorted(errors)[len(errors) // 2] if errors else 0.0,
                "search_seconds": self.search_seconds}


def run_oracle(workload: Workload, measurer: PlanMeasurer, *, max_group: int = DEFAULT_MAX_GROUP,
               extra_runs: Iterable[PlanRun] = ()) -> OracleResult:
    """Measure the tiling plans, choose the best plan over the measured groups, run it.

    Parameters
    ----------
    workload : Workload
    measurer : PlanMeasurer
    max_group : int
    extra_runs : iterable of PlanRun
        Runs already made whose groups may also serve as candidates (their seconds count
        towards the search).
    """
    runs = measurer.measure(tiling_plans(workload, max_group), label=f"oracle {workload.graph.name}")
    extra = list(extra_runs)
    table = CandidateTable()
    table.add_runs(runs + extra)
    started = time.perf_counter()
    plan, predicted = best_plan(workload, table.cycles(), max_group)
    search = time.perf_counter() - started
    plan.validate(workload.graph, workload.hw)
    [final] = measurer.measure([("oracle", plan)], label="oracle plan")
    seconds = sum(run.seconds for run in runs + extra) + search
    return OracleResult(plan, predicted, final, seconds, runs, table)
