"""A network of the new operators on the RTL: RegNetX-400MF (block-sparse grouped convolutions) at 32 px,
fused on both cores, equals the golden simulator and the numpy reference bit for bit (it reuses the
Verilator build of ``test_rtl_networks``' two-core configuration)."""

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


def test_regnet_with_grouped_convs_rtl_equals_golden(tmp_path):
    path = zoo.export_quantized("regnet_x_400mf", 32, tmp_path / "regnet.onnx", quant_format="qdq")
    graph = load_onnx(path, name="regnet_x_400mf")
    assert any(node.attrs.groups > 1 for node in graph.nodes)
    x = np.random.default_rng(5).standard_normal(graph.input_quant["shape"]).astype(np.float32)
    q = quantize_input(x, graph.input_quant)[0]
    plan = make_plan(graph, NET, fusion="max", cores=NET.cores)
    binary = compile_graph(graph, NET, plan)
    simulator = RtlSimulator(NET)
    simulator.build()
    rtl = simulator.run(binary, {"input": q})
    golden = GoldenSimulator(NET).run(binary, {"input": q})
    assert golden.error is None and rtl.error is None, (golden.error, rtl.error)
    assert np.array_equal(rtl.outputs["output"], golden.outputs["output"])
    assert np.array_equal(golden.outputs["output"], run_graph(graph, q))
