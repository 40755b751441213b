"""QDQ models (onnxruntime's QuantFormat.QDQ) read into the same graph IR as their QOperator twins:
the same IR, the same binary, and the golden simulator equal to onnxruntime running the QDQ file."""

import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from dlfusion.cli import main
from dlfusion.compiler.compile import compile_graph
from dlfusion.compiler.frontend import SUPPORTED_QDQ_OPS, load_onnx, zoo
from dlfusion.compiler.frontend.onnx import model_format
from dlfusion.compiler.frontend.quantize import quantize_model
from dlfusion.compiler.ir import IRError
from dlfusion.compiler.plan import make_plan
from dlfusion.hw.config import HwConfig
from dlfusion.sim.golden import GoldenSimulator

HW = HwConfig()
SIZE = 32
#: The zoo models cheap at 32 px (vgg16 and resnet50 are left to tests/fingerprints.py's sizes). With int8
#: activations every zoo model has a tensor read by two nodes, whose neighbours onnxruntime runs in float32 on
#: x86-64: refused (tests/compiler/frontend/test_qdq_int8.py).
TWINS = [("tiny_cnn", "uint8"), ("resnet18", "uint8"), ("mobilenet_v2", "uint8"), ("squeezenet1_1", "uint8")]
PLANS = {"none-1core": dict(fusion="none", cores=1), "max-allcores": dict(fusion="max", cores=HW.cores)}


def ir_signature(graph) -> dict:
    """Everything the compiler reads from a graph but its tensors' names: per node in order, its name,
    op, inputs (by producer), output tensor and attributes (arrays with their dtype)."""
    index = {graph.input: "input"} | {node.output: i for i, node in enumerate(graph.nodes)}

    def tensor(name):
        t = graph.tensors[name]
        return index[name], t.shape, t.dtype, t.scale, t.zero_point

    def value(v):
        return (v.dtype.str, v.shape, v.tobytes()) if isinstance(v, (np.ndarray, np.generic)) else v

    return {"input": tensor(graph.input), "output": tensor(graph.output), "input_quant": graph.input_quant,
            "output_dequant": graph.output_dequant,
            "nodes": [(node.name, node.op, [tensor(i) for i in node.inputs], tensor(node.output),
                       {key: value(v) for key, v in vars(node.attrs).items()}) for node in graph.nodes]}


def assert_same_ir(a, b):
    sa, sb = ir_signature(a), ir_signature(b)
    assert [n[:2] for n in sa["nodes"]] == [n[:2] for n in sb["nodes"]]
    for na, nb in zip(sa["nodes"], sb["nodes"], strict=True):
        assert na == nb, f"node {na[0]!r} differs"
    assert sa == sb


def session(path):
    model = onnx.load(str(path))
    model.ir_version = min(model.ir_version, 9)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def quantize_input(graph, x):
    quant = graph.input_quant
    info = np.iinfo(quant["dtype"])
    q = np.rint(x / np.float32(quant["scale"])) + quant["zero_point"]
    return np.clip(q, info.min, info.max).astype(quant["dtype"])


def golden_output(graph, binary, x):
    """The golden simulator's output, dequantized as the model's DequantizeLinear does."""
    result = GoldenSimulator(HW).run(binary, {"input": quantize_input(graph, x)[0]})
    assert result.error is None, str(result.error)
    dequant = graph.output_dequant
    ours = (result.outputs["output"].reshape(-1).astype(np.int32) - dequant["zero_point"]).astype(np.float32)
    return ours * np.float32(dequant["scale"])


# -- the zoo, both formats ------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=TWINS, ids=lambda p: f"{p[0]}-{p[1]}")
def twins(request, tmp_path_factory):
    name, activation_type = request.param
    folder = tmp_path_factory.mktemp(f"{name}-{activation_type}")
    paths = {fmt: zoo.export_quantized(name, SIZE, folder / f"{fmt}.onnx", seed=0, activation_type=activation_type,
                                       quant_format=fmt) for fmt in ("qoperator", "qdq")}
    graphs = {fmt: load_onnx(path, name=name) for fmt, path in paths.items()}
    return name, paths, graphs


def test_the_zoo_exports_are_in_their_format(twins):
    _, paths, _ = twins
    assert {fmt: model_format(onnx.load(str(path)).graph) for fmt, path in paths.items()} == \
        {"qoperator": "QOperator", "qdq": "QDQ"}


def test_a_qdq_model_reads_into_the_ir_of_its_qoperator_twin(twins):
    _, _, graphs = twins
    assert_same_ir(graphs["qoperator"], graphs["qdq"])


@pytest.mark.parametrize("plan", PLANS)
def test_a_qdq_model_compiles_to_the_binary_of_its_qoperator_twin(twins, plan):
    _, _, graphs = twins
    digests = {fmt: hashlib.sha256(compile_graph(g, HW, make_plan(g, HW, **PLANS[plan])).to_bytes()).hexdigest()
               for fmt, g in graphs.items()}
    assert digests["qdq"] == digests["qoperator"]


def test_the_golden_simulator_equals_onnxruntime_on_the_qdq_file(twins):
    name, paths, graphs = twins
    graph = graphs["qdq"]
    binary = compile_graph(graph, HW, make_plan(graph, HW, fusion="max", cores=HW.cores))
    x = np.random.default_rng(7).standard_normal(graph.input_quant["shape"]).astype(np.float32)
    reference = session(paths["qdq"]).run(None, {graph.input_quant["name"]: x})[0].reshape(-1)
    ours = golden_output(graph, binary, x)
    mismatches = int(np.count_nonzero(ours != reference))
    assert mismatches == 0, f"{name}: {mismatches} of {reference.size} outputs differ from onnxruntime (QDQ)"
    # onnxruntime runs the twins as the same kernels
    np.testing.assert_array_equal(session(paths["qoperator"]).run(None, {"input": x})[0].reshape(-1), reference)


# -- random float models quantized both ways ------------------------------------------------------------

def random_float_model(seed: int, path, pool: str = "MaxPool") -> int:
    """A named float model of the supported ops with seeded random shapes and weights (conv-relu, residual
    add, ``pool``, depthwise conv-relu6, concat, global average pool, flatten, Gemm or MatMul); returns
    its input size."""
    rng = np.random.default_rng(seed)
    size = int(rng.integers(8, 17))
    c1, c3 = int(rng.choice([16, 32])), int(rng.choice([16, 32]))   # concat inputs fill whole lane blocks
    classes = int(rng.integers(2, 12))
    inits = []

    def weight(name, shape, fan_in):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32),
                                             name))
        return name

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    stride = int(rng.choice([1, 2]))
    pool = (pool, {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]} if pool == "MaxPool"
            else {"kernel_shape": [2, 2], "strides": [2, 2]})
    nodes = [
        helper.make_node("Conv", ["input", weight("w1", (c1, 3, 3, 3), 27), weight("b1", (c1,), 1)], ["c1"],
                         name="conv1", pads=[1, 1, 1, 1], kernel_shape=[3, 3], strides=[stride, stride]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", weight("w2", (c1, c1, 3, 3), 9 * c1), weight("b2", (c1,), 1)], ["c2"],
                         name="conv2", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Add", ["r1", "r2"], ["a"], name="add"),
        helper.make_node(pool[0], ["a"], ["m"], name="pool", **pool[1]),
        helper.make_node("Conv", ["m", weight("w3", (c1, 1, 3, 3), 9), weight("b3", (c1,), 1)], ["c3"],
                         name="depthwise", pads=[1, 1, 1, 1], kernel_shape=[3, 3], group=c1),
        helper.make_node("Clip", ["c3", const("lo", 0.0), const("hi", 6.0)], ["r3"], name="relu6"),
        helper.make_node("Conv", ["r3", weight("w4", (c3, c1, 1, 1), c1)], ["c4"], name="pointwise",
                         kernel_shape=[1, 1]),
        helper.make_node("Relu", ["c4"], ["r4"], name="relu4"),
        helper.make_node("Concat", ["r3", "r4"], ["cat"], name="concat", axis=1),
        helper.make_node("GlobalAveragePool", ["cat"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
    ]
    if rng.random() < 0.5:
        nodes.append(helper.make_node("Gemm", ["f", weight("wf", (classes, c1 + c3), c1 + c3),
                                               weight("bf", (classes,), 1)], ["output"], name="fc", transB=1))
    else:
        nodes.append(helper.make_node("MatMul", ["f", weight("wf", (c1 + c3, classes), c1 + c3)], ["output"],
                                      name="fc"))
    graph = helper.make_graph(nodes, "random", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                [1, 3, size, size])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return size


def quantize_paths(tmp_path_factory, seed, activation_type, pool="MaxPool"):
    folder = tmp_path_factory.mktemp("random")
    random_float_model(seed, folder / "float.onnx", pool)
    return {fmt: quantize_model(folder / "float.onnx", folder / f"{fmt}.onnx", num_calibration=4, seed=seed,
                                activation_type=activation_type, quant_format=fmt, preprocess=False)
            for fmt in ("qoperator", "qdq")}


def quantize_both(tmp_path_factory, seed, activation_type, pool="MaxPool"):
    paths = quantize_paths(tmp_path_factory, seed, activation_type, pool)
    return paths, {fmt: load_onnx(path, name="random") for fmt, path in paths.items()}


def assert_golden_equals_onnxruntime(graph, path, seed):
    x = np.random.default_rng(seed).standard_normal(graph.input_quant["shape"]).astype(np.float32)
    reference = session(path).run(None, {"input": x})[0].reshape(-1)
    for plan in PLANS.values():
        ours = golden_output(graph, compile_graph(graph, HW, make_plan(graph, HW, **plan)), x)
        np.testing.assert_array_equal(ours, reference)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2 ** 16), activation_type=st.sampled_from(["uint8", "int8"]))
def test_random_float_models_read_into_the_same_ir_in_both_formats(tmp_path_factory, seed, activation_type):
    paths = quantize_paths(tmp_path_factory, seed, activation_type)
    qoperator = load_onnx(paths["qoperator"], name="random")
    if activation_type == "int8":
        # the residual add's input is read by two nodes: onnxruntime runs its neighbours in float32 on x86-64
        with pytest.raises(IRError, match=r"onnxruntime \(x86-64\) runs this (Conv|Add|Gemm|MatMul|"
                                          r"GlobalAveragePool) in float32"):
            load_onnx(paths["qdq"], name="random")
        assert_golden_equals_onnxruntime(qoperator, paths["qoperator"], seed)
        return
    graphs = {"qoperator": qoperator, "qdq": load_onnx(paths["qdq"], name="random")}
    assert_same_ir(graphs["qoperator"], graphs["qdq"])
    assert_golden_equals_onnxruntime(graphs["qdq"], paths["qdq"], seed)


def test_an_average_pool_as_the_qdq_quantizer_writes_it_is_refused(tmp_path_factory):
    """onnxruntime's QDQ quantizer gives AveragePool its input's scale and zero point (a "direct 8-bit"
    op; its QOperator quantizer calibrates the output): the 1/4 multiplier makes exact halves frequent, where
    onnxruntime's QLinearAveragePool (a float average, then round(y / y_scale + zero_point)) and the
    accelerator's requantization round differently."""
    folder = tmp_path_factory.mktemp("average")
    random_float_model(11, folder / "float.onnx", pool="AveragePool")
    path = quantize_model(folder / "float.onnx", folder / "qdq.onnx", num_calibration=4, seed=11,
                          quant_format="qdq", preprocess=False)
    with pytest.raises(IRError, match=r"^node 'pool' \(AveragePool\): an average pool that keeps its input's "
                                      r"quantization \(as onnxruntime's QDQ quantizer writes it\) is not supported: "
                                      r".*; quantize the model in QOperator format$"):
        load_onnx(path)


# -- what is not supported ------------------------------------------------------------------------------

def sigmoid_model(tmp_path):
    """A QDQ model of conv -> sigmoid -> global average pool, quantized by onnxruntime."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.3).astype(np.float32), n)
             for n, s in (("w", (16, 3, 3, 3)), ("b", (16,)))]
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1],
                              kernel_shape=[3, 3]),
             helper.make_node("Sigmoid", ["c"], ["s"], name="gate"),
             helper.make_node("GlobalAveragePool", ["s"], ["output"], name="gap")]
    graph = helper.make_graph(nodes, "sigmoid", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                 [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 16, 1, 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "float.onnx"))
    return quantize_model(tmp_path / "float.onnx", tmp_path / "sigmoid.onnx", num_calibration=2, quant_format="qdq",
                          preprocess=False)


UNSUPPORTED = (r"node 'gate' \(Elu\): unsupported op in this QDQ model; supported: QuantizeLinear, "
               r"DequantizeLinear, Conv, Gemm, MatMul, Add, GlobalAveragePool, AveragePool, MaxPool, Relu, Clip, "
               r"Concat, Flatten, Reshape, Constant, ReduceMean, Slice, Split, Sigmoid, Tanh, HardSigmoid, "
               r"HardSwish, LeakyRelu, Mul, Resize, Upsample$")


def elu_model(tmp_path):
    """:func:`sigmoid_model` with its Sigmoid made an Elu (a float op dlfusion does not support)."""
    model = onnx.load(str(sigmoid_model(tmp_path)))
    for node in model.graph.node:
        if node.op_type == "Sigmoid":
            node.op_type = "Elu"
    onnx.save(model, str(tmp_path / "elu.onnx"))
    return tmp_path / "elu.onnx"


def test_an_unsupported_float_op_names_node_op_format_and_the_supported_ops(tmp_path):
    path = elu_model(tmp_path)
    assert "Elu" not in SUPPORTED_QDQ_OPS
    with pytest.raises(IRError, match=UNSUPPORTED):
        load_onnx(path)


def test_compiling_a_qdq_model_with_an_unsupported_op_is_one_line_and_writes_nothing(tmp_path, capsys):
    path = elu_model(tmp_path)
    before = set(tmp_path.iterdir())
    code = main(["compile", str(path), "-o", str(tmp_path / "elu.dlfb")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("dlfusion: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert "node 'gate' (Elu): unsupported op in this QDQ model; supported: QuantizeLinear" in err
    assert set(tmp_path.iterdir()) == before


def test_a_requantizing_maxpool_is_refused(tmp_path):
    """onnxruntime keeps a MaxPool's quantization; one written otherwise by hand is named."""
    path = sigmoid_model(tmp_path)
    model = onnx.load(str(path))
    for node in model.graph.node:
        if node.op_type == "Sigmoid":
            node.op_type, node.name = "MaxPool", "pool"
            node.attribute.extend([helper.make_attribute("kernel_shape", [2, 2])])
    onnx.save(model, str(tmp_path / "maxpool.onnx"))
    with pytest.raises(IRError, match=r"node 'pool' \(MaxPool\): its QuantizeLinear changes the quantization of "
                                      r"'c_QuantizeLinear_Output' .*; only a MaxPool that keeps it is supported"):
        load_onnx(tmp_path / "maxpool.onnx")


def test_an_op_whose_output_is_not_quantized_is_named(tmp_path):
    # conv -> (no QuantizeLinear) -> the float output
    path = sigmoid_model(tmp_path)
    model = onnx.load(str(path))
    keep = []
    for node in model.graph.node:
        if node.op_type == "Sigmoid":
            break
        keep.append(node)
    conv = next(n for n in keep if n.op_type == "Conv")
    keep = [n for n in keep if n.op_type != "QuantizeLinear" or n.input[0] != conv.output[0]]
    conv.output[0] = "output"
    del model.graph.node[:]
    model.graph.node.extend(keep)
    onnx.save(model, str(tmp_path / "float_out.onnx"))
    with pytest.raises(IRError, match=r"node 'conv' \(Conv\): in a QDQ model its output must go into one "
                                      r"QuantizeLinear \(dlfusion runs quantized ops only\); it feeds the model "
                                      r"output"):
        load_onnx(tmp_path / "float_out.onnx")


def test_dlfusion_export_writes_either_format_and_activation_type(tmp_path, capsys):
    for fmt, activation_type, expected in (("qdq", "uint8", "QDQ"), ("qoperator", "int8", "QOperator")):
        path = tmp_path / f"{fmt}.onnx"
        assert main(["export", "tiny_cnn", "--input-size", "16", "--format", fmt, "--activation-type",
                     activation_type, "-o", str(path)]) == 0
        assert model_format(onnx.load(str(path)).graph) == expected
        assert load_onnx(path).input_quant["dtype"] == activation_type
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "tiny_cnn", "--format", "qlinear", "-o", str(tmp_path / "bad.onnx")])
    assert exit_info.value.code == 2 and "invalid choice: 'qlinear'" in capsys.readouterr().err
    assert not (tmp_path / "bad.onnx").exists()
