"""ONNX -> IR -> plan -> binary -> golden simulator, bit-exact with onnxruntime.

Small float models are built with onnx.helper (random structure and shapes),
quantized by onnxruntime's quantize_static (QOperator, per-channel int8
weights), compiled with several plans and run on the golden simulator; the
dequantized output must equal onnxruntime's output bit for bit.
"""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from dlfusion.compiler.compile import compile_graph
from dlfusion.compiler.errors import CompileError
from dlfusion.compiler.frontend import load_onnx
from dlfusion.compiler.ir import IRError, check
from dlfusion.compiler.plan import Group, Plan, make_plan, random_plan
from dlfusion.hw.config import HwConfig
from dlfusion.sim.golden import GoldenSimulator

HW = HwConfig()


def _float_model(seed: int, size: int, path):
    """conv-relu, conv-relu, residual add, maxpool, depthwise-relu6, concat, GAP, flatten, gemm."""
    rng = np.random.default_rng(seed)
    c1 = int(rng.choice([16, 32]))   # concat inputs must fill whole 16-channel blocks
    c3 = int(rng.choice([16, 32]))

    def weight(name, shape, fan_in):
        return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32), name)

    inits = [weight("w1", (c1, 3, 3, 3), 27), weight("b1", (c1,), 1), weight("w2", (c1, c1, 3, 3), 9 * c1),
             weight("b2", (c1,), 1), weight("w3", (c1, 1, 3, 3), 9), weight("b3", (c1,), 1),
             weight("w4", (c3, c1, 1, 1), c1), weight("b4", (c3,), 1), weight("wf", (10, c1 + c3), c1 + c3),
             weight("bf", (10,), 1), numpy_helper.from_array(np.array(0.0, np.float32), "clip_min"),
             numpy_helper.from_array(np.array(6.0, np.float32), "clip_max")]
    stride = int(rng.choice([1, 2]))
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], kernel_shape=[3, 3],
                         strides=[stride, stride]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Add", ["r1", "r2"], ["a"]),
        helper.make_node("MaxPool", ["a"], ["m"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["m", "w3", "b3"], ["c3"], pads=[1, 1, 1, 1], kernel_shape=[3, 3], group=c1),
        helper.make_node("Clip", ["c3", "clip_min", "clip_max"], ["r3"]),
        helper.make_node("Conv", ["r3", "w4", "b4"], ["c4"], kernel_shape=[1, 1]),
        helper.make_node("Relu", ["c4"], ["r4"]),
        helper.make_node("Concat", ["r3", "r4"], ["cat"], axis=1),
        helper.make_node("GlobalAveragePool", ["cat"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["output"], transB=1),
    ]
    graph = helper.make_graph(nodes, "random", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                [1, 3, size, size])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


class _Calibration(CalibrationDataReader):
    def __init__(self, shape, seed):
        rng = np.random.default_rng(seed)
        self.batches = iter([{"input": rng.standard_normal(shape).astype(np.float32)} for _ in range(4)])

    def get_next(self):
        return next(self.batches, None)


@pytest.fixture(scope="module", params=[(0, 16), (1, 20), (2, 13)], ids=lambda p: f"seed{p[0]}-{p[1]}px")
def model(request, tmp_path_factory):
    seed, size = request.param
    folder = tmp_path_factory.mktemp(f"model{seed}")
    float_path, quant_path = folder / "float.onnx", folder / "quant.onnx"
    _float_model(seed, size, float_path)
    quantize_static(str(float_path), str(quant_path), _Calibration((1, 3, size, size), seed),
                    quant_format=QuantFormat.QOperator, per_channel=True, weight_type=QuantType.QInt8,
                    activation_type=QuantType.QUInt8)
    return quant_path, size


def _onnxruntime(path, x):
    model = onnx.load(str(path))
    model.ir_version = min(model.ir_version, 9)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0].reshape(-1)


def _golden(graph, plan, x):
    binary = compile_graph(graph, HW, plan)
    quant = graph.input_quant
    q = np.clip(np.rint(x / np.float32(quant["scale"])) + quant["zero_point"], 0, 255).astype(np.uint8)
    result = GoldenSimulator(HW).run(binary, {"input": q[0]})
    assert result.error is None, str(result.error)
    dequant = graph.output_dequant
    ours = (result.outputs["output"].reshape(-1).astype(np.int32) - dequant["zero_point"]).astype(np.float32)
    return ours * np.float32(dequant["scale"]), binary, result


def _random_plan(graph, seed):
    rng = np.random.default_rng(seed)
    return Plan(graph.name, HW.hash, [Group([n.name], int(rng.integers(1, HW.cores + 1)),
                                            str(rng.choice(["rows", "channels"]))) for n in graph.nodes])


@pytest.mark.parametrize("plan_kind", ["none-1core", "none-allcores-rows", "none-allcores-channels", "random",
                                       "max-1core", "max-allcores", "random-fused"])
def test_golden_equals_onnxruntime(model, plan_kind):
    path, size = model
    graph = load_onnx(path)
    ops = {node.op.value for node in graph.nodes}
    assert ops == {"conv", "add", "maxpool", "depthwise", "concat", "avgpool", "fc"}
    if plan_kind == "none-1core":
        plan = make_plan(graph, HW, cores=1)
    elif plan_kind == "random":
        plan = _random_plan(graph, size)
    elif plan_kind == "random-fused":
        plan = random_plan(graph, HW, size)
    elif plan_kind.startswith("max"):
        plan = make_plan(graph, HW, fusion="max", cores=1 if plan_kind == "max-1core" else HW.cores)
        assert any(len(group.nodes) > 1 for group in plan.groups)
    else:
        plan = make_plan(graph, HW, cores=HW.cores, split=plan_kind.rsplit("-", 1)[1])
    x = np.random.default_rng(size).standard_normal((1, 3, size, size)).astype(np.float32)
    ours, _, _ = _golden(graph, plan, x)
    reference = _onnxruntime(path, x)
    assert np.array_equal(ours, reference), (ours, reference)


def test_compiling_twice_gives_identical_binaries(model):
    path, _ = model
    graph = load_onnx(path)
    plan = make_plan(graph, HW, cores=2)
    assert compile_graph(graph, HW, plan).to_bytes() == compile_graph(load_onnx(path), HW, plan).to_bytes()


def test_dram_space_is_reused(model):
    path, _ = model
    graph = load_onnx(path)
    binary = compile_graph(graph, HW, make_plan(graph, HW))
    lanes = HW.lanes
    activation_lines = sum(-(-t.shape[0] // lanes) * t.shape[1] * t.shape[2] for t in graph.tensors.values())
    code = next(s for s in binary.segments if s.name.startswith("code"))
    weights_end = max(s.dram_line + -(-len(s.data) // lanes) for s in binary.segments if not s.name.startswith("code"))
    assert code.dram_line - weights_end < activation_lines   # dead tensors' lines were reused


def test_plan_json_round_trip_and_validation(model, tmp_path):
    path, _ = model
    graph = load_onnx(path)
    plan = _random_plan(graph, 3)
    plan.write(tmp_path / "plan.json")
    again = Plan.read(tmp_path / "plan.json")
    assert again.to_json() == plan.to_json()
    bad = plan.to_json()
    bad["groups"] = bad["groups"][1:]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(CompileError, match="must cover the graph's nodes once, in order"):
        Plan.read(tmp_path / "bad.json").validate(graph, HW)
    bad = plan.to_json()
    bad["groups"][0]["cores"] = 9
    with pytest.raises(CompileError, match="cores must be between 1 and 4, not 9"):
        Plan.from_json(bad).validate(graph, HW)


def test_ir_check_catches_broken_graphs(model):
    path, _ = model
    graph = load_onnx(path)
    graph.nodes[1], graph.nodes[2] = graph.nodes[2], graph.nodes[1]
    with pytest.raises(IRError, match="before it is produced"):
        check(graph)


def test_unsupported_op_names_the_node(tmp_path):
    node = helper.make_node("Softmax", ["input"], ["output"], name="the_softmax")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(tmp_path / "m.onnx"))
    with pytest.raises(IRError, match=r"node 'the_softmax' \(Softmax\): unsupported op in this float model; "
                                      r"supported: QuantizeLinear, DequantizeLinear, QLinearConv"):
        load_onnx(tmp_path / "m.onnx")
