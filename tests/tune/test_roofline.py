"""The roofline is a lower bound: on random graphs and plans, no compiled program moves
fewer DMA bytes than ``min_dram_bytes`` and the golden simulator never counts fewer
cycles than ``roofline``."""

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dlfusion.compiler.compile import compile_graph
from dlfusion.compiler.errors import CompileError
from dlfusion.compiler.plan import make_plan, random_plan
from dlfusion.compiler.random_graph import random_graph
from dlfusion.compiler.tune.roofline import min_dram_bytes, roofline
from dlfusion.hw.config import HwConfig
from dlfusion.sim.golden import GoldenSimulator
from dlfusion.sim.traffic import dram_traffic

HW = HwConfig(cores=2, act_lines=1024, weight_blocks=512, acc_entries=256)


def test_min_dram_bytes_counts_weights_parameters_and_io():
    graph = random_graph(3, lanes=HW.lanes)
    expected = np.prod(graph.tensors[graph.input].shape) + np.prod(graph.tensors[graph.output].shape)
    for node in graph.nodes:
        if node.attrs.weight is not None:   # int8 weights, int32 bias and float32 multiplier per output channel
            expected += node.attrs.weight.size + 8 * graph.tensors[node.output].shape[0]
        elif isinstance(node.attrs.multiplier, np.ndarray):
            expected += node.attrs.multiplier.nbytes
    assert min_dram_bytes(graph) == expected
    bound = roofline(graph, HW, cores=1)
    assert bound["compute_cycles"] == -(-graph.macs // HW.macs_per_cycle)
    assert bound["memory_cycles"] == -(-expected // HW.dram_bytes_per_cycle)
    assert bound["cycles"] == max(bound["compute_cycles"], bound["memory_cycles"])
    assert roofline(graph, HW)["compute_cycles"] == -(-graph.macs // (HW.macs_per_cycle * HW.cores))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1))
def test_no_plan_beats_the_roofline(seed):
    graph = random_graph(seed, lanes=HW.lanes)
    try:
        plans = [make_plan(graph, HW), make_plan(graph, HW, fusion="max", cores=HW.cores), random_plan(graph, HW, seed)]
        binaries = [compile_graph(graph, HW, plan) for plan in plans]
    except CompileError:
        assume(False)
    lo, hi = graph.tensors[graph.input].qrange
    x = np.random.default_rng(seed).integers(lo, hi + 1, size=graph.tensors[graph.input].shape)
    x = x.astype(np.int8 if graph.tensors[graph.input].signed else np.uint8)
    for plan, binary in zip(plans, binaries, strict=True):
        assert dram_traffic(binary)["dma_bytes"] >= min_dram_bytes(graph)
        cores = max(group.cores for group in plan.groups)
        result = GoldenSimulator(HW).run(binary, {"input": x})
        assert result.error is None
        assert result.cycles >= roofline(graph, HW, cores)["cycles"], [(g.nodes, g.cores) for g in plan.groups]


@pytest.mark.parametrize("cores", [0, 3])
def test_rejects_core_counts_outside_the_config(cores):
    with pytest.raises(ValueError, match="cores"):
        roofline(random_graph(1, lanes=HW.lanes), HW, cores)
