"""The oracle: tiling plans cover its space, the dynamic program finds the minimum-sum plan (checked by
brute force), and on the RTL a plan's cycles are the sum of its measured groups within the bound it reports."""

import itertools

import numpy as np
import pytest

from dlfusion.compiler.compile import compile_graph
from dlfusion.compiler.random_graph import random_graph
from dlfusion.compiler.tune import TuneError
from dlfusion.compiler.tune.cache import MeasurementCache
from dlfusion.compiler.tune.executor import LocalExecutor
from dlfusion.compiler.tune.features import Workload
from dlfusion.compiler.tune.oracle import ADDITIVITY_TOLERANCE, CandidateTable, best_plan, run_oracle, tiling_plans
from dlfusion.compiler.tune.planrun import PlanMeasurer, PlanRun
from dlfusion.hw.config import HwConfig

QUAD = HwConfig(cores=4, pe_rows=4, pe_cols=4, act_lines=2048, weight_blocks=1024, acc_entries=256,
                param_entries=64, dram_bytes=1 << 20, dram_bytes_per_cycle=4, dram_latency=12,
                watchdog_cycles=4000)


def _space(workload, max_group):
    """Every candidate of the oracle's space."""
    names = workload.names
    for start in range(len(names)):
        for length in range(1, max_group + 1):
            nodes = tuple(names[start:start + length])
            if len(nodes) < length:
                break
            for cores in workload.core_counts():
                if workload.fits(nodes, cores) is None:
                    for split in workload.splits(nodes, cores):
                        yield nodes, cores, split


def _brute_force(workload, costs):
    """The least total cost over every composition of the nodes into candidate groups."""
    count = len(workload.names)
    best = float("inf")
    for cuts in itertools.product([False, True], repeat=count - 1):
        bounds = [0] + [i + 1 for i, cut in enumerate(cuts) if cut] + [count]
        total = 0.0
        for a, b in itertools.pairwise(bounds):
            nodes = tuple(workload.names[a:b])
            options = [cost for (n, _, _), cost in costs.items() if n == nodes]
            if not options:
                total = float("inf")
                break
            total += min(options)
        best = min(best, total)
    return best


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_the_dynamic_program_finds_the_minimum_sum_plan(seed):
    graph = random_graph(seed + 40, lanes=QUAD.lanes, max_layers=7, max_size=12)
    workload = Workload(graph, QUAD)
    rng = np.random.default_rng(seed)
    costs = {candidate: float(rng.integers(100, 10_000)) for candidate in _space(workload, 4)}
    plan, total = best_plan(workload, costs)
    plan.validate(graph, QUAD)
    assert total == sum(costs[(tuple(g.nodes), g.cores, g.split)] for g in plan.groups)
    assert total == _brute_force(workload, costs)
    # Without the groups of the best plan it finds the next best, still the brute-force minimum.
    for group in plan.groups:
        del costs[(tuple(group.nodes), group.cores, group.split)]
    if all(((name,), 1, "rows") in costs for name in workload.names):
        _, second = best_plan(workload, costs)
        assert second == _brute_force(workload, costs) and second >= total


def test_the_dynamic_program_refuses_gaps_and_strangers():
    graph = random_graph(5, lanes=QUAD.lanes, max_layers=5, max_size=10)
    workload = Workload(graph, QUAD)
    names = workload.names
    with pytest.raises(TuneError, match="do not cover"):
        best_plan(workload, {((name,), 1, "rows"): 1.0 for name in names[:-1]})
    with pytest.raises(TuneError, match="not a contiguous run"):
        best_plan(workload, {((names[0], names[2]), 1, "rows"): 1.0})


def test_tiling_plans_cover_the_space():
    graph = random_graph(8, lanes=QUAD.lanes, max_layers=8, max_size=14)
    workload = Workload(graph, QUAD)
    plans = tiling_plans(workload, 3)
    assert plans[0][0] == "L1-o0-c1-rows" and all(len(g.nodes) == 1 and g.cores == 1 for g in plans[0][1].groups)
    covered = set()
    for _, plan in plans:
        plan.validate(graph, QUAD)
        covered |= {(tuple(g.nodes), g.cores, "rows" if g.cores == 1 else g.split) for g in plan.groups}
    space = set(_space(workload, 3))
    assert space <= covered
    assert all(len(nodes) <= 3 for nodes, _, _ in covered)
    assert len(plans) == 1 + 2 * 2 + 3 * (2 + 3)          # L1: c1 + c2, c4 by two splits; L2, L3: offsets x cores


def test_candidate_table_keeps_the_median_and_the_spread():
    table = CandidateTable()
    group = {"nodes": ["a"], "cores": 2, "split": "rows"}
    table.add_runs([PlanRun(f"r{i}", None, 0, [dict(group, cycles=c)]) for i, c in enumerate([100, 120, 90])])
    key = (("a",), 2, "rows")
    assert table.cycles() == {key: 100.0}
    assert table.spread(key) == pytest.approx(0.3)
    assert table.summary()["repeated"] == 1 and table.summary()["measurements"] == 3


@pytest.mark.rtl
def test_the_oracle_on_the_rtl(tmp_path):
    graph = random_graph(2, lanes=QUAD.lanes, max_layers=6, max_size=12)
    workload = Workload(graph, QUAD)
    with LocalExecutor(2) as executor:
        measurer = PlanMeasurer(graph, QUAD, executor=executor, cache=MeasurementCache(tmp_path / "cache"))
        result = run_oracle(workload, measurer, max_group=3)
    costs = result.table.cycles()
    # The chosen plan is the minimum-sum plan over the measured candidates ...
    assert result.predicted_cycles == _brute_force(workload, costs)
    assert result.predicted_cycles == sum(costs[(tuple(g.nodes), g.cores, g.split)] for g in result.plan.groups)
    # ... no worse than any tiling plan measured ...
    for run in result.tiling_runs:
        assert result.predicted_cycles <= sum(costs[(tuple(g["nodes"]), g["cores"], "rows" if g["cores"] == 1
                                                     else g["split"])] for g in run.groups)
    assert result.run.cycles <= result.tiling_runs[0].cycles        # the none baseline is a tiling plan
    # ... and run as a whole on the RTL its groups add up to the prediction within the reported bound.
    summary = result.summary()
    assert summary["additivity_tolerance"] == ADDITIVITY_TOLERANCE
    assert abs(result.additivity_error) == pytest.approx(abs(result.run.group_cycles - result.predicted_cycles)
                                                         / result.run.group_cycles)
    assert summary["additive"] and abs(result.additivity_error) <= ADDITIVITY_TOLERANCE
    assert result.run.cycles - result.run.group_cycles < 100           # only the END drain is outside groups
    assert result.search_seconds >= sum(run.seconds for run in result.tiling_runs) > 0
    compile_graph(graph, QUAD, result.plan)
