"""Networks of the new operators on the RTL, equal to the golden simulator and the numpy reference bit for
bit (reusing the Verilator build of ``test_rtl_networks``' two-core configuration): ShuffleNetV2 1.0x at 32 px
(channel slices, concats of 58-channel halves realigned by selections, channel shuffles: block-sparse selection
convolutions that skip their all-zero weight blocks, as grouped convolutions do; ReduceMean) fused on both cores;
EfficientNet-B0 at 32 px (lookup tables in REQUANT and in fusion groups, squeeze-and-excitation channel scales)
unfused on one core and fused on two; the yolo_tiny detector at 32 px on all three of its outputs."""

import numpy as np
import pytest

from dlfusion.cli.run import quantize_input
from dlfusion.compiler.compile import compile_graph
from dlfusion.compiler.frontend import load_onnx, zoo
from dlfusion.compiler.ir import Op
from dlfusion.compiler.plan import make_plan, random_plan
from dlfusion.compiler.reference import run_graph, run_graph_outputs
from dlfusion.hw.config import HwConfig
from dlfusion.sim.golden import GoldenSimulator
from dlfusion.sim.rtl import RtlSimulator

pytestmark = pytest.mark.rtl

#: The configuration of tests/sim/test_rtl_networks.py (same HwConfig hash: the same Verilator build).
NET = HwConfig(cores=2, dram_bytes=1 << 24)


def test_shufflenet_with_channel_moves_rtl_equals_golden(tmp_path):
    path = zoo.export_quantized("shufflenet_v2_x1_0", 32, tmp_path / "shufflenet.onnx", quant_format="qdq")
    graph = load_onnx(path, name="shufflenet_v2_x1_0")
    assert sum(node.attrs.selection for node in graph.nodes) > 20
    x = np.random.default_rng(5).standard_normal(graph.input_quant["shape"]).astype(np.float32)
    q = quantize_input(x, graph.input_quant)[0]
    plan = make_plan(graph, NET, fusion="max", cores=NET.cores)
    selections = {node.name for node in graph.nodes if node.attrs.selection}
    assert any(len(group.nodes) > 1 and selections & set(group.nodes) for group in plan.groups)
    binary = compile_graph(graph, NET, plan)
    simulator = RtlSimulator(NET)
    simulator.build()
    rtl = simulator.run(binary, {"input": q})
    golden = GoldenSimulator(NET).run(binary, {"input": q})
    assert golden.error is None and rtl.error is None, (golden.error, rtl.error)
    assert np.array_equal(rtl.outputs["output"], golden.outputs["output"])
    assert np.array_equal(golden.outputs["output"], run_graph(graph, q))


def _rtl_equals_golden_and_reference(graph, plans, seed):
    """Every output of the RTL == the golden simulator's == the numpy reference's, on each plan; the cycles."""
    x = np.random.default_rng(seed).standard_normal(graph.input_quant["shape"]).astype(np.float32)
    q = quantize_input(x, graph.input_quant)[0]
    expected = run_graph_outputs(graph, q)
    simulator = RtlSimulator(NET)
    simulator.build()
    cycles = {}
    for kind, plan in plans.items():
        binary = compile_graph(graph, NET, plan)
        rtl = simulator.run(binary, {"input": q})
        golden = GoldenSimulator(NET).run(binary, {"input": q})
        assert golden.error is None and rtl.error is None, (kind, golden.error, rtl.error)
        assert [t.name for t in binary.outputs] == ["output", *(f"output{i}" for i in range(1, len(expected)))]
        for tensor, value in zip(binary.outputs, expected, strict=True):
            assert np.array_equal(rtl.outputs[tensor.name], golden.outputs[tensor.name]), (kind, tensor.name)
            assert np.array_equal(golden.outputs[tensor.name], value), (kind, tensor.name)
        cycles[kind] = rtl.cycles
    return cycles


def test_efficientnet_b0_with_lookup_tables_and_channel_scales_rtl_equals_golden(tmp_path):
    """SiLU tables folded into every conv's REQUANT (and a fusion group's table slots), sigmoid gates and the
    squeeze-and-excitation channel scales (data as depthwise weights), on one core unfused and fused on two."""
    path = zoo.export_quantized("efficientnet_b0", 32, tmp_path / "efficientnet.onnx")
    graph = load_onnx(path, name="efficientnet_b0")
    assert sum(node.op is Op.SCALE for node in graph.nodes) == 16
    assert sum(node.attrs.table is not None for node in graph.nodes) > 60
    plans = {"none-1core": make_plan(graph, NET, cores=1), "max-2cores": make_plan(graph, NET, fusion="max",
                                                                                  cores=NET.cores)}
    tabled = {node.name for node in graph.nodes if node.attrs.table is not None}
    assert any(len(tabled & set(group.nodes)) > 1 for group in plans["max-2cores"].groups)
    _rtl_equals_golden_and_reference(graph, plans, 3)


def test_the_detector_rtl_equals_golden_on_its_three_outputs(tmp_path):
    path = zoo.export_quantized("yolo_tiny", 32, tmp_path / "yolo.onnx", quant_format="qdq")
    graph = load_onnx(path, name="yolo_tiny")
    assert len(graph.outputs) == 3
    plans = {"max-2cores": make_plan(graph, NET, fusion="max", cores=NET.cores),
             "random": random_plan(graph, NET, 11)}
    _rtl_equals_golden_and_reference(graph, plans, 4)
