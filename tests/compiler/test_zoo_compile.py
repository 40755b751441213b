"""Every zoo model, quantized by onnxruntime, compiled and run on the golden
simulator: the output equals onnxruntime's bit for bit, for a one-core plan,
the maximum fusion that fits on all cores, and a random mixed plan (random fusion
groups, core counts and split axes)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from dlfusion.compiler.compile import compile_graph
from dlfusion.compiler.frontend import load_onnx, zoo
from dlfusion.compiler.plan import make_plan, random_plan
from dlfusion.hw.config import HwConfig
from dlfusion.sim.golden import GoldenSimulator

HW = HwConfig()
SIZES = {"tiny_cnn": 32, "resnet18": 32, "resnet50": 32, "mobilenet_v2": 32, "vgg16": 32, "squeezenet1_1": 32}


@pytest.fixture(scope="module", params=list(SIZES))
def quantized(request, tmp_path_factory):
    name = request.param
    path = tmp_path_factory.mktemp(name) / f"{name}.onnx"
    zoo.export_quantized(name, SIZES[name], path)
    model = onnx.load(str(path))
    model.ir_version = min(model.ir_version, 9)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return name, path, session


def _plan(graph, kind):
    if kind == "none-1core":
        return make_plan(graph, HW, cores=1)
    if kind == "max-allcores":
        plan = make_plan(graph, HW, fusion="max", cores=HW.cores)
        assert any(len(group.nodes) > 1 for group in plan.groups)
        return plan
    return random_plan(graph, HW, len(graph.nodes))


@pytest.mark.parametrize("plan_kind", ["none-1core", "max-allcores", "random"])
def test_zoo_model_matches_onnxruntime(quantized, plan_kind):
    name, path, session = quantized
    graph = load_onnx(path)
    binary = compile_graph(graph, HW, _plan(graph, plan_kind))
    quant, dequant = graph.input_quant, graph.output_dequant
    x = np.random.default_rng(7).standard_normal(quant["shape"]).astype(np.float32)
    q = np.clip(np.rint(x / np.float32(quant["scale"])) + quant["zero_point"], 0, 255).astype(np.uint8)
    result = GoldenSimulator(HW).run(binary, {"input": q[0]})
    assert result.error is None, str(result.error)
    ours = (result.outputs["output"].reshape(-1).astype(np.int32) - dequant["zero_point"]).astype(np.float32)
    ours *= np.float32(dequant["scale"])
    reference = session.run(None, {quant["name"]: x})[0].reshape(-1)
    mismatches = int(np.count_nonzero(ours != reference))
    assert mismatches == 0, f"{name}: {mismatches} of {reference.size} outputs differ from onnxruntime"
