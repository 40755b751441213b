"""The strategies that run no simulation: their plans validate and compile, each knob is what it says,
dlfusion is no worse than its parts by its own cost model, and it simulates nothing."""

import pytest

from dlfusion.compiler import compile as compile_module
from dlfusion.compiler.compile import compile_graph
from dlfusion.compiler.random_graph import random_graph
from dlfusion.compiler.tune import TuneError
from dlfusion.compiler.tune.costmodel import CostModel
from dlfusion.compiler.tune.features import Workload
from dlfusion.compiler.tune.rule import Rule
from dlfusion.compiler.tune.strategies import (
    fusion_search,
    plan_cores_only,
    plan_dlfusion,
    plan_fusion_only,
    plan_none,
    rule_choices,
)
from dlfusion.hw.config import HwConfig
from dlfusion.sim import golden, rtl

QUAD = HwConfig(cores=4, pe_rows=4, pe_cols=4, act_lines=2048, weight_blocks=1024, acc_entries=256,
                param_entries=64, dram_bytes=1 << 20, dram_bytes_per_cycle=4, dram_latency=12,
                watchdog_cycles=4000)
#: Small layers on one core; large ones on four, split by channels when they have many output channels.
RULE = Rule(QUAD.hash, {"any": {
    "feature": "log2_macs", "threshold": 13.0,
    "below": {"choice": [1, "rows"], "layers": 1, "regret": 0.0},
    "above": {"feature": "log2_out_channels", "threshold": 3.5,
              "below": {"choice": [4, "rows"], "layers": 1, "regret": 0.0},
              "above": {"choice": [2, "channels"], "layers": 1, "regret": 0.0}}}})
COST = CostModel(QUAD.hash, {"bound": 1.0, "overlap": 0.2, "ppu": 0.1, "prologue": 1.0, "latency": 1.0,
                             "issue": 1.0, "constant": 200.0})


def _predicted(workload, plan):
    return sum(COST.predict(workload.features(tuple(g.nodes), g.cores, g.split), QUAD) for g in plan.groups)


@pytest.mark.parametrize("seed", range(6))
def test_every_strategy_plan_validates_and_compiles(seed):
    graph = random_graph(seed + 100, lanes=QUAD.lanes, max_layers=9, max_size=16)
    workload = Workload(graph, QUAD)
    choices = rule_choices(workload, RULE)
    none = plan_none(workload)
    cores_only = plan_cores_only(workload, RULE)
    fusion_only = plan_fusion_only(workload, COST)
    dlfusion, info = plan_dlfusion(workload, RULE, COST)
    for plan in (none, cores_only, fusion_only, dlfusion):
        plan.validate(graph, QUAD)
        compile_graph(graph, QUAD, plan)
        assert plan.hw == QUAD.hash and plan.model == graph.name
    assert [(g.nodes, g.cores, g.split) for g in none.groups] == [([n], 1, "rows") for n in workload.names]
    assert [(g.nodes, (g.cores, g.split)) for g in cores_only.groups] == [([n], c) for n, c in
                                                                         zip(workload.names, choices, strict=True)]
    assert all(g.cores == 1 for g in fusion_only.groups)
    # dlfusion: single layers keep the rule's choice; fusion groups are split by rows (over compatible layers
    # only, when asked).
    choice = dict(zip(workload.names, choices, strict=True))
    compatible, _ = plan_dlfusion(workload, RULE, COST, compatible_only=True)
    for plan in (dlfusion, compatible):
        for group in plan.groups:
            if len(group.nodes) == 1:
                assert (group.cores, group.split) == choice[group.nodes[0]]
            else:
                assert group.split == "rows" and len(group.nodes) <= 4
    assert all(choice[n][0] == 1 or choice[n][1] == "rows" for g in compatible.groups if len(g.nodes) > 1
               for n in g.nodes)
    assert info.predicted_cycles <= _predicted(workload, compatible) + 1e-6
    # By its own cost model dlfusion is no worse than either knob alone: both plans are in its search space
    # (fusion-only's when the rule chooses one core everywhere, cores-only's always).
    assert info.predicted_cycles == pytest.approx(_predicted(workload, dlfusion))
    assert info.predicted_cycles <= _predicted(workload, cores_only) + 1e-6
    assert _predicted(workload, fusion_only) <= _predicted(workload, none) + 1e-6


def test_fusion_pays_only_where_the_cost_model_says_so():
    graph = random_graph(7, lanes=QUAD.lanes, max_layers=8, max_size=16)
    workload = Workload(graph, QUAD)
    ones = [(1, "rows")] * len(workload.names)
    # A large per-group constant makes fusion pay wherever it fits; a huge prologue cost forbids it.
    cheap = CostModel(QUAD.hash, dict(COST.coefficients, constant=1e6))
    fused, _ = fusion_search(workload, cheap, ones, [1])
    assert any(len(g.nodes) > 1 for g in fused.groups)
    dear = CostModel(QUAD.hash, dict(COST.coefficients, prologue=1e6, constant=0.0))
    separate, _ = fusion_search(workload, dear, ones, [1])
    assert all(len(g.nodes) == 1 or workload.features(tuple(g.nodes), 1).prologue_lines == 0
               for g in separate.groups)


def test_dlfusion_runs_no_simulation_and_compiles_nothing(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the dlfusion strategy must not simulate or compile")
    monkeypatch.setattr(rtl.RtlSimulator, "run", forbidden)
    monkeypatch.setattr(golden.GoldenSimulator, "run", forbidden)
    monkeypatch.setattr(compile_module, "compile_graph", forbidden)
    graph = random_graph(9, lanes=QUAD.lanes, max_layers=10, max_size=16)
    plan, info = plan_dlfusion(Workload(graph, QUAD), RULE, COST)
    plan.validate(graph, QUAD)
    assert info.candidates >= len(graph.nodes)


def test_a_rule_for_more_cores_than_the_config_is_refused():
    rule = Rule(QUAD.hash, {"any": {"choice": [8, "rows"], "layers": 1, "regret": 0.0}})
    graph = random_graph(1, lanes=QUAD.lanes, max_layers=4, max_size=8)
    with pytest.raises(TuneError, match="chose 8 cores"):
        plan_cores_only(Workload(graph, QUAD), rule)
