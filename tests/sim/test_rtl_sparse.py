"""N:M sparse layers and a pruned network on the RTL (the two-core configuration of ``test_rtl_networks``,
its Verilator build reused): ``layer --prune`` with ``--sparse-exec auto`` and ``off`` give identical outputs,
both equal to the numpy reference, for a conv, a fully connected layer and a depthwise layer (which stays
dense), on 1 and 2 cores and both splits, the sparse runs in fewer cycles; a pruned ResNet-18 (2:4) equals
the golden simulator and onnxruntime's numpy twin on no fusion and max fusion."""

import json

import numpy as np
import pytest

from dlfusion.cli import main
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


@pytest.fixture(scope="module")
def hw_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("hw") / "net.toml"
    path.write_text(NET.to_toml())
    RtlSimulator(NET).build()
    return path


def _layer(capsys, hw_file, *argv):
    assert main(["layer", *argv, "--backend", "rtl", "--hw", str(hw_file), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("kind, shape, pattern", [
    ("conv", ["--h", "6", "--w", "7", "--cin", "64", "--cout", "24"], "2:4"),
    ("fc", ["--cin", "256", "--cout", "40"], "1:4"),
    ("dwconv", ["--h", "6", "--w", "6", "--cin", "32"], "2:4"),
])
@pytest.mark.parametrize("cores, split", [(1, "rows"), (2, "rows"), (2, "channels")])
def test_pruned_layer_sparse_and_dense_are_identical_on_the_rtl(kind, shape, pattern, cores, split, hw_file, capsys):
    common = [kind, *shape, "--prune", pattern, "--cores", str(cores), "--split", split, "--seed", "4"]
    sparse = _layer(capsys, hw_file, *common)
    dense = _layer(capsys, hw_file, *common, "--sparse-exec", "off")
    assert sparse["matches_reference"] and dense["matches_reference"]
    assert sparse["output_sha256"] == dense["output_sha256"]
    assert dense["sparsity"] == "dense"
    if kind == "dwconv":
        assert sparse["sparsity"] == "dense" and sparse["cycles"] == dense["cycles"]
    else:
        assert sparse["sparsity"] == pattern
        assert sparse["cycles"] < dense["cycles"]
        assert sparse["weight_bytes"] < dense["weight_bytes"]


def test_pruned_resnet18_on_the_rtl(tmp_path):
    path, report = zoo.export_pruned("resnet18", "2:4", 32, tmp_path / "r18.onnx")
    graph = load_onnx(path, name="resnet18-2of4")
    x = np.random.default_rng(2).standard_normal(graph.input_quant["shape"]).astype(np.float32)
    q = quantize_input(x, graph.input_quant)[0]
    expected = run_graph(graph, q)
    simulator = RtlSimulator(NET)
    cycles = {}
    for fusion, cores in (("none", 1), ("max", 2)):
        plan = make_plan(graph, NET, fusion=fusion, cores=cores)
        binary = compile_graph(graph, NET, plan)
        assert any(s.name.startswith("meta:") for s in binary.segments)
        rtl = simulator.run(binary, {"input": q})
        golden = GoldenSimulator(NET).run(binary, {"input": q})
        assert rtl.error is None and golden.error is None, (rtl.error, golden.error)
        assert np.array_equal(rtl.outputs["output"], golden.outputs["output"])
        assert np.array_equal(rtl.outputs["output"], expected)
        cycles[fusion] = rtl.cycles
    dense = compile_graph(graph, NET, make_plan(graph, NET, fusion="none", cores=1, sparse_exec="off"),
                          sparse_exec="off")
    dense_rtl = simulator.run(dense, {"input": q})
    assert np.array_equal(dense_rtl.outputs["output"], expected)
    assert cycles["none"] < dense_rtl.cycles
