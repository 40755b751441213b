"""Whole networks on the RTL: zoo models and random fused graphs equal the golden
simulator bit for bit, on plans with and without depth-first fusion.

The RTL is the only place where a missing semaphore in a fused schedule would show
(the golden simulator executes in dependency order), so the fused plans run here.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dlfusion.compiler.compile import compile_graph
from dlfusion.compiler.errors import CompileError
from dlfusion.compiler.frontend import load_onnx, zoo
from dlfusion.compiler.plan import make_plan, random_plan
from dlfusion.compiler.random_graph import random_graph
from dlfusion.compiler.reference import run_graph
from dlfusion.hw.config import HwConfig
from dlfusion.sim.golden import GoldenSimulator
from dlfusion.sim.rtl import RtlSimulator
from dlfusion.sim.runtime import group_report

pytestmark = pytest.mark.rtl

#: Two 16x16 cores and enough DRAM for ResNet-18's weights.
NET = HwConfig(cores=2, dram_bytes=1 << 24)
QUAD = HwConfig(cores=4, pe_rows=4, pe_cols=4, act_lines=2048, weight_blocks=1024, acc_entries=256,
                param_entries=64, dram_bytes=1 << 20, dram_bytes_per_cycle=4, dram_latency=12,
                watchdog_cycles=4000)


@pytest.fixture(scope="module")
def net_rtl():
    simulator = RtlSimulator(NET)
    simulator.build()
    return simulator


@pytest.fixture(scope="module")
def quad_rtl():
    simulator = RtlSimulator(QUAD)
    simulator.build()
    return simulator


@pytest.fixture(scope="module", params=[("tiny_cnn", 32), ("resnet18", 32)], ids=lambda p: p[0])
def network(request, tmp_path_factory):
    name, size = request.param
    path = tmp_path_factory.mktemp(name) / f"{name}.onnx"
    zoo.export_quantized(name, size, path)
    graph = load_onnx(path, name=name)
    quant = graph.input_quant
    x = np.random.default_rng(3).standard_normal(quant["shape"]).astype(np.float32)
    q = np.clip(np.rint(x / np.float32(quant["scale"])) + quant["zero_point"], 0, 255).astype(np.uint8)
    return graph, q[0]


@pytest.mark.parametrize("plan_kind", ["none-1core", "max-allcores"])
def test_zoo_network_rtl_equals_golden(net_rtl, network, plan_kind):
    graph, x = network
    if plan_kind == "none-1core":
        plan = make_plan(graph, NET, cores=1)
    else:
        plan = make_plan(graph, NET, fusion="max", cores=NET.cores)
        assert any(len(group.nodes) > 1 for group in plan.groups)
    binary = compile_graph(graph, NET, plan)
    golden = GoldenSimulator(NET).run(binary, {"input": x})
    rtl = net_rtl.run(binary, {"input": x})
    assert golden.error is None and rtl.error is None, (golden.error, rtl.error)
    assert np.array_equal(rtl.outputs["output"], golden.outputs["output"])
    assert np.array_equal(golden.outputs["output"], run_graph(graph, x))
    groups = group_report(binary, rtl)
    assert [g["nodes"] for g in groups] == [g.nodes for g in plan.groups]
    assert all(g["cycles"] > 0 for g in groups)
    assert 0 < rtl.cycles - sum(g["cycles"] for g in groups) <= 8     # the END drain after the last barrier


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31 - 1))
def test_random_fused_graphs_rtl_equal_golden(quad_rtl, seed):
    graph = random_graph(seed, lanes=QUAD.lanes, max_layers=5, max_size=12)
    try:   # layers the single-layer lowering cannot tile on this HwConfig are a known gap
        compile_graph(graph, QUAD, make_plan(graph, QUAD))
    except CompileError:
        assume(False)
    x = np.random.default_rng(seed).integers(*graph.tensors[graph.input].qrange, endpoint=True,
                                             size=graph.tensors[graph.input].shape)
    x = x.astype(np.int8 if graph.tensors[graph.input].signed else np.uint8)
    expected = run_graph(graph, x)
    plan = make_plan(graph, QUAD, fusion="max", cores=1 + seed % QUAD.cores) if seed % 2 else \
        random_plan(graph, QUAD, seed)
    binary = compile_graph(graph, QUAD, plan)
    rtl = quad_rtl.run(binary, {"input": x})
    assert rtl.error is None, str(rtl.error)
    assert np.array_equal(rtl.outputs["output"], expected), [g.nodes for g in plan.groups]


def test_zoo_benchmark_rows_and_cache(net_rtl, tmp_path):
    """``dlfusion bench zoo`` on tiny_cnn: the three plans on the RTL, the derived columns,
    and a second run served from the cache (keyed by the compiled binaries)."""
    from dlfusion.bench import zoo_bench
    rows = zoo_bench(NET, tmp_path, models=["tiny_cnn"], workers=2)["rows"]
    assert [(r["fusion"], r["cores"]) for r in rows] == [("none", 1), ("none", 2), ("max", 2)]
    for r in rows:
        assert r["roofline_cycles"] <= r["cycles"]
        assert r["utilization"] == pytest.approx(r["macs"] / (NET.macs_per_cycle * r["cores"] * r["cycles"]))
        assert r["groups"] == len(r["group_cycles"]) and sum(r["group_cycles"]) < r["cycles"]
    assert rows[2]["fused_groups"] >= 1 and rows[1]["cycles"] < rows[0]["cycles"]
    again = zoo_bench(NET, tmp_path, models=["tiny_cnn"], workers=2)["rows"]
    assert [(r["cycles"], r["measure_seconds"]) for r in again] == [(r["cycles"], r["measure_seconds"]) for r in rows]
    table = (tmp_path / "zoo.md").read_text()
    assert f"| {rows[2]['cycles']:,} |" in table and "max fusion, 2 cores" in table
