"""Plans: the Split and Fusion enums, JSON round trips, validation messages, the standard and random plans."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlfusion.compiler.errors import CompileError
from dlfusion.compiler.plan import (
    FUSIONS,
    SPLITS,
    Fusion,
    Group,
    Plan,
    Split,
    group_fits,
    make_plan,
    random_plan,
)
from dlfusion.compiler.random_graph import random_graph
from dlfusion.hw.config import HwConfig

QUAD = HwConfig(cores=4, pe_rows=4, pe_cols=4, act_lines=2048, weight_blocks=1024, acc_entries=256,
                param_entries=64, dram_bytes=1 << 22, dram_bytes_per_cycle=4)


def test_split_and_fusion_are_enums_with_their_json_names():
    assert SPLITS == ("rows", "channels") and FUSIONS == ("none", "max")
    assert Group(["a"], 2, "channels").split is Split.CHANNELS
    assert Fusion("max") is Fusion.MAX and str(Split.ROWS) == "rows"


def test_json_round_trip_keeps_the_enums(tmp_path):
    graph = random_graph(3, lanes=4, max_layers=6, max_size=12)
    plan = make_plan(graph, QUAD, fusion="none", cores=3, split="channels")
    plan.write(tmp_path / "plan.json")
    data = json.loads((tmp_path / "plan.json").read_text())
    assert data["format"] == "dlfusion-plan/1" and {g["split"] for g in data["groups"]} == {"channels"}
    again = Plan.read(tmp_path / "plan.json")
    assert again == plan and all(group.split is Split.CHANNELS for group in again.groups)


@pytest.mark.parametrize("change, message", [
    (lambda p: setattr(p.groups[0], "split", "diagonal"), r"plan group 0: split must be one of rows, channels, "
                                                          r"not 'diagonal'"),
    (lambda p: setattr(p.groups[0], "cores", 5), r"plan group 0: cores must be between 1 and 4, not 5"),
    (lambda p: p.groups.pop(), r"plan groups must cover the graph's nodes once, in order \(missing \["),
    (lambda p: p.groups.insert(0, Group([])), r"plan group 0 is empty"),
])
def test_validation_names_what_is_wrong(change, message):
    graph = random_graph(5, lanes=4, max_layers=5, max_size=12)
    plan = make_plan(graph, QUAD)
    change(plan)
    with pytest.raises(CompileError, match=message):
        plan.validate(graph, QUAD)


def test_a_fusion_group_split_by_channels_is_refused():
    graph = random_graph(8, lanes=4, max_layers=6, max_size=14)
    plan = make_plan(graph, QUAD, fusion="max", cores=2)
    fused = next(index for index, group in enumerate(plan.groups) if len(group.nodes) > 1)
    plan.groups[fused].split = Split.CHANNELS
    with pytest.raises(CompileError, match=rf"plan group {fused} .*split across cores by rows only"):
        plan.validate(graph, QUAD)


def test_unknown_fusion_is_refused():
    graph = random_graph(1, lanes=4, max_layers=3, max_size=10)
    with pytest.raises(CompileError, match="unknown fusion 'deep'; accepted: none, max"):
        make_plan(graph, QUAD, fusion="deep")


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), cores=st.integers(1, 4))
def test_standard_and_random_plans_are_valid_and_fused_groups_fit(seed, cores):
    graph = random_graph(seed, lanes=4, max_layers=8, max_size=14)
    names = [node.name for node in graph.nodes]
    for plan in (make_plan(graph, QUAD, fusion="max", cores=cores), random_plan(graph, QUAD, seed)):
        plan.validate(graph, QUAD)
        assert [n for group in plan.groups for n in group.nodes] == names
        for group in plan.groups:
            if len(group.nodes) > 1:
                assert group.split is Split.ROWS and group_fits(graph, QUAD, group.nodes, group.cores) is None
    output_of = {node.name: node.output for node in graph.nodes}
    for group in make_plan(graph, QUAD, fusion="max", cores=cores).groups:
        if len(group.nodes) > 1:      # max fusion never fuses into a group with fewer output rows than cores
            assert graph.tensors[output_of[group.nodes[-1]]].shape[1] >= cores
