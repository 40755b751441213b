"""Elementwise functions as lookup tables (Sigmoid, Tanh, HardSigmoid, HardSwish, LeakyRelu and SiLU =
x * sigmoid(x)), in both onnxruntime formats and both activation types: after a convolution (folded into
its REQUANT), after an add (folded into the ADD) and after a max pool (a lookup pass of its own), the
outputs of ``dlfusion run --output`` (golden simulator) equal onnxruntime's on the same file bit for bit on
three plans."""

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from test_new_ops import FORMATS, assert_run_equals_onnxruntime

from dlfusion.compiler.frontend import load_onnx
from dlfusion.compiler.frontend.quantize import quantize_model
from dlfusion.compiler.ir import IRError, Op

FUNCTIONS = ("Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "LeakyRelu", "SiLU")
#: Left in float by onnxruntime's quantizer (no QLinear kernel): two of them with only a MaxPool between
#: are one float computation dlfusion does not take apart (a clear error).
FLOAT_ONLY = ("Tanh", "HardSigmoid", "HardSwish")


def _function(nodes, function: str, x: str, y: str, name: str) -> None:
    if function == "SiLU":
        nodes += [helper.make_node("Sigmoid", [x], [f"{name}_sig"], name=f"{name}_sigmoid"),
                  helper.make_node("Mul", [x, f"{name}_sig"], [y], name=f"{name}_mul")]
    else:
        attrs = {"alpha": 0.1} if function == "LeakyRelu" else {}
        nodes.append(helper.make_node(function, [x], [y], name=name, **attrs))


def _weights(rng, inits):
    """``weight(name, shape, fan_in)``: a seeded N(0, 1 / fan_in) float initializer appended to ``inits``."""
    def weight(name, shape, fan_in):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32), name))
        return name
    return weight


def _stem(weight, channels):
    """conv3x3 of the 3-channel input to ``channels`` (output ``c0``)."""
    return helper.make_node("Conv", ["input", weight("w0", (channels, 3, 3, 3), 27), weight("b0", (channels,), 9)],
                            ["c0"], name="conv0", pads=[1] * 4, kernel_shape=[3, 3])


def _save(path, name, nodes, inits, size, out_shape):
    """The float model of ``nodes`` on a (1, 3, size, size) input, opset 14, at ``path``."""
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                          [1, 3, size, size])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.save(model, str(path))


def functions_model(path, functions, *, seed: int, size: int) -> None:
    """conv3x3 -> f0 -> conv3x3 -> f1, + the f0 output -> f2 -> maxpool 2x2 -> f3 -> conv1x1 (the output)."""
    rng = np.random.default_rng(seed)
    channels = int(rng.integers(3, 40))
    inits = []
    weight = _weights(rng, inits)
    nodes = [_stem(weight, channels)]
    _function(nodes, functions[0], "c0", "f0", "f0")
    nodes.append(helper.make_node("Conv", ["f0", weight("w1", (channels, channels, 3, 3), 9 * channels),
                                           weight("b1", (channels,), 9)], ["c1"], name="conv1", pads=[1] * 4,
                                  kernel_shape=[3, 3]))
    _function(nodes, functions[1], "c1", "f1", "f1")
    nodes.append(helper.make_node("Add", ["f1", "f0"], ["sum"], name="add"))
    _function(nodes, functions[2], "sum", "f2", "f2")
    nodes.append(helper.make_node("MaxPool", ["f2"], ["pooled"], name="pool", kernel_shape=[2, 2], strides=[2, 2]))
    _function(nodes, functions[3], "pooled", "f3", "f3")
    nodes.append(helper.make_node("Conv", ["f3", weight("w2", (5, channels, 1, 1), channels)], ["output"],
                                  name="head", kernel_shape=[1, 1]))
    _save(path, "functions", nodes, inits, size, [1, 5, size // 2, size // 2])


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2 ** 16), functions=st.lists(st.sampled_from(FUNCTIONS), min_size=4, max_size=4),
       size=st.sampled_from([4, 6, 10]), activation_type=st.sampled_from(["uint8", "int8"]))
def test_functions_equal_onnxruntime_in_both_formats(tmp_path_factory, seed, functions, size, activation_type):
    if functions[2] in FLOAT_ONLY and functions[3] in FLOAT_ONLY:
        functions[3] = "Sigmoid"
    folder = tmp_path_factory.mktemp("functions")
    functions_model(folder / "float.onnx", functions, seed=seed, size=size)
    for fmt in FORMATS:
        path = quantize_model(folder / "float.onnx", folder / f"{fmt}.onnx", num_calibration=4, seed=seed,
                              activation_type=activation_type, quant_format=fmt, preprocess=False)
        try:
            graph = assert_run_equals_onnxruntime(path, seed)
        except IRError as error:
            # int8 QDQ: the residual branch (a tensor read by two nodes) stays int8 in onnxruntime on x86-64,
            # which runs the convolution or add next to it in float32 (README, known gaps): refused
            assert fmt == "qdq" and activation_type == "int8" and "in float32, not as its int8" in str(error), \
                str(error)
            continue
        # the functions after the convolutions and the add are folded into them; the one after the max pool
        # is a lookup of its own
        assert [node.op for node in graph.nodes].count(Op.LOOKUP) == 1
        tabled = [node.op for node in graph.nodes if node.attrs.table is not None]
        assert tabled == [Op.CONV, Op.CONV, Op.ADD, Op.LOOKUP]


def test_mul_of_two_tensors_is_a_clear_error(tmp_path):
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal(shape) / 3).astype(np.float32), name)
             for name, shape in (("w0", (8, 3, 1, 1)), ("w1", (8, 3, 1, 1)))]
    nodes = [helper.make_node("Conv", ["input", "w0"], ["a"], name="a", kernel_shape=[1, 1]),
             helper.make_node("Conv", ["input", "w1"], ["b"], name="b", kernel_shape=[1, 1]),
             helper.make_node("Mul", ["a", "b"], ["output"], name="product")]
    _save(tmp_path / "float.onnx", "m", nodes, inits, 4, [1, 8, 4, 4])
    for fmt in FORMATS:
        path = quantize_model(tmp_path / "float.onnx", tmp_path / f"{fmt}.onnx", num_calibration=2,
                              quant_format=fmt, preprocess=False)
        with pytest.raises(IRError, match="multiplies two different tensors") as info:
            load_onnx(path)
        assert "\n" not in str(info.value)


def se_model(path, *, seed: int, size: int, gate: str, order: int) -> None:
    """conv3x3 -> SiLU -> squeeze-and-excitation (global average pool -> conv1x1 -> ReLU -> conv1x1 ->
    ``gate``, times the block's input per channel) -> conv1x1 (the output)."""
    rng = np.random.default_rng(seed)
    channels = int(rng.integers(3, 40))
    squeezed = int(rng.integers(1, 9))
    inits = []
    weight = _weights(rng, inits)
    nodes = [_stem(weight, channels)]
    _function(nodes, "SiLU", "c0", "x", "act0")
    nodes += [helper.make_node("GlobalAveragePool", ["x"], ["squeeze"], name="squeeze"),
              helper.make_node("Conv", ["squeeze", weight("w1", (squeezed, channels, 1, 1), channels),
                                        weight("b1", (squeezed,), 4)], ["c1"], name="reduce", kernel_shape=[1, 1]),
              helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
              helper.make_node("Conv", ["r1", weight("w2", (channels, squeezed, 1, 1), squeezed),
                                        weight("b2", (channels,), 4)], ["c2"], name="expand", kernel_shape=[1, 1])]
    attrs = {"alpha": 1 / 6} if gate == "HardSigmoid" else {}
    nodes.append(helper.make_node(gate, ["c2"], ["gate"], name="gate", **attrs))
    nodes.append(helper.make_node("Mul", ["x", "gate"] if order == 0 else ["gate", "x"], ["excited"], name="excite"))
    nodes.append(helper.make_node("Conv", ["excited", weight("w3", (5, channels, 1, 1), channels)], ["output"],
                                  name="head", kernel_shape=[1, 1]))
    _save(path, "se", nodes, inits, size, [1, 5, size, size])


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2 ** 16), size=st.sampled_from([3, 5, 8]), gate=st.sampled_from(["Sigmoid", "HardSigmoid"]),
       order=st.integers(0, 1), activation_type=st.sampled_from(["uint8", "int8"]))
def test_squeeze_and_excitation_equals_onnxruntime_in_both_formats(tmp_path_factory, seed, size, gate, order,
                                                                   activation_type):
    """The per-channel QLinearMul: the depthwise MATMULs of the scale's two int8 parts and a REQUANT."""
    folder = tmp_path_factory.mktemp("se")
    se_model(folder / "float.onnx", seed=seed, size=size, gate=gate, order=order)
    for fmt in FORMATS:
        path = quantize_model(folder / "float.onnx", folder / f"{fmt}.onnx", num_calibration=4, seed=seed,
                              activation_type=activation_type, quant_format=fmt, preprocess=False)
        try:
            graph = assert_run_equals_onnxruntime(path, seed)
        except IRError as error:
            # a scale whose products can land exactly half-way with an odd zero point is refused by name
            # (README: REQUANT rounds before adding the zero point, QLinearMul after); seen at seed 65536
            if "exactly half-way with an odd output zero point" in str(error):
                continue
            assert fmt == "qdq" and activation_type == "int8" and "in float32" in str(error), str(error)
            continue
        assert [node.op for node in graph.nodes].count(Op.SCALE) == 1


def test_a_channel_scale_that_would_round_differently_is_refused():
    """Power-of-two scales put QLinearMul's products on exact halves; with an odd output zero point onnxruntime
    (zero point added before rounding) and REQUANT (after) would differ there: refused by name, in one line."""
    from types import SimpleNamespace

    from dlfusion.compiler.frontend.nodes import _check_scale_rounding
    ctx = SimpleNamespace(where=lambda node: "node 'excite' (Mul)")
    values = np.arange(256)
    ratio = np.float32(2.0 ** -3 * 2.0 ** -5 / 2.0 ** -7)
    _check_scale_rounding(ctx, None, values, values, 128, 0, ratio, 4, False)   # even: rounding commutes with it
    with pytest.raises(IRError, match=r"node 'excite' \(Mul\): this per-channel Mul rounds 650 of its 65536"):
        _check_scale_rounding(ctx, None, values, values, 128, 0, ratio, 3, False)
    # the gate holds only what its table can output: the products of the other values round alike
    _check_scale_rounding(ctx, None, values, np.arange(0, 256, 4), 128, 0, ratio, 3, False)
