"""Requantization and quantized add against onnxruntime: zero mismatches.

REQUANT is checked against com.microsoft ``QGemm`` with an all-zero ``A``
(zero point 0), so that its int32 accumulator is exactly the bias ``C``; the
requantization multiplier onnxruntime uses is

    mult[c] = float32(float32(a_scale * b_scale[c]) / y_scale)

(``alpha * a_scale * b_scale[c]`` in float32, then divided by ``y_scale``; with
``alpha = 1`` the first product is exact). That is the formula the compiler
must use: :func:`test_qgemm_multiplier_formula` builds accumulators on which
the plausible alternatives (``a * (b / y)``, a float64 product, ``b * (1/y)``)
give different bytes, and only this one matches.

ADD is checked against com.microsoft ``QLinearAdd`` with the parameters of
:func:`dlfusion.sim.golden.qlinear_add_params`, over all 65536 input pairs.
"""

from __future__ import annotations

import numpy as np
import pytest

from dlfusion.hw.binary import Binary, Segment, Stream, Tensor
from dlfusion.hw.config import HwConfig
from dlfusion.hw.isa import Buffer, Opcode, encode, encode_program
from dlfusion.hw.numerics import qlinear_add, qlinear_add_params, requantize
from dlfusion.sim.runtime import run

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
TYPES = {np.int8: (TensorProto.INT8, -128, 127), np.uint8: (TensorProto.UINT8, 0, 255)}


def _session(graph):
    model = helper.make_model(graph, opset_imports=OPSETS)
    model.ir_version = 9          # onnxruntime 1.31 rejects newer IR versions
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def ort_multiplier(a_scale, b_scale, y_scale):
    """The float32 requantization multiplier onnxruntime's QGemm applies per column."""
    return ((np.float32(a_scale) * np.asarray(b_scale, np.float32)) / np.float32(y_scale)).astype(np.float32)


def qgemm(acc, a_scale, b_scale, y_scale, y_zp, y_type):
    """onnxruntime's QGemm output for int32 accumulators ``acc`` (one row, A = 0, C = acc).

    onnxruntime's kernels: A uint8 gives uint8 outputs, A int8 (with B int8) gives int8.
    """
    n, k = len(acc), 4
    elem, _, _ = TYPES[y_type]
    per_column = np.ndim(b_scale) > 0
    init = [
        numpy_helper.from_array(np.array(a_scale, np.float32), "a_scale"),
        numpy_helper.from_array(np.array(0, y_type), "a_zp"),
        numpy_helper.from_array(np.zeros((k, n), np.int8), "B"),
        numpy_helper.from_array(np.asarray(b_scale, np.float32), "b_scale"),
        numpy_helper.from_array(np.zeros(n, np.int8) if per_column else np.array(0, np.int8), "b_zp"),
        numpy_helper.from_array(np.asarray(acc, np.int32), "C"),
        numpy_helper.from_array(np.array(y_scale, np.float32), "y_scale"),
        numpy_helper.from_array(np.array(y_zp, y_type), "y_zp"),
    ]
    node = helper.make_node("QGemm", ["A", "a_scale", "a_zp", "B", "b_scale", "b_zp", "C", "y_scale", "y_zp"],
                            ["Y"], domain="com.microsoft")
    graph = helper.make_graph([node], "qgemm", [helper.make_tensor_value_info("A", elem, [1, k])],
                              [helper.make_tensor_value_info("Y", elem, [1, n])], init)
    return _session(graph).run(None, {"A": np.zeros((1, k), y_type)})[0][0]


def golden_requant(acc, mult, y_zp, y_type):
    _, lo, hi = TYPES[y_type]
    acc = np.asarray(acc, np.int32)
    out = requantize(acc[None, :], np.zeros(len(acc), np.int32), np.broadcast_to(mult, acc.shape),
                     out_zp=int(y_zp), clamp_lo=lo, clamp_hi=hi, out_signed=y_type is np.int8)[0]
    return out.view(y_type)


def random_accumulators(rng, n):
    acc = rng.integers(-2**31, 2**31, n, dtype=np.int64)
    acc[: n // 4] = rng.integers(-20000, 20000, n // 4)
    acc[n // 4: n // 2] = rng.integers(-300, 300, n // 4)
    acc[:8] = [-2**31, 2**31 - 1, 0, 1, -1, 2**24 + 1, -(2**24 + 1), 2**30]
    return acc.astype(np.int32)


# --------------------------------------------------------------------------- REQUANT vs QGemm

@pytest.mark.parametrize("y_type", [np.int8, np.uint8])
@pytest.mark.parametrize("per_column", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_qgemm_random(y_type, per_column, seed):
    rng = np.random.default_rng(seed * 2 + per_column)
    n = 8192
    acc = random_accumulators(rng, n)
    _, lo, hi = TYPES[y_type]
    a_scale = np.float32(np.exp(rng.uniform(np.log(1e-3), np.log(0.5))))
    b_scale = np.exp(rng.uniform(np.log(1e-3), np.log(0.5), n if per_column else None)).astype(np.float32)
    y_scale = np.float32(np.exp(rng.uniform(np.log(1e-3), np.log(1.0))))
    y_zp = int(rng.integers(lo, hi + 1))
    expected = qgemm(acc, a_scale, b_scale, y_scale, y_zp, y_type)
    got = golden_requant(acc, ort_multiplier(a_scale, b_scale, y_scale), y_zp, y_type)
    assert np.count_nonzero(got != expected) == 0
    # not everything saturates: the comparison covers the interior of the range
    assert np.count_nonzero((expected > lo) & (expected < hi)) > n // 10


@pytest.mark.parametrize("y_type", [np.int8, np.uint8])
@pytest.mark.parametrize("scales", [(1.0, 0.5, 1.0), (0.5, 0.5, 1.0), (0.25, 0.5, 1.0), (1.0, 1.0, 4.0)])
def test_qgemm_ties_round_half_to_even(y_type, scales):
    rng = np.random.default_rng(7)
    _, lo, hi = TYPES[y_type]
    mult = ort_multiplier(*scales)
    assert float(mult) in (0.5, 0.25, 0.125)
    step = round(1 / float(mult))
    acc = (rng.integers(-500, 500, 4096) * step + step // 2).astype(np.int32)     # all exact .5 ties
    y_zp = 3 if y_type is np.int8 else 130
    expected = qgemm(acc, *scales, y_zp, y_type)
    got = golden_requant(acc, mult, y_zp, y_type)
    assert np.count_nonzero(got != expected) == 0
    # rounding half away from zero would have disagreed
    away = np.clip(np.trunc(acc * float(mult) + np.sign(acc) * 0.5) + y_zp, lo, hi)
    assert np.count_nonzero(away != expected.astype(np.int64)) > 100


@pytest.mark.parametrize("y_type", [np.int8, np.uint8])
def test_qgemm_saturation_both_sides(y_type):
    rng = np.random.default_rng(3)
    _, lo, hi = TYPES[y_type]
    acc = np.concatenate([rng.integers(-2**31, -2**20, 2000), rng.integers(2**20, 2**31, 2000),
                          [-2**31, 2**31 - 1]]).astype(np.int32)
    y_zp = 5 if y_type is np.int8 else 200
    for y_scale in (0.01, 1e-6):
        expected = qgemm(acc, 0.05, 0.02, y_scale, y_zp, y_type)
        got = golden_requant(acc, ort_multiplier(0.05, 0.02, y_scale), y_zp, y_type)
        assert np.count_nonzero(got != expected) == 0
        assert (expected == lo).sum() > 1000 and (expected == hi).sum() > 1000


def test_qgemm_multiplier_formula():
    """Only float32(float32(a*b)/y) matches: accumulators chosen where the candidates disagree."""
    rng = np.random.default_rng(11)
    n = 2048
    a_scale = np.float32(0.0011)
    y_scale = np.float32(1.37)
    b_scale = rng.uniform(0.002, 0.02, n).astype(np.float32)
    candidates = {
        "float32(float32(a*b)/y)": ort_multiplier(a_scale, b_scale, y_scale),
        "float32(a*float32(b/y))": (a_scale * (b_scale / y_scale)).astype(np.float32),
        "float64": (np.float64(a_scale) * b_scale / y_scale).astype(np.float32),
        "float32(a*b*(1/y))": (a_scale * b_scale * (np.float32(1) / y_scale)).astype(np.float32),
    }
    names = list(candidates)
    acc = np.zeros(n, np.int64)
    for c in range(n):
        mults = [candidates[name][c] for name in names]
        base = int(round((rng.integers(-100, 100) + 0.5) / float(mults[0])))
        xs = np.arange(base - 2000, base + 2000, dtype=np.int64)
        outs = [golden_requant(xs, np.float32(m), 0, np.int8) for m in mults]
        differ = np.flatnonzero(np.any([o != outs[0] for o in outs[1:]], axis=0))
        acc[c] = xs[differ[0]] if len(differ) else base
    acc = acc.astype(np.int32)
    expected = qgemm(acc, a_scale, b_scale, y_scale, 0, np.int8)
    mismatches = {name: int(np.count_nonzero(golden_requant(acc, candidates[name], 0, np.int8) != expected))
                  for name in names}
    assert mismatches["float32(float32(a*b)/y)"] == 0, mismatches
    assert all(count > 0 for name, count in mismatches.items() if name != names[0]), mismatches


def test_simulator_requant_matches_qgemm():
    """End to end: LOAD bias and multipliers, clear the accumulators with a MATMUL on zero
    activations, REQUANT every parameter pair, STORE, and compare with onnxruntime."""
    hw = HwConfig(pe_rows=4, pe_cols=4, act_lines=256, weight_blocks=16, acc_entries=64, param_entries=16,
                  dram_bytes=65536, dram_bytes_per_cycle=4)
    lanes, pairs = hw.lanes, hw.param_entries // 2
    n = pairs * lanes
    rng = np.random.default_rng(5)
    for y_type in (np.int8, np.uint8):
        _, lo, hi = TYPES[y_type]
        for trial in range(6):
            acc = random_accumulators(rng, n)
            if trial == 0:
                acc[8:] = rng.integers(-200, 200, n - 8) * 2 + 1          # ties with multiplier 0.5
                a_scale, b_scale, y_scale = np.float32(1.0), np.full(n, 0.5, np.float32), np.float32(1.0)
            else:
                a_scale = np.float32(rng.uniform(1e-3, 0.1))
                b_scale = rng.uniform(1e-3, 0.1, n).astype(np.float32)
                y_scale = np.float32(rng.uniform(1e-3, 0.1))
            y_zp = int(rng.integers(lo, hi + 1))
            mult = ort_multiplier(a_scale, b_scale, y_scale)
            params = np.zeros((hw.param_entries, lanes), np.uint32)
            params[0::2] = acc.reshape(pairs, lanes).view(np.uint32)
            params[1::2] = mult.reshape(pairs, lanes).view(np.uint32)
            param_line, out_line = 1024, 2048
            zp_byte = y_zp % 256
            words = [encode(Opcode.LOAD, buffer=Buffer.PARAM, dram_addr=param_line, n0=hw.param_lines, n1=1,
                            n2=1, signal=0b10),
                     encode(Opcode.MATMUL, accumulate=0, act_addr=200, n1=1, n0=pairs, acc_s0=1, signal=0b1)]
            words += [encode(Opcode.REQUANT, wait=0b11 if p == 0 else 0, acc_addr=p, n1=1, n0=1,
                             param_addr=2 * p, out_addr=p, out_signed=int(y_type is np.int8), out_zp=zp_byte,
                             clamp_lo=lo % 256, clamp_hi=hi % 256, signal=0b100 if p == pairs - 1 else 0)
                      for p in range(pairs)]
            words += [encode(Opcode.STORE, wait=0b100, buffer=Buffer.ACT, dram_addr=out_line, n0=pairs, n1=1,
                             n2=1),
                      encode(Opcode.END)]
            binary = Binary(hw, [Stream(0, 0, len(words))],
                            [Segment("program", 0, encode_program(words)),
                             Segment("params", param_line, params.astype("<u4").tobytes())],
                            outputs=[Tensor("y", out_line, (n,), np.dtype(y_type).name, "flat")])
            result = run(binary, {}, check=True)
            expected = qgemm(acc, a_scale, b_scale, y_scale, y_zp, y_type)
            np.testing.assert_array_equal(result.outputs["y"], expected)


# --------------------------------------------------------------------------- ADD vs QLinearAdd

def qlinear_add_ort(a, b, sa, za, sb, zb, sc, zc, x_type):
    elem, _, _ = TYPES[x_type]
    init = [numpy_helper.from_array(np.array(v, t), name) for v, t, name in (
        (sa, np.float32, "sa"), (za, x_type, "za"), (sb, np.float32, "sb"), (zb, x_type, "zb"),
        (sc, np.float32, "sc"), (zc, x_type, "zc"))]
    node = helper.make_node("QLinearAdd", ["A", "sa", "za", "B", "sb", "zb", "sc", "zc"], ["C"],
                            domain="com.microsoft")
    n = len(a)
    graph = helper.make_graph([node], "qadd", [helper.make_tensor_value_info("A", elem, [n]),
                                               helper.make_tensor_value_info("B", elem, [n])],
                              [helper.make_tensor_value_info("C", elem, [n])], init)
    return _session(graph).run(None, {"A": a, "B": b})[0]


def all_pairs(x_type):
    values = np.arange(256, dtype=np.uint8).view(x_type)
    return np.repeat(values, 256), np.tile(values, 256)


def random_add_config(rng, x_type):
    _, lo, hi = TYPES[x_type]
    scales = np.exp(rng.uniform(np.log(1e-3), np.log(1.0), 3)).astype(np.float32)
    zps = rng.integers(lo, hi + 1, 3)
    return scales, zps


@pytest.mark.parametrize("x_type", [np.int8, np.uint8])
@pytest.mark.parametrize("seed", range(6))
def test_qlinear_add_all_pairs(x_type, seed):
    rng = np.random.default_rng(100 + seed)
    _, lo, hi = TYPES[x_type]
    (sa, sb, sc), (za, zb, zc) = random_add_config(rng, x_type)
    if seed == 0:      # similar scales: most outputs are interior, many near .5
        sa, sb, sc = np.float32(0.02), np.float32(0.03), np.float32(0.05)
    a, b = all_pairs(x_type)
    expected = qlinear_add_ort(a, b, sa, za, sb, zb, sc, zc, x_type)
    ra, rb, fixed = qlinear_add_params(sa, int(za), sb, int(zb), sc, int(zc))
    got = qlinear_add(a, b, ra, rb, fixed, out_zp=0, clamp_lo=lo, clamp_hi=hi, out_signed=x_type is np.int8)
    assert np.count_nonzero(got.view(x_type) != expected) == 0
    if seed == 0:
        assert np.count_nonzero((expected > lo) & (expected < hi)) > 20000


def test_qlinear_add_sweep_distinguishes_the_formula():
    """80 configurations with comparable scales (mostly interior outputs): zero mismatches, while
    swapping the two fmas or computing ``fixed`` without the fused multiply-add does mismatch."""
    from dlfusion.hw.numerics import fma_f32, round_to_output
    mismatches = {"golden": 0, "swapped fmas": 0, "unfused fixed": 0}
    rng = np.random.default_rng(1)
    for x_type in (np.int8, np.uint8):
        _, lo, hi = TYPES[x_type]
        signed = x_type is np.int8
        a, b = all_pairs(x_type)
        af, bf = a.astype(np.float32), b.astype(np.float32)
        for _ in range(40):
            sc = np.float32(np.exp(rng.uniform(np.log(1e-3), np.log(1.0))))
            sa, sb = (sc * np.exp(rng.uniform(np.log(0.2), np.log(2.0), 2))).astype(np.float32)
            za, zb, zc = (int(v) for v in rng.integers(lo, hi + 1, 3))
            expected = qlinear_add_ort(a, b, sa, za, sb, zb, sc, zc, x_type)
            ra, rb, fixed = qlinear_add_params(sa, za, sb, zb, sc, zc)
            unfused = np.float32(np.float32(zc) - np.float32(ra * np.float32(za) + rb * np.float32(zb)))
            results = {
                "golden": qlinear_add(a, b, ra, rb, fixed, out_zp=0, clamp_lo=lo, clamp_hi=hi,
                                      out_signed=signed),
                "swapped fmas": round_to_output(fma_f32(bf, rb, fma_f32(af, ra, fixed)), 0, lo, hi, signed),
                "unfused fixed": qlinear_add(a, b, ra, rb, unfused, out_zp=0, clamp_lo=lo, clamp_hi=hi,
                                             out_signed=signed),
            }
            for name, got in results.items():
                mismatches[name] += int(np.count_nonzero(got.view(x_type) != expected))
    assert mismatches["golden"] == 0, mismatches
    assert mismatches["swapped fmas"] > 0 and mismatches["unfused fixed"] > 0, mismatches


@pytest.mark.parametrize("x_type", [np.int8, np.uint8])
def test_simulator_add_matches_qlinear_add(x_type):
    """End to end on a 16-lane configuration: every (a, b) pair through one ADD instruction."""
    hw = HwConfig(pe_rows=16, pe_cols=16, act_lines=16384, weight_blocks=16, acc_entries=64, param_entries=16,
                  dram_bytes=1 << 20)
    _, lo, hi = TYPES[x_type]
    rng = np.random.default_rng(17)
    (sa, sb, sc), (za, zb, zc) = random_add_config(rng, x_type)
    sa, sb, sc = np.float32(0.021), np.float32(0.034), np.float32(0.047)
    a, b = all_pairs(x_type)
    lines = len(a) // hw.lanes                  # 4096 = 64 x 64
    ra, rb, fixed = qlinear_add_params(sa, int(za), sb, int(zb), sc, int(zc))
    params = np.array([[v] * hw.lanes for v in (ra, rb, fixed)], np.float32)
    a_line, b_line, p_line, out_line = 8192, 8192 + lines, 8192 + 2 * lines, 8192 + 3 * lines

    def dma(opcode, sram, dram, **kw):
        return encode(opcode, sram_addr=sram, sram_s1=64, dram_addr=dram, dram_s1=64, n0=64, n1=64, n2=1,
                      **kw)

    words = [dma(Opcode.LOAD, 0, a_line, buffer=Buffer.ACT),
             dma(Opcode.LOAD, lines, b_line, buffer=Buffer.ACT),
             encode(Opcode.LOAD, buffer=Buffer.PARAM, sram_addr=0, dram_addr=p_line,
                    n0=3 * hw.param_lines_per_entry, n1=1, n2=1, signal=1),
             encode(Opcode.ADD, wait=1, signal=2, a_addr=0, a_s1=64, a_s0=1, b_addr=lines, b_s1=64, b_s0=1,
                    out_addr=2 * lines, out_s1=64, out_s0=1, n1=64, n0=64, param_addr=0,
                    in_signed=int(x_type is np.int8), out_signed=int(x_type is np.int8), out_zp=0,
                    clamp_lo=lo % 256, clamp_hi=hi % 256),
             dma(Opcode.STORE, 2 * lines, out_line, buffer=Buffer.ACT, wait=2),
             encode(Opcode.END)]
    name = np.dtype(x_type).name
    binary = Binary(hw, [Stream(0, 0, len(words))],
                    [Segment("program", 0, encode_program(words)),
                     Segment("params", p_line, params.astype("<f4").tobytes())],
                    inputs=[Tensor("a", a_line, (len(a),), name, "flat"),
                            Tensor("b", b_line, (len(b),), name, "flat")],
                    outputs=[Tensor("y", out_line, (len(a),), name, "flat")])
    result = run(binary, {"a": a, "b": b}, check=True)
    expected = qlinear_add_ort(a, b, sa, za, sb, zb, sc, zc, x_type)
    assert np.count_nonzero(result.outputs["y"] != expected) == 0
    assert result.counters[0]["ppu_busy"] == lines + 9
