"""Depth-first fusion on random graphs: every plan (no fusion, maximum fusion, random
fused plans on random core counts) gives the numpy reference's output bit for bit on
the golden simulator; structural and capacity limits are clear errors."""

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dlfusion.compiler.compile import compile_graph
from dlfusion.compiler.errors import CompileError
from dlfusion.compiler.ir import Op
from dlfusion.compiler.lower.fused import FusedGroup
from dlfusion.compiler.plan import Group, Plan, group_fits, make_plan, random_plan
from dlfusion.compiler.random_graph import random_graph
from dlfusion.compiler.reference import run_graph
from dlfusion.hw.config import HwConfig
from dlfusion.sim.golden import GoldenSimulator

HW = HwConfig()
SMALL = HwConfig(cores=2, act_lines=1024, weight_blocks=512, acc_entries=256)


def _input(graph, seed):
    t = graph.tensors[graph.input]
    lo, hi = t.qrange
    return np.random.default_rng(seed).integers(lo, hi + 1, size=t.shape).astype(np.int8 if t.signed else np.uint8)


def _golden(graph, hw, plan, x):
    result = GoldenSimulator(hw).run(compile_graph(graph, hw, plan), {"input": x})
    assert result.error is None, str(result.error)
    return result


def _assert_plans_equal_reference(graph, hw, seed, *, unfused):
    """The golden simulator equals the numpy reference on maximum fusion over ``1 + seed % cores``
    cores, a random plan and, if ``unfused``, the default plan."""
    try:   # layers the single-layer lowering cannot tile on this HwConfig are a known gap, not a fusion case
        compile_graph(graph, hw, make_plan(graph, hw))
    except CompileError:
        assume(False)
    x = _input(graph, seed)
    expected = run_graph(graph, x)
    cores = 1 + seed % hw.cores
    plans = [make_plan(graph, hw, fusion="max", cores=cores), random_plan(graph, hw, seed)]
    for plan in ([make_plan(graph, hw)] if unfused else []) + plans:
        result = _golden(graph, hw, plan, x)
        assert np.array_equal(result.outputs["output"], expected), [g.nodes for g in plan.groups]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), hw=st.sampled_from([HW, SMALL]))
def test_fused_plans_equal_reference(seed, hw):
    graph = random_graph(seed, lanes=hw.lanes)
    _assert_plans_equal_reference(graph, hw, seed, unfused=False)


def test_maximum_fusion_fuses_and_saves_dram_traffic():
    # A residual network on a small image fuses into few groups and moves fewer DRAM bytes.
    from dlfusion.sim.traffic import dram_traffic
    graph = next(g for g in (random_graph(s, max_layers=6) for s in range(200))
                 if sum(n.op is Op.ADD for n in g.nodes) >= 1 and len(g.nodes) >= 5)
    fused = make_plan(graph, HW, fusion="max")
    assert len(fused.groups) < len(graph.nodes)
    x = _input(graph, 0)
    none_binary = compile_graph(graph, HW, make_plan(graph, HW))
    max_binary = compile_graph(graph, HW, fused)
    assert dram_traffic(max_binary)["dma_bytes"] < dram_traffic(none_binary)["dma_bytes"]
    assert np.array_equal(_golden(graph, HW, fused, x).outputs["output"], run_graph(graph, x))


def _chain(seed=3):
    return next(g for g in (random_graph(s) for s in range(seed, 500))
                if sum(n.op is Op.CONV for n in g.nodes) >= 3)


def test_capacity_shortfall_names_group_and_amount():
    graph = _chain()
    names = [n.name for n in graph.nodes]
    tiny = HwConfig(act_lines=256, weight_blocks=64)
    reasons = [group_fits(graph, tiny, names[:k], 1) for k in range(2, len(names) + 1)]
    failing = [r for r in reasons if r is not None]
    assert failing, "expected some group not to fit a tiny scratchpad"
    assert all("does not fit on chip" in r and "short by" in r for r in failing if "fused" not in r)
    plan = Plan(graph.name, tiny.hash, [Group(names, 1, "rows")])
    with pytest.raises(CompileError, match=r"group 0 \(.*\) (does not fit on chip|cannot be fused)"):
        compile_graph(graph, tiny, plan)


def test_structure_errors():
    graph = next(g for g in (random_graph(s) for s in range(500)) if any(n.op is Op.ADD for n in g.nodes))
    add = next(i for i, n in enumerate(graph.nodes) if n.op is Op.ADD)
    producer_of_a = next(i for i, n in enumerate(graph.nodes) if n.output == graph.nodes[add].inputs[0])
    if producer_of_a + 1 < add:
        # a group that ends before the add but leaves two tensors live
        names = [n.name for n in graph.nodes[producer_of_a - 1 if producer_of_a else 0:add]]
        reason = group_fits(graph, HW, names, 1)
        assert reason is None or "cannot be fused" in reason
    names = [n.name for n in graph.nodes]
    groups = [Group(names[:2], 2, "channels")] + [Group([n], 1) for n in names[2:]]
    with pytest.raises(CompileError, match="split across cores by rows only"):
        Plan(graph.name, HW.hash, groups).validate(graph, HW)
    with pytest.raises(CompileError, match="at least two nodes"):
        FusedGroup(graph, HW, names[:1])
    with pytest.raises(CompileError, match="unknown fusion 'most'; accepted: none, max"):
        make_plan(graph, HW, fusion="most")


def test_escaping_intermediate_is_rejected():
    graph = next(g for g in (random_graph(s) for s in range(500))
                 if any(n.op is Op.ADD and n.inputs[1] != g.input and
                        g.producer(n.inputs[1]) is not None for n in g.nodes))
    add = next(n for n in graph.nodes if n.op is Op.ADD and graph.producer(n.inputs[1]) is not None)
    shortcut = graph.producer(add.inputs[1])
    names = [n.name for n in graph.nodes]
    end = names.index(add.name)
    start = names.index(shortcut.name)
    # the shortcut's output is used by the add outside [start, end)
    if end - start >= 2:
        reason = group_fits(graph, HW, names[start:end], 1)
        assert reason is not None and "may leave the group" in reason


def test_same_plan_compiles_to_identical_bytes():
    graph = _chain()
    plan = random_plan(graph, HW, 5)
    assert compile_graph(graph, HW, plan).to_bytes() == compile_graph(graph, HW, plan).to_bytes()


def test_halo_rows_are_computed_once_per_core():
    # With intermediates kept on chip, a fused chain does no more MACs than the unfused one
    # on one core (halo rows are kept in the row buffers, not recomputed).
    from dlfusion.hw.binary import Binary  # noqa: F401
    graph = _chain()
    plan = make_plan(graph, HW, fusion="max", cores=1)
    assert any(len(g.nodes) > 1 for g in plan.groups)
    x = _input(graph, 1)
    fused = _golden(graph, HW, plan, x)
    plain = _golden(graph, HW, make_plan(graph, HW, cores=1), x)
    assert fused.counters[0]["pe_busy"] <= plain.counters[0]["pe_busy"]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), hw=st.sampled_from([HW, SMALL]))
def test_random_graphs_of_the_new_ops_equal_reference_on_every_plan(seed, hw):
    """Grouped convolutions, channel slices and shuffles, concats of any channel counts and nearest
    upsampling in random graphs: no fusion on one core, maximum fusion and random plans."""
    graph = random_graph(seed, lanes=hw.lanes, new_ops=True)
    _assert_plans_equal_reference(graph, hw, seed, unfused=True)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), hw=st.sampled_from([HW, SMALL]))
def test_random_graphs_with_lookup_tables_equal_reference_on_every_plan(seed, hw):
    """Random tables folded into convolutions, fully connected layers, average pools and adds, and lookups
    of their own, in fused groups (one table slot per layer) and alone."""
    graph = random_graph(seed, lanes=hw.lanes, new_ops=True, tables=True)
    _assert_plans_equal_reference(graph, hw, seed, unfused=True)


def test_a_fusion_group_needs_a_table_slot_per_table():
    few = HwConfig(lut_tables=2)
    for seed in range(2000):
        graph = random_graph(seed, tables=True, max_layers=8)
        tabled = [n for n in graph.nodes if n.attrs.table is not None and n.op is not Op.LOOKUP]
        if len(tabled) < 3:
            continue
        names = [n.name for n in graph.nodes[:graph.nodes.index(tabled[2]) + 1]]
        try:
            FusedGroup(graph, HW, names).layout(1)
        except CompileError:
            continue        # not fusable for another reason
        with pytest.raises(CompileError, match="need 3 lookup tables, lut_tables = 2"):
            FusedGroup(graph, few, names).layout(1)
        return
    pytest.fail("no random graph with a fusable run of three tables")
