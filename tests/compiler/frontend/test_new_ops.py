"""The operators lowered onto the existing instructions (grouped convolution, ReduceMean over H and W,
channel Slice and Split, Concat of any channel counts, the channel shuffle), in both onnxruntime formats
and both activation types: the outputs of ``dlfusion run --output`` (golden simulator) equal onnxruntime's
on the same file bit for bit, on three plans; grouped convolutions skip their all-zero weight blocks."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from test_qdq import assert_same_ir

from dlfusion.cli.run import model_outputs, quantize_input
from dlfusion.compiler.compile import compile_graph
from dlfusion.compiler.frontend import load_onnx
from dlfusion.compiler.frontend.quantize import quantize_model
from dlfusion.compiler.ir import IRError, Op
from dlfusion.compiler.lower.common import Split, layer_of, weight_blocks_for
from dlfusion.compiler.lower.group import lower_group
from dlfusion.compiler.plan import make_plan, random_plan
from dlfusion.hw.asm import CountSink, StreamBuilder
from dlfusion.hw.config import HwConfig
from dlfusion.sim.golden import GoldenSimulator

HW = HwConfig()
FORMATS = ("qoperator", "qdq")


def new_ops_model(path, *, seed: int, groups: int, split: bool, keepdims: bool) -> None:
    """conv3x3-relu -> grouped conv3x3-relu -> channel Slice/Split into a part kept as is and a part
    through a conv1x1-relu -> Concat of both (channel counts off the lane blocks) -> channel shuffle ->
    ReduceMean over H, W -> [Flatten] -> Gemm, with seeded shapes and weights."""
    rng = np.random.default_rng(seed)
    size = int(rng.choice([1, 3, 5, 7])) * 2 + 1            # an odd map: see reduce_mean
    c0 = groups * int(rng.integers(1, 5))
    c1 = groups * int(rng.integers(2, 6))
    cut = int(rng.integers(1, c1))
    branch = int(rng.integers(1, 20))
    branch += (cut + branch) % 2                           # the shuffle's 2 groups need an even count
    classes = int(rng.integers(2, 9))
    inits = []

    def weight(name, shape, fan_in):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32), name))
        return name

    def ints(name, values):
        inits.append(numpy_helper.from_array(np.asarray(values, np.int64), name))
        return name

    nodes = [
        helper.make_node("Conv", ["input", weight("w0", (c0, 3, 3, 3), 27), weight("b0", (c0,), 1)], ["c0"],
                         name="conv0", pads=[1] * 4, kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", weight("w1", (c1, c0 // groups, 3, 3), 9 * c0 // groups),
                                  weight("b1", (c1,), 1)], ["c1"], name="grouped", pads=[1] * 4,
                         kernel_shape=[3, 3], group=groups),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
    ]
    if split:
        nodes.append(helper.make_node("Split", ["r1", ints("sizes", [cut, c1 - cut])], ["kept", "rest"],
                                      name="split", axis=1))
    else:
        nodes += [helper.make_node("Slice", ["r1", ints("s0", [0]), ints("e0", [cut]), ints("a0", [1])], ["kept"],
                                   name="slice0"),
                  helper.make_node("Slice", ["r1", ints("s1", [cut]), ints("e1", [c1]), ints("a1", [1])], ["rest"],
                                   name="slice1")]
    channels = cut + branch
    nodes += [
        helper.make_node("Conv", ["rest", weight("w2", (branch, c1 - cut, 1, 1), c1 - cut), weight("b2", (branch,), 1)],
                         ["c2"], name="branch", kernel_shape=[1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Concat", ["kept", "r2"], ["cat"], name="concat", axis=1),
        helper.make_node("Reshape", ["cat", ints("shape5", [1, 2, channels // 2, size, size])], ["v5"], name="view"),
        helper.make_node("Transpose", ["v5"], ["t5"], name="transpose", perm=[0, 2, 1, 3, 4]),
        helper.make_node("Reshape", ["t5", ints("shape4", [1, channels, size, size])], ["shuffled"], name="unview"),
        helper.make_node("ReduceMean", ["shuffled"], ["mean"], name="mean", axes=[2, 3], keepdims=int(keepdims)),
    ]
    if keepdims:
        nodes.append(helper.make_node("Flatten", ["mean"], ["flat"], name="flatten"))
    nodes.append(helper.make_node("Gemm", ["flat" if keepdims else "mean", weight("wf", (classes, channels), channels),
                                           weight("bf", (classes,), 1)], ["output"], name="fc", transB=1))
    graph = helper.make_graph(nodes, "new_ops",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def session(path):
    model = onnx.load(str(path))
    model.ir_version = min(model.ir_version, 9)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def plans(graph):
    return {"none-1core": make_plan(graph, HW, cores=1),
            "max-allcores": make_plan(graph, HW, fusion="max", cores=HW.cores),
            "random": random_plan(graph, HW, len(graph.nodes))}


def assert_run_equals_onnxruntime(path, seed):
    """Golden outputs, as ``dlfusion run --output`` writes them, == onnxruntime's, on every plan."""
    graph = load_onnx(path, name="new_ops")
    quant = graph.input_quant
    x = np.random.default_rng(seed).standard_normal(quant["shape"]).astype(np.float32)
    sess = session(path)
    reference = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {quant["name"]: x}), strict=True))
    for kind, plan in plans(graph).items():
        binary = compile_graph(graph, HW, plan)
        result = GoldenSimulator(HW).run(binary, {"input": quantize_input(x, quant).reshape(binary.inputs[0].shape)})
        assert result.error is None, str(result.error)
        ours = model_outputs(binary, result.outputs)
        assert ours.keys() == reference.keys()
        for name, value in reference.items():
            assert ours[name].dtype == value.dtype and ours[name].shape == value.shape, kind
            mismatches = int(np.count_nonzero(ours[name] != value))
            assert mismatches == 0, f"{kind}: {mismatches} of {value.size} outputs differ from onnxruntime"
    return graph


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2 ** 16), groups=st.sampled_from([2, 3, 4, 8]), split=st.booleans(),
       keepdims=st.booleans(), activation_type=st.sampled_from(["uint8", "int8"]))
def test_new_ops_equal_onnxruntime_in_both_formats(tmp_path_factory, seed, groups, split, keepdims, activation_type):
    folder = tmp_path_factory.mktemp("new_ops")
    new_ops_model(folder / "float.onnx", seed=seed, groups=groups, split=split, keepdims=keepdims)
    for fmt in FORMATS:
        path = quantize_model(folder / "float.onnx", folder / f"{fmt}.onnx", num_calibration=4, seed=seed,
                              activation_type=activation_type, quant_format=fmt, preprocess=False)
        try:
            load_onnx(path)
        except IRError as error:
            # A known, rare refusal (README, known gaps): a QLinearConcat input whose scale ratio to the output
            # is a small-denominator fraction (a slice's calibrated range inside its source's) has exact ties
            # in onnxruntime's requantization table that no float32 multiplier reproduces.
            assume("cannot reproduce the requantization table" not in str(error))
            # int8 activations in QDQ format: a tensor read by two nodes (the model's channel split) stays int8
            # in onnxruntime on x86-64, which runs its neighbours in float32 (README, known gaps): refused
            if fmt == "qdq" and activation_type == "int8" and "runs this" in str(error) and \
                    "in float32, not as its int8 QLinear kernel" in str(error):
                continue
            raise
        graph = assert_run_equals_onnxruntime(path, seed)
        ops = [node.op for node in graph.nodes]
        assert Op.AVGPOOL in ops and Op.CONCAT in ops
        assert any(node.attrs.groups == groups for node in graph.nodes)
        assert sum(node.attrs.selection for node in graph.nodes) >= 3      # slices/split, shuffle, realignment


@pytest.mark.parametrize("groups, channels, span", [(16, 256, 1), (32, 128, 1), (2, 64, 2), (3, 48, 1), (4, 48, 3)])
def test_a_grouped_conv_skips_its_all_zero_weight_blocks(tmp_path, groups, channels, span):
    """RegNetX's group width 16 on 16 lanes: one input block per output block (full lane use); ResNeXt's
    32 groups of 4 on 128 channels: one (4 of 16 rows used); groups of 12 straddle the blocks (no block is
    all zero: dense); no weight of a skipped block is loaded."""
    folder = tmp_path
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal(shape) / 3).astype(np.float32), name)
             for name, shape in (("w0", (channels, 3, 1, 1)), ("w1", (channels, channels // groups, 3, 3)))]
    nodes = [helper.make_node("Conv", ["input", "w0"], ["c0"], name="conv0", kernel_shape=[1, 1]),
             helper.make_node("Conv", ["c0", "w1"], ["output"], name="grouped", kernel_shape=[3, 3], pads=[1] * 4,
                              group=groups)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 6, 6])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, channels, 6, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(folder / "float.onnx"))
    path = quantize_model(folder / "float.onnx", folder / "q.onnx", num_calibration=2, preprocess=False)
    ir = assert_run_equals_onnxruntime(path, 1)
    node = next(n for n in ir.nodes if n.attrs.groups > 1)
    layer = layer_of(ir, node)
    blocks = channels // HW.lanes
    assert layer.span(HW.lanes) == span
    assert weight_blocks_for(layer, HW.lanes) == 9 * span
    # the lowering's own counts (what the tuner's features read): PE cycles and weight lines of span blocks
    stream = StreamBuilder(0, CountSink())
    lower_group(ir, HW, [node.name], 1, Split.ROWS, [stream], address=lambda name: 0,
                constants={node.name: {"weight_line": 0, "param_line": 0}}, label="grouped")
    assert stream.sink.pe_steps == blocks * 9 * span * 6 * 6
    weight_lines = blocks * 9 * span * HW.lanes
    assert stream.sink.constant_lines == weight_lines + 2 * blocks * HW.param_lines_per_entry
    binary = compile_graph(ir, HW, make_plan(ir, HW))
    segment = next(s for s in binary.segments if s.name == f"weights:{node.name}")
    assert len(segment.data) == weight_lines * HW.lanes     # only the nonzero blocks are in DRAM


def conv_op_conv_model(path, op: str, size: int, inputs=(), outputs=None, **attrs) -> None:
    """conv3x3-relu -> ``op`` (extra constant ``inputs``: (name, array)) -> conv3x3, seeded."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((24, 3, 3, 3)) / 5).astype(np.float32), "w0"),
             numpy_helper.from_array((rng.standard_normal((8, 24, 3, 3)) / 15).astype(np.float32), "w1")]
    inits += [numpy_helper.from_array(np.asarray(value), name) for name, value in inputs if name]
    nodes = [helper.make_node("Conv", ["input", "w0"], ["c0"], name="conv0", kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
             helper.make_node(op, ["r0", *(name for name, _ in inputs)], ["mid"], name="under_test", **attrs),
             helper.make_node("Conv", ["mid", "w1"], ["output"], name="conv1", kernel_shape=[3, 3], pads=[1] * 4)]
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                         [1, 3, size, size])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, outputs)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.mark.parametrize("activation_type", ["uint8", "int8"])
@pytest.mark.parametrize("factors, transform, rounding", [((2, 2), "asymmetric", "floor"),
                                                         ((3, 2), "half_pixel", "round_prefer_floor")])
def test_nearest_resize_by_integer_factors_equals_onnxruntime(tmp_path, factors, transform, rounding,
                                                              activation_type):
    size = 5
    conv_op_conv_model(tmp_path / "float.onnx", "Resize", size,
                       inputs=[("roi", np.zeros(0, np.float32)), ("scales", np.asarray([1, 1, *factors], np.float32))],
                       outputs=[1, 8, size * factors[0], size * factors[1]], mode="nearest",
                       coordinate_transformation_mode=transform, nearest_mode=rounding)
    for fmt in FORMATS:
        path = quantize_model(tmp_path / "float.onnx", tmp_path / f"{fmt}.onnx", num_calibration=2,
                              activation_type=activation_type, quant_format=fmt, preprocess=False)
        graph = assert_run_equals_onnxruntime(path, 2)
        (node,) = [n for n in graph.nodes if n.op is Op.UPSAMPLE]
        assert node.attrs.factors == factors


def test_a_resize_that_is_not_a_pixel_repetition_is_one_line(tmp_path):
    conv_op_conv_model(tmp_path / "float.onnx", "Resize", 4,
                       inputs=[("roi", np.zeros(0, np.float32)), ("scales", np.asarray([1, 1, 2, 2], np.float32))],
                       outputs=[1, 8, 8, 8], mode="linear")
    for fmt in FORMATS:
        path = quantize_model(tmp_path / "float.onnx", tmp_path / f"{fmt}.onnx", num_calibration=2,
                              quant_format=fmt, preprocess=False)
        with pytest.raises(IRError, match="under_test.*only mode 'nearest' is supported, not 'linear'"):
            load_onnx(path)


def test_an_unsupported_op_is_one_line_naming_node_op_format_and_the_supported(tmp_path):
    conv_op_conv_model(tmp_path / "float.onnx", "Softmax", 4, outputs=[1, 8, 4, 4], axis=1)
    for fmt, name, op in (("qoperator", "QOperator", "QLinearSoftmax"), ("qdq", "QDQ", "Softmax")):
        path = quantize_model(tmp_path / "float.onnx", tmp_path / f"{fmt}.onnx", num_calibration=2,
                              quant_format=fmt, preprocess=False)
        with pytest.raises(IRError) as error:
            load_onnx(path)
        message = str(error.value)
        assert "\n" not in message and f"({op})" in message and "under_test" in message
        assert f"unsupported op in this {name} model" in message
        assert all(supported in message for supported in ("ReduceMean", "Slice", "Split", "Resize"))


def test_a_mean_of_an_even_pixel_count_with_its_input_scale_is_refused(tmp_path):
    scale, zero = np.float32(0.05), np.uint8(10)
    inits = [numpy_helper.from_array(np.asarray(v), n) for n, v in (("s", scale), ("z", zero))]
    nodes = [helper.make_node("QuantizeLinear", ["input", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"]),
             helper.make_node("ReduceMean", ["dq"], ["m"], name="mean", axes=[2, 3], keepdims=1),
             helper.make_node("QuantizeLinear", ["m", "s", "z"], ["mq"]),
             helper.make_node("DequantizeLinear", ["mq", "s", "z"], ["output"])]
    for side, refused in ((2, True), (3, False)):
        graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                             [1, 16, side, side])],
                                  [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 16, 1, 1])], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        onnx.save(model, str(tmp_path / "m.onnx"))
        if refused:
            with pytest.raises(IRError, match="even number of pixels"):
                load_onnx(tmp_path / "m.onnx")
        else:   # an odd count: never near a tie, exact against onnxruntime on many inputs
            graph = load_onnx(tmp_path / "m.onnx")
            binary = compile_graph(graph, HW, make_plan(graph, HW))
            sess = session(tmp_path / "m.onnx")
            for seed in range(20):
                x = (np.random.default_rng(seed).standard_normal((1, 16, side, side)) * 4).astype(np.float32)
                result = GoldenSimulator(HW).run(binary, {"input": quantize_input(x, graph.input_quant)[0]})
                np.testing.assert_array_equal(model_outputs(binary, result.outputs)["output"],
                                              sess.run(None, {"input": x})[0])


@pytest.mark.parametrize("activation_type", ["uint8", "int8"])
def test_grouped_conv_and_mean_read_into_the_ir_and_binary_of_the_qoperator_twin(tmp_path, activation_type):
    """The new ops onnxruntime quantizes alike in both formats (grouped conv, ReduceMean): a QDQ model and its
    QOperator twin give the same IR and the same binary (channel moves are not compared: onnxruntime's QDQ
    quantizer quantizes the float values between them where its QOperator quantizer leaves a float island)."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array((rng.standard_normal(shape) / 4).astype(np.float32), name)
             for name, shape in (("w0", (32, 3, 3, 3)), ("w1", (48, 8, 3, 3)), ("wf", (5, 48)))]
    nodes = [helper.make_node("Conv", ["input", "w0"], ["c0"], name="conv0", kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
             helper.make_node("Conv", ["r0", "w1"], ["c1"], name="grouped", kernel_shape=[3, 3], pads=[1] * 4,
                              group=4),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("ReduceMean", ["r1"], ["m"], name="mean", axes=[2, 3], keepdims=0),
             helper.make_node("Gemm", ["m", "wf"], ["output"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "twins", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 5, 5])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "float.onnx"))
    graphs = {fmt: load_onnx(quantize_model(tmp_path / "float.onnx", tmp_path / f"{fmt}.onnx", num_calibration=2,
                                            activation_type=activation_type, quant_format=fmt, preprocess=False),
                             name="twins") for fmt in FORMATS}
    assert_same_ir(graphs["qoperator"], graphs["qdq"])
    plan = make_plan(graphs["qdq"], HW, fusion="max", cores=2)
    assert compile_graph(graphs["qoperator"], HW, plan).to_bytes() == compile_graph(graphs["qdq"], HW, plan).to_bytes()
