"""A network of the new operators on the RTL: ShuffleNetV2 1.0x at 32 px (channel slices, concats of
58-channel halves realigned by selections, channel shuffles: block-sparse selection convolutions that skip
their all-zero weight blocks, as grouped convolutions do; ReduceMean), fused on both cores, equals the
golden simulator and the numpy reference bit for bit (the cheapest of the new zoo models on the RTL; it
reuses the Verilator build of ``test_rtl_networks``' two-core configuration)."""

import numpy as np
import pytest

from dlfusion.cli.run import quantize_input
from dlfusion.compiler.compile import compile_graph
from dlfusion.compiler.frontend import load_onnx, zoo
from dlfusion.compiler.plan import make_plan
from dlfusion.compiler.reference import run_graph
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
