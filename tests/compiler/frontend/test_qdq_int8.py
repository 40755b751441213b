"""QDQ models with int8 activations: onnxruntime's CPU provider on x86-64 (``session.qdqisint8allowed`` off
by default) rewrites an int8 QuantizeLinear -> DequantizeLinear pair into uint8 only when the tensor is read
by one node; the Conv, Add, Gemm, ... next to a tensor read by several nodes stay float ops between their
Q/DQ nodes and round in float32 (MLAS SGEMM), not as the int32 accumulation of QLinearConv. MnasNet 1.0 at
64 px: one value of the 1x1 conv after the first residual add off by one, 729 of 1,000 outputs differ.
The compiler refuses those ops, naming the node; a chain whose tensors are each read by one node is fused
by onnxruntime and compiles bit-exact."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from dlfusion.compiler.compile import compile_graph
from dlfusion.compiler.frontend import load_onnx, quantize, zoo
from dlfusion.compiler.frontend.qdq import ort_float_ops
from dlfusion.compiler.frontend.quantize import quantize_model
from dlfusion.compiler.ir import IRError
from dlfusion.compiler.plan import make_plan
from dlfusion.hw.config import HwConfig
from dlfusion.sim.golden import GoldenSimulator

HW = HwConfig()
ARITHMETIC = ("Conv", "MatMul", "Gemm", "Add", "AveragePool", "GlobalAveragePool")


def onnxruntime_float_ops(path, tmp_path) -> set:
    """The arithmetic ops onnxruntime leaves in float in its optimized graph of ``path``."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "optimized.onnx"))
    return {n.name for n in optimized.graph.node if n.op_type in ARITHMETIC and n.domain in ("", "ai.onnx")}


def predicted_float_ops(path) -> set:
    model = onnx.load(str(path))
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return set(ort_float_ops(model.graph, constants))


def test_mnasnet_qdq_int8_at_64px_is_refused_at_the_first_float_conv(tmp_path):
    """The reported case: before, it compiled and 729 of 1,000 outputs differed from onnxruntime."""
    path = zoo.export_quantized("mnasnet1_0", 64, tmp_path / "mnasnet.onnx", quant_format="qdq",
                                activation_type="int8")
    assert predicted_float_ops(path) == onnxruntime_float_ops(path, tmp_path)
    with pytest.raises(IRError, match=r"^node '/layers/layers.3/layers/layers.2/conv/Conv' \(Conv\): onnxruntime "
                                      r"\(x86-64\) runs this Conv in float32, not as its int8 QLinear kernel"):
        load_onnx(path)
    # uint8 activations: every tensor becomes uint8, all fused, nothing refused
    path = zoo.export_quantized("mnasnet1_0", 32, tmp_path / "mnasnet_u8.onnx", quant_format="qdq")
    assert predicted_float_ops(path) == onnxruntime_float_ops(path, tmp_path) == set()


def test_the_float_ops_are_predicted_as_onnxruntime_leaves_them(tmp_path):
    path = zoo.export_quantized("tiny_cnn", 16, tmp_path / "tiny.onnx", quant_format="qdq", activation_type="int8")
    predicted = predicted_float_ops(path)
    assert predicted == onnxruntime_float_ops(path, tmp_path) == {"/conv2/conv/Conv", "/conv3/conv/Conv", "/Add"}


def _chain(path):
    """conv-relu -> conv-relu -> global average pool -> flatten -> gemm: every tensor read by one node."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, "w1"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "b1"),
             numpy_helper.from_array(rng.standard_normal((16, 8, 1, 1)).astype(np.float32) * 0.3, "w2"),
             numpy_helper.from_array(rng.standard_normal(16).astype(np.float32) * 0.1, "b2"),
             numpy_helper.from_array(rng.standard_normal((10, 16)).astype(np.float32) * 0.3, "w3"),
             numpy_helper.from_array(rng.standard_normal(10).astype(np.float32) * 0.1, "b3")]
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "w3", "b3"], ["output"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_an_int8_chain_is_fused_by_onnxruntime_and_compiles_bit_exact(tmp_path):
    _chain(tmp_path / "float.onnx")
    path = quantize_model(tmp_path / "float.onnx", tmp_path / "qdq.onnx", num_calibration=4, activation_type="int8",
                          quant_format="qdq", preprocess=False)
    assert predicted_float_ops(path) == onnxruntime_float_ops(path, tmp_path) == set()
    graph = load_onnx(path)
    quant, dequant = graph.input_quant, graph.output_dequant
    x = np.random.default_rng(5).standard_normal(quant["shape"]).astype(np.float32)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    q = np.clip(np.rint(x / np.float32(quant["scale"])) + quant["zero_point"], -128, 127).astype(np.int8)
    binary = compile_graph(graph, HW, make_plan(graph, HW, fusion="max", cores=HW.cores))
    result = GoldenSimulator(HW).run(binary, {"input": q[0]})
    assert result.error is None, str(result.error)
    ours = (result.outputs["output"].reshape(-1).astype(np.int32) - dequant["zero_point"]).astype(np.float32)
    np.testing.assert_array_equal(ours * np.float32(dequant["scale"]), expected.reshape(-1))


def _own_initializers(path, out):
    """Give every QuantizeLinear after the first reading a tensor its own copies of the scale and zero point
    (so onnxruntime's common subexpression elimination cannot merge the dedicated pairs by name)."""
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    seen: dict = {}
    for n in model.graph.node:
        if n.op_type != "QuantizeLinear" or n.input[0] in inits:
            continue
        k = seen[n.input[0]] = seen.get(n.input[0], 0) + 1
        if k == 1:
            continue
        dq = [d for d in model.graph.node if d.op_type == "DequantizeLinear" and d.input[0] == n.output[0]]
        for j in (1, 2):
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[n.input[j]])
            copy.name = f"{n.input[j]}_{k}"
            model.graph.initializer.append(copy)
            for node in [n] + dq:
                node.input[j] = copy.name
    onnx.save(model, str(out))
    return out


@pytest.mark.parametrize("name,size", [("tiny_cnn", 16), ("resnet18", 32)])
def test_dedicated_qdq_pairs_are_merged_back_by_onnxruntime(tmp_path, monkeypatch, name, size):
    """quantize_static's DedicatedQDQPair (one Q/DQ pair per reader) does not make onnxruntime fuse the
    branches: its common subexpression elimination merges the identical QuantizeLinear nodes first, the
    tensor is shared again and the same ops stay float; the prediction follows that merge."""
    plain = zoo.export_quantized(name, size, tmp_path / "plain.onnx", quant_format="qdq", activation_type="int8")
    monkeypatch.setitem(quantize.EXTRA_OPTIONS, "DedicatedQDQPair", True)
    path = zoo.export_quantized(name, size, tmp_path / "dedicated.onnx", quant_format="qdq", activation_type="int8")
    assert sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(path)).graph.node) > \
        sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(plain)).graph.node)
    predicted = predicted_float_ops(path)
    assert predicted == onnxruntime_float_ops(path, tmp_path) == predicted_float_ops(plain) != set()
    with pytest.raises(IRError, match=r"runs this .* in float32|must go into one QuantizeLinear"):
        load_onnx(path)     # whichever the frontend meets first: a float op, or an output quantized twice


def test_dedicated_pairs_with_their_own_initializers_leave_the_producer_in_float(tmp_path, monkeypatch):
    """Dedicated pairs that CSE cannot merge: every reader's pair becomes uint8 and is fused, but the
    conv whose output several QuantizeLinear nodes read is not (its QDQ node unit needs exactly one)."""
    monkeypatch.setitem(quantize.EXTRA_OPTIONS, "DedicatedQDQPair", True)
    path = zoo.export_quantized("tiny_cnn", 16, tmp_path / "dedicated.onnx", quant_format="qdq",
                                activation_type="int8")
    path = _own_initializers(path, tmp_path / "own.onnx")
    assert predicted_float_ops(path) == onnxruntime_float_ops(path, tmp_path) == {"/conv2/conv/Conv"}
    with pytest.raises(IRError, match=r"^node '/conv2/conv/Conv' \(Conv\): .*several QuantizeLinear nodes read"
                                      r"|must go into one QuantizeLinear"):
        load_onnx(path)
