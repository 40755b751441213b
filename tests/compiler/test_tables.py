"""Every lookup table against onnxruntime on all 256 inputs: its QLinear kernels (QLinearSigmoid,
QLinearLeakyRelu, a QLinearSigmoid followed by the QLinearMul of SiLU) and its float operators between a
DequantizeLinear and a QuantizeLinear (Sigmoid, Tanh, HardSigmoid, HardSwish, LeakyRelu, Mul), for uint8
and int8, on random scales and zero points and on power-of-two scales that make exact rounding ties."""

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from dlfusion.compiler import tables

DTYPES = {"uint8": (np.uint8, TensorProto.UINT8), "int8": (np.int8, TensorProto.INT8)}
ATTRS = {"LeakyRelu": {"alpha": 0.1}, "HardSigmoid": {"alpha": 0.25, "beta": 0.375}}


def _run(nodes, inits, elem, outputs=("y",), *, optimize=True):
    """Run the graph; ``optimize=False`` keeps onnxruntime from fusing DequantizeLinear -> op ->
    QuantizeLinear into its QLinear kernel (so the float op runs)."""
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", elem, [256])],
                              [helper.make_tensor_value_info(name, elem, [256]) for name in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": np.arange(256, dtype=np.uint8).view(DTYPES[elem_name(elem)][0])})


def elem_name(elem):
    return "uint8" if elem == TensorProto.UINT8 else "int8"


def _quant_inits(elem, **quant):
    inits = []
    for name, (scale, zero) in quant.items():
        inits += [helper.make_tensor(f"{name}_s", TensorProto.FLOAT, [], [scale]),
                  helper.make_tensor(f"{name}_z", elem, [], [zero])]
    return inits


def onnxruntime_table(op, kind, dtype, xq, yq, **attrs):
    """onnxruntime's output bytes on the 256 inputs: the QLinear kernel (``kind="qlinear"``) or the float op
    between DequantizeLinear and QuantizeLinear (``kind="float"``)."""
    elem = DTYPES[dtype][1]
    inits = _quant_inits(elem, x=xq, y=yq)
    if kind == "qlinear":
        nodes = [helper.make_node(f"QLinear{op}", ["x", "x_s", "x_z", "y_s", "y_z"], ["y"], domain="com.microsoft",
                                  **attrs)]
    else:
        nodes = [helper.make_node("DequantizeLinear", ["x", "x_s", "x_z"], ["xf"]),
                 helper.make_node(op, ["xf"], ["yf"], **attrs),
                 helper.make_node("QuantizeLinear", ["yf", "y_s", "y_z"], ["y"])]
    return _run(nodes, inits, elem, optimize=kind == "qlinear")[0].view(np.uint8)


def onnxruntime_silu(kind, dtype, xq, sq, yq):
    elem = DTYPES[dtype][1]
    inits = _quant_inits(elem, x=xq, s=sq, y=yq)
    if kind == "qlinear":
        nodes = [helper.make_node("QLinearSigmoid", ["x", "x_s", "x_z", "s_s", "s_z"], ["s"], domain="com.microsoft"),
                 helper.make_node("QLinearMul", ["x", "x_s", "x_z", "s", "s_s", "s_z", "y_s", "y_z"], ["y"],
                                  domain="com.microsoft")]
    else:
        nodes = [helper.make_node("DequantizeLinear", ["x", "x_s", "x_z"], ["xf"]),
                 helper.make_node("Sigmoid", ["xf"], ["sf"]),
                 helper.make_node("QuantizeLinear", ["sf", "s_s", "s_z"], ["s"]),
                 helper.make_node("DequantizeLinear", ["s", "s_s", "s_z"], ["sd"]),
                 helper.make_node("Mul", ["xf", "sd"], ["yf"]),
                 helper.make_node("QuantizeLinear", ["yf", "y_s", "y_z"], ["y"])]
    return _run(nodes, inits, elem, optimize=kind == "qlinear")[0].view(np.uint8)


def quantizations(dtype):
    lo, hi = (0, 255) if dtype == "uint8" else (-128, 127)
    random = st.tuples(st.floats(0.002, 0.3).map(lambda v: float(np.float32(v))), st.integers(lo, hi))
    ties = st.tuples(st.sampled_from([2.0 ** -k for k in range(1, 9)]), st.sampled_from([lo, (lo + hi + 1) // 2, hi]))
    return st.one_of(random, ties)


@st.composite
def cases(draw):
    dtype = draw(st.sampled_from(list(DTYPES)))
    return dtype, draw(quantizations(dtype)), draw(quantizations(dtype))


def ours(op, dtype, xq, yq, **attrs):
    signed = dtype == "int8"
    return tables.unary_table(op, xq[0], xq[1], signed, yq[0], yq[1], signed, **attrs)


@pytest.mark.parametrize("op, kinds", [("Sigmoid", ("qlinear", "float")), ("LeakyRelu", ("qlinear", "float")),
                                       ("Tanh", ("float",)), ("HardSigmoid", ("float",)), ("HardSwish", ("float",))])
@settings(max_examples=60, deadline=None)
@given(case=cases())
def test_unary_tables_equal_onnxruntime_on_all_256_inputs(op, kinds, case):
    dtype, xq, yq = case
    attrs = ATTRS.get(op, {})
    for kind in kinds:
        expected = onnxruntime_table(op, kind, dtype, xq, yq, **attrs)
        np.testing.assert_array_equal(ours(op, dtype, xq, yq, **attrs), expected, err_msg=f"{op} {kind} {case}")


@settings(max_examples=60, deadline=None)
@given(case=cases(), s_scale=st.sampled_from([1 / 256, 1 / 255, 2.0 ** -7]))
def test_silu_tables_equal_onnxruntime_on_all_256_inputs(case, s_scale):
    """QLinearSigmoid then QLinearMul (onnxruntime's kernels) and the float Sigmoid, Mul it runs instead."""
    dtype, xq, yq = case
    signed = dtype == "int8"
    sq = (s_scale, -128 if signed else 0)
    x = tables.all_inputs(signed)
    s = tables.apply_table(ours("Sigmoid", dtype, xq, sq), x, signed)
    for kind, multiply in (("qlinear", tables.qlinear_mul), ("float", tables.float_mul)):
        product = multiply(x, xq[0], xq[1], s, sq[0], sq[1], yq[0], yq[1], signed).view(np.uint8)
        np.testing.assert_array_equal(product, onnxruntime_silu(kind, dtype, xq, sq, yq), err_msg=f"{kind} {case}")


def test_the_qlinear_and_float_products_differ_where_onnxruntime_differs():
    """QLinearMul's integer product times one ratio and the float Mul of two dequantized values round
    differently on some inputs: each formula matches its own onnxruntime path only."""
    xq, sq, yq = (0.05, 128), (1 / 256, 0), (0.03, 7)
    x = tables.all_inputs(False)
    s = tables.apply_table(ours("Sigmoid", "uint8", xq, sq), x, False)
    fused = tables.qlinear_mul(x, *xq, s, *sq, *yq, False)
    unfused = tables.float_mul(x, *xq, s, *sq, *yq, False)
    differ = fused != unfused
    assert differ.any()
    assert np.array_equal(fused.view(np.uint8), onnxruntime_silu("qlinear", "uint8", xq, sq, yq))
    assert np.array_equal(unfused.view(np.uint8), onnxruntime_silu("float", "uint8", xq, sq, yq))


def test_rounding_is_half_to_even_at_exact_ties():
    """Power-of-two scales put dequantized values on exact halves of the output step: onnxruntime (and
    the table) round them to even, not away from zero."""
    table = ours("LeakyRelu", "int8", (0.5, 0), (1.0, 0), alpha=0.5)
    values = table.view(np.int8)
    assert values[1] == 0 and values[3] == 2 and values[255] == 0      # 0.5 -> 0, 1.5 -> 2, -0.25 -> -0
    np.testing.assert_array_equal(table, onnxruntime_table("LeakyRelu", "qlinear", "int8", (0.5, 0), (1.0, 0),
                                                           alpha=0.5))
