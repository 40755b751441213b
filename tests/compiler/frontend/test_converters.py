"""The ONNX frontend's converters, one op at a time, on QOperator models written by hand."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dlfusion.compiler.frontend import SUPPORTED_OPS, load_onnx
from dlfusion.compiler.frontend.registry import CONVERTERS, converter
from dlfusion.compiler.ir import IRError, Op


class QModel:
    """A QOperator model: ``input`` (1, C, H, W) float -> QuantizeLinear -> ... -> DequantizeLinear -> ``output``."""

    def __init__(self, channels=4, size=6):
        self.shape = [1, channels, size, size]
        self.nodes = [helper.make_node("QuantizeLinear", ["input", "x_scale", "x_zero"], ["x"], name="quant")]
        self.inits = []
        self.const("x_scale", np.float32(0.05))
        self.const("x_zero", np.uint8(128))

    def const(self, name, value):
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def quant(self, prefix, scale, zero):
        return [self.const(f"{prefix}_scale", np.float32(scale)), self.const(f"{prefix}_zero", np.uint8(zero))]

    def conv(self, name, x, cin, cout, k=3, pad=1, group=1, out_scale=0.1, out_zero=120, seed=0):
        rng = np.random.default_rng(seed)
        w = rng.integers(-50, 50, size=(cout, cin // group, k, k)).astype(np.int8)
        inputs = [x, "x_scale", "x_zero", self.const(f"{name}_w", w),
                  self.const(f"{name}_ws", np.full(cout, 0.01, np.float32)),
                  self.const(f"{name}_wz", np.zeros(cout, np.int8)), *self.quant(name, out_scale, out_zero),
                  self.const(f"{name}_b", rng.integers(-100, 100, size=cout).astype(np.int32))]
        self.nodes.append(helper.make_node("QLinearConv", inputs, [name], name=name, kernel_shape=[k, k],
                                           pads=[pad] * 4, group=group))
        return name

    def node(self, op, inputs, output, **attrs):
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def save(self, path, last, scale="x_scale", zero="x_zero"):
        self.nodes.append(helper.make_node("DequantizeLinear", [last, scale, zero], ["output"], name="dequant"))
        graph = helper.make_graph(self.nodes, "hand", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                      self.shape)],
                                  [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                        helper.make_opsetid("com.microsoft", 1)])
        onnx.save(model, str(path))
        return path


def test_every_supported_op_has_one_converter():
    assert set(SUPPORTED_OPS) == set(CONVERTERS)
    with pytest.raises(ValueError, match="two converters"):
        converter("QLinearConv")(lambda context, node: None)


def test_conv_then_relu_folds_into_the_conv_clamp(tmp_path):
    m = QModel()
    conv = m.conv("conv", "x", 4, 8, out_zero=120)
    relu = m.node("Relu", [conv], "relu")
    graph = load_onnx(m.save(tmp_path / "m.onnx", relu, "conv_scale", "conv_zero"))
    assert [node.op for node in graph.nodes] == [Op.CONV]
    node = graph.nodes[0]
    assert node.attrs.clamp == (120, 255)          # Relu: the zero point up
    assert graph.output == node.output == "conv" and "relu" not in graph.tensors
    assert node.attrs.macs == 8 * 6 * 6 * 9 * 4
    assert node.attrs.multiplier.dtype == np.float32
    np.testing.assert_array_equal(node.attrs.multiplier, np.float32(np.float32(0.05) * np.float32(0.01))
                                  / np.float32(0.1))


def test_two_clips_narrow_the_clamp_in_turn(tmp_path):
    m = QModel()
    conv = m.conv("conv", "x", 4, 4, out_scale=0.1, out_zero=100)
    first = m.node("Clip", [conv, m.const("lo", np.float32(-1.0)), m.const("hi", np.float32(6.0))], "clip1")
    second = m.node("Clip", [first, m.const("lo2", np.float32(0.0)), ""], "clip2")
    graph = load_onnx(m.save(tmp_path / "m.onnx", second, "conv_scale", "conv_zero"))
    # -1.0 / 0.1 + 100 = 90, 6.0 / 0.1 + 100 = 160; then 0.0 -> 100
    assert [node.op for node in graph.nodes] == [Op.CONV]
    assert graph.nodes[0].attrs.clamp == (100, 160)


def test_a_relu_of_a_tensor_read_elsewhere_is_refused(tmp_path):
    m = QModel()
    conv = m.conv("conv", "x", 4, 4)
    relu = m.node("Relu", [conv], "relu")
    add = [conv, "conv_scale", "conv_zero", relu, "conv_scale", "conv_zero", "conv_scale", "conv_zero"]
    m.nodes.append(helper.make_node("QLinearAdd", add, ["sum"], name="sum", domain="com.microsoft"))
    with pytest.raises(IRError, match=r"node 'relu' \(Relu\): a Relu must directly follow the op producing "
                                      r"'conv' and be its only consumer"):
        load_onnx(m.save(tmp_path / "m.onnx", "sum", "conv_scale", "conv_zero"))


def test_qlinear_concat_rescales_the_input_of_another_quantization(tmp_path):
    m = QModel()
    a = m.conv("a", "x", 4, 4, out_scale=0.1, out_zero=120, seed=1)
    b = m.conv("b", "x", 4, 4, out_scale=0.2, out_zero=110, seed=2)
    inputs = [*m.quant("cat", 0.1, 120), a, "a_scale", "a_zero", b, "b_scale", "b_zero"]
    m.nodes.append(helper.make_node("QLinearConcat", inputs, ["cat"], name="cat", axis=1, domain="com.microsoft"))
    graph = load_onnx(m.save(tmp_path / "m.onnx", "cat", "cat_scale", "cat_zero"))
    # (the 4-channel first input is then padded to a 16-channel block by align_concat_inputs)
    assert [node.name for node in graph.nodes] == ["a", "b", "cat:rescale1", "cat:align0", "cat", "cat:compact"]
    rescale = graph.nodes[2]
    assert rescale.op is Op.DEPTHWISE and rescale.inputs == ["b"] and graph.nodes[4].inputs == ["a:aligned",
                                                                                                "b:rescaled"]
    # the multiplier reproduces onnxruntime's table: x -> rne((x - 110) * 0.2 / 0.1) + 120, saturated
    x = np.arange(256)
    ours = np.clip(np.rint((x - 110).astype(np.float32) * rescale.attrs.multiplier[0]) + 120, 0, 255)
    table = np.clip(np.rint((x - 110).astype(np.float32) * np.float32(0.2) / np.float32(0.1)) + 120, 0, 255)
    np.testing.assert_array_equal(ours, table)
    assert rescale.attrs.macs == 4 * 6 * 6


def test_a_plain_concat_of_two_quantizations_is_refused(tmp_path):
    m = QModel()
    a = m.conv("a", "x", 4, 4, out_scale=0.1, out_zero=120)
    b = m.conv("b", "x", 4, 4, out_scale=0.2, out_zero=110)
    cat = m.node("Concat", [a, b], "cat", axis=1)
    with pytest.raises(IRError, match="concat inputs must share the output's quantization"):
        load_onnx(m.save(tmp_path / "m.onnx", cat, "a_scale", "a_zero"))


def test_flatten_before_a_classifier_is_an_alias(tmp_path):
    m = QModel(channels=4, size=2)
    flat = m.node("Flatten", ["x"], "flat")
    weight = np.arange(10 * 16).reshape(10, 16).astype(np.int8) % 7
    inputs = [flat, "x_scale", "x_zero", m.const("fc_w", weight.T.copy()), m.const("fc_ws", np.float32(0.01)),
              m.const("fc_wz", np.int8(0)), *m.quant("fc", 0.3, 128)]
    m.nodes.append(helper.make_node("QLinearMatMul", inputs, ["fc"], name="fc"))
    graph = load_onnx(m.save(tmp_path / "m.onnx", "fc", "fc_scale", "fc_zero"))
    (node,) = graph.nodes
    assert node.op is Op.FC and node.inputs == ["x"] and node.attrs.kernel == 2
    assert node.attrs.weight.shape == (10, 4, 2, 2) and node.attrs.macs == 10 * 16
    np.testing.assert_array_equal(node.attrs.weight.reshape(10, 16), weight)


def test_an_unsupported_op_names_node_op_format_and_the_supported_ops(tmp_path):
    m = QModel()
    conv = m.conv("conv", "x", 4, 4)
    m.nodes.append(helper.make_node("QLinearSoftmax", [conv, "conv_scale", "conv_zero", "conv_scale", "conv_zero"],
                                    ["sig"], name="sig", domain="com.microsoft"))
    with pytest.raises(IRError, match=r"node 'sig' \(QLinearSoftmax\): unsupported op in this QOperator model; "
                                      r"supported: QuantizeLinear, .*QLinearConv.*QLinearSigmoid"):
        load_onnx(m.save(tmp_path / "m.onnx", "sig", "conv_scale", "conv_zero"))


def _qdq_relu_on_the_input(path, quantized_output: bool):
    """input -> Q -> DQ -> Relu -> output, or with the Relu's output quantized: -> Q -> DQ -> output."""
    nodes = [helper.make_node("QuantizeLinear", ["input", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"]),
             helper.make_node("Relu", ["dq"], ["relu" if quantized_output else "output"])]
    if quantized_output:
        nodes += [helper.make_node("QuantizeLinear", ["relu", "s", "z"], ["relu_q"]),
                  helper.make_node("DequantizeLinear", ["relu_q", "s", "z"], ["output"])]
    inits = [numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.uint8(0), "z")]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_a_qdq_relu_on_the_input_alone_is_refused_by_name(tmp_path):
    # QDQ models are read (tests/compiler/frontend/test_qdq.py); this one has no quantized op to run:
    # its Relu's output is float, and quantized it would be a clamp of the input, which no layer produces.
    with pytest.raises(IRError, match=r"^node 'output' \(Relu\): in a QDQ model its output must go into one "
                                      r"QuantizeLinear \(dlfusion runs quantized ops only\); it feeds the model "
                                      r"output$"):
        load_onnx(_qdq_relu_on_the_input(tmp_path / "float_out.onnx", quantized_output=False))
    with pytest.raises(IRError, match=r"node 'relu' \(Relu\): a Relu must directly follow the op producing 'q'"):
        load_onnx(_qdq_relu_on_the_input(tmp_path / "quantized_out.onnx", quantized_output=True))


def test_a_grouped_convolution_is_a_conv_with_a_block_diagonal_weight(tmp_path):
    m = QModel()
    conv = m.conv("conv", "x", 4, 8, group=2)
    (node,) = load_onnx(m.save(tmp_path / "m.onnx", conv, "conv_scale", "conv_zero")).nodes
    assert node.op is Op.CONV and node.attrs.groups == 2 and node.attrs.weight.shape == (8, 4, 3, 3)
    assert not node.attrs.weight[:4, 2:].any() and not node.attrs.weight[4:, :2].any()
    assert node.attrs.macs == 8 * 6 * 6 * 9 * 2          # each output reads its group's 2 input channels
