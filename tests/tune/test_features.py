"""Static group features: the DMA lines and instructions counted without lowering equal those of the
compiled program, group by group."""

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dlfusion.compiler.compile import compile_graph
from dlfusion.compiler.errors import CompileError
from dlfusion.compiler.plan import Group, Plan, make_plan, random_plan
from dlfusion.compiler.random_graph import random_graph
from dlfusion.compiler.tune import TuneError
from dlfusion.compiler.tune.features import Workload
from dlfusion.hw.config import HwConfig
from dlfusion.sim.traffic import dram_traffic_by_barrier

QUAD = HwConfig(cores=4, pe_rows=4, pe_cols=4, act_lines=2048, weight_blocks=1024, acc_entries=256,
                param_entries=64, dram_bytes=1 << 20, dram_bytes_per_cycle=4, dram_latency=12,
                watchdog_cycles=4000)
#: Instructions a stream starts with (the initial "two free slots" credits), in the first group's section.
STREAM_PROLOGUE = 6


def _check_plan(graph, hw, plan):
    workload = Workload(graph, hw)
    binary = compile_graph(graph, hw, plan)
    sections = dram_traffic_by_barrier(binary)
    program_cores = max(group.cores for group in plan.groups)
    assert len(sections) == len(plan.groups) + 1
    for index, (group, section) in enumerate(zip(plan.groups, sections, strict=False)):
        features = workload.features(tuple(group.nodes), group.cores, group.split)
        where = f"group {index} {group.nodes} on {group.cores} cores by {group.split}"
        assert features.load_lines * hw.line_bytes == section["load_bytes"], where
        assert features.store_lines * hw.line_bytes == section["store_bytes"], where
        # Cores of the program without work in this group execute only its barrier.
        expected = features.instructions + (program_cores - features.cores)
        expected += STREAM_PROLOGUE * program_cores if index == 0 else 0
        assert 32 * expected == section["fetch_bytes"], where
        assert features.macs == sum(node.macs for node in graph.nodes if node.name in group.nodes)
        assert features.max_core_lines <= features.load_lines + features.store_lines
        assert features.prologue_lines == 0 or len(group.nodes) > 1


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), plan_seed=st.integers(0, 1000), kind=st.sampled_from(["random", "max"]))
def test_counts_equal_the_compiled_program(seed, plan_seed, kind):
    graph = random_graph(seed, lanes=QUAD.lanes, max_layers=8, max_size=14)
    if kind == "random":
        plan = random_plan(graph, QUAD, plan_seed)
    else:
        plan = make_plan(graph, QUAD, fusion="max", cores=1 + plan_seed % QUAD.cores)
    try:
        compile_graph(graph, QUAD, plan)
    except CompileError as error:       # a program longer than QUAD's 1 MiB of DRAM
        assume("DRAM is full" not in str(error))
        raise
    _check_plan(graph, QUAD, plan)


@pytest.mark.parametrize("split", ["rows", "channels"])
@pytest.mark.parametrize("cores", [1, 2, 4])
def test_single_layers_on_the_default_config(cores, split):
    hw = HwConfig()
    graph = random_graph(7, lanes=hw.lanes, max_layers=6, max_size=20)
    _check_plan(graph, hw, make_plan(graph, hw, cores=cores, split=split))


def test_more_cores_divide_the_work_and_multiply_the_weights():
    graph = random_graph(11, lanes=QUAD.lanes, max_layers=6, max_size=16)
    workload = Workload(graph, QUAD)
    conv = next(n for n in graph.nodes if n.op.value == "conv" and graph.tensors[n.output].shape[1] >= 4)
    one = workload.features((conv.name,), 1)
    rows = workload.features((conv.name,), 4, "rows")
    channels = workload.features((conv.name,), 4, "channels")
    assert rows.pe_cycles < one.pe_cycles and rows.cores > 1
    weight_lines = conv.attrs.weight.size // QUAD.lanes
    # Split by rows every core loads all the weights; by channels every core loads all the input.
    assert rows.load_lines - one.load_lines >= (rows.cores - 1) * weight_lines * 0.9
    assert channels.store_lines == one.store_lines
    assert workload.features((conv.name,), 1, "channels") == one      # one core has no split


def test_bad_groups_are_refused():
    graph = random_graph(3, lanes=QUAD.lanes, max_layers=6, max_size=12)
    workload = Workload(graph, QUAD)
    first, second = workload.names[:2]
    with pytest.raises(TuneError, match="cannot be split by 'channels'"):
        workload.features((first, second), 2, "channels")
    tiny = HwConfig(cores=2, pe_rows=4, pe_cols=4, act_lines=64, weight_blocks=64, acc_entries=64,
                    param_entries=16, dram_bytes=1 << 20, dram_bytes_per_cycle=4)
    big = random_graph(5, lanes=4, max_layers=6, max_size=16)
    names = tuple(n.name for n in big.nodes)
    small = Workload(big, tiny)
    unfit = next((names[i:i + 2] for i in range(len(names) - 1) if small.fits(names[i:i + 2], 2)), None)
    assert unfit is not None
    with pytest.raises(TuneError):
        small.features(unfit, 2)


def test_a_plan_of_single_layers_on_mixed_cores():
    graph = random_graph(21, lanes=QUAD.lanes, max_layers=7, max_size=12)
    rng = np.random.default_rng(0)
    groups = [Group([node.name], int(rng.choice([1, 2, 3, 4])), str(rng.choice(["rows", "channels"])))
              for node in graph.nodes]
    _check_plan(graph, QUAD, Plan(graph.name, QUAD.hash, groups))


CHUNKY = HwConfig(cores=2, weight_blocks=32, act_lines=4096, acc_entries=256, param_entries=64)
#: Lanes of 4 and parameters of 4 output blocks at a time: chunked layers in several block ranges.
CHUNKY_FEW_PARAMS = HwConfig(cores=2, pe_rows=4, pe_cols=4, weight_blocks=32, act_lines=4096, acc_entries=256,
                             param_entries=8, dram_bytes=1 << 22, dram_bytes_per_cycle=4)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), cores=st.integers(1, 2), split=st.sampled_from(["rows", "channels"]),
       hw=st.sampled_from([CHUNKY, CHUNKY_FEW_PARAMS]))
def test_counts_of_layers_lowered_in_input_channel_chunks(seed, cores, split, hw):
    """Convolutions whose weights per output block exceed half the weight scratchpad: counts equal the
    program's, and the network still equals the numpy reference on the golden simulator."""
    from hypothesis import assume

    from dlfusion.compiler.errors import CompileError
    from dlfusion.compiler.ir import Op
    from dlfusion.compiler.lower.common import layer_of
    from dlfusion.compiler.lower.tiling import chunk_blocks
    from dlfusion.compiler.reference import run_graph
    from dlfusion.sim.golden import GoldenSimulator
    graph = random_graph(seed, lanes=hw.lanes, max_layers=5, max_size=10)
    plan = make_plan(graph, hw, cores=cores, split=split)
    try:
        binary = compile_graph(graph, hw, plan)
        chunked = [n for n in graph.nodes if n.op in (Op.CONV, Op.FC)
                   and chunk_blocks(hw, layer_of(graph, n)) is not None]
    except CompileError:
        assume(False)
    assume(chunked)
    _check_plan(graph, hw, plan)
    t = graph.tensors[graph.input]
    lo, hi = t.qrange
    x = np.random.default_rng(seed).integers(lo, hi + 1, size=t.shape).astype(np.int8 if t.signed else np.uint8)
    result = GoldenSimulator(hw).run(binary, {"input": x})
    assert result.error is None, str(result.error)
    assert np.array_equal(result.outputs["output"], run_graph(graph, x))
