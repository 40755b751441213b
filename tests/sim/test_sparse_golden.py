"""Sparse MATMUL in the golden simulator: it equals the dense MATMUL of the zero-filled weights.

The weights are random, pruned to the pattern by magnitude (groups with fewer nonzeros than N too),
compressed with :func:`dlfusion.hw.sparse.compress`; the dense program runs the ``M/N`` window lines
as ``M/N`` accumulating dense MATMULs. Both signs, zero points, accumulation, several iterations with
strides, on the tiny test configuration and on 16 lanes. Then the sparse instruction's errors.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_golden import DATA, HW, load, make_binary, simulate  # the tiny configuration, its helpers

from dlfusion.hw.config import HwConfig
from dlfusion.hw.isa import Buffer, ErrorCode, MatmulMode, Opcode, Sparsity, Unit, encode
from dlfusion.hw.sparse import compress, meta_entry, satisfies
from dlfusion.sim.result import ErrorInfo

HW16 = HwConfig(cores=1, act_lines=256, weight_blocks=16, acc_entries=64, param_entries=16, dram_bytes=1 << 20)
SPARSE = [s for s in Sparsity if s is not Sparsity.DENSE]


def pruned(rng, rows: int, lanes: int, sparsity: Sparsity, sparse_groups: float) -> np.ndarray:
    """``(rows, lanes)`` int8 weights (row = input channel) with at most N nonzeros per group of M rows
    (magnitude pruning), some groups emptier still."""
    n, m = sparsity.pattern
    w = rng.integers(-128, 128, (rows, lanes)).astype(np.int8)
    groups = w.reshape(rows // m, m, lanes).astype(np.int16)
    rank = np.argsort(-np.abs(groups), axis=1, kind="stable")
    keep = np.zeros(groups.shape, bool)
    np.put_along_axis(keep, rank[:, :n], True, axis=1)
    keep &= rng.random(groups.shape) >= sparse_groups
    return np.where(keep, groups, 0).astype(np.int8).reshape(rows, lanes)


def run_pair(hw, sparsity, blocks, fields, act_bytes, meta_override=None):
    """The accumulators after the sparse program and after its dense twin."""
    lanes, window = hw.lanes, sparsity.window
    values, metas, dense = [], [], []
    for block in blocks:
        v, index = compress(block, sparsity)
        values.append(v)
        metas.append(meta_entry(index))
        dense += [block[j * lanes:(j + 1) * lanes] for j in range(window)]
    meta_bytes = np.concatenate(metas) if meta_override is None else meta_override
    weight_line = DATA + hw.act_lines
    dense_line = weight_line + len(values) * lanes
    meta_line = dense_line + len(dense) * lanes
    data = [(DATA, act_bytes), (weight_line, np.stack(values).tobytes()), (dense_line, np.stack(dense).tobytes()),
            (meta_line, meta_bytes.tobytes())]
    setup = [load(Buffer.ACT, 0, DATA, hw.act_lines)]
    sparse_words = setup + [
        load(Buffer.WEIGHT, 0, weight_line, len(blocks) * lanes),
        load(Buffer.WEIGHT, 0, meta_line, len(blocks) * hw.meta_lines_per_block, meta=1),
        encode(Opcode.SYNC, unit=Unit.DMA, signal=1),
        encode(Opcode.MATMUL, wait=1, sparse=sparsity, **fields), encode(Opcode.END)]
    dense_words = setup + [load(Buffer.WEIGHT, 0, dense_line, len(dense) * lanes),
                           encode(Opcode.SYNC, unit=Unit.DMA, signal=1)]
    for j in range(window):
        # Window line j of block b is dense block b * window + j; line j of every iteration is act + j * sg.
        dense_words.append(encode(
            Opcode.MATMUL, wait=1 if j == 0 else 0, **dict(
                fields, act_addr=fields["act_addr"] + j * fields["act_sg"], act_sg=0,
                w_addr=fields["w_addr"] * window + j, w_s1=fields["w_s1"] * window, w_s0=fields["w_s0"] * window,
                accumulate=fields["accumulate"] if j == 0 else 1)))
    dense_words.append(encode(Opcode.END))
    sims = [simulate(words, data, hw) for words in (sparse_words, dense_words)]
    for _, result in sims:
        assert result.error is None
    return sims[0][0].cores[0].acc, sims[1][0].cores[0].acc, sims[0][1], sims[1][1]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hw=st.sampled_from([HW, HW16]), sparsity=st.sampled_from(SPARSE), seed=st.integers(0, 2**32 - 1),
       in_signed=st.integers(0, 1), in_zp=st.integers(0, 255), accumulate=st.integers(0, 1),
       n1=st.integers(1, 3), n0=st.integers(1, 4), sg=st.integers(0, 20), empty=st.sampled_from([0.0, 0.3]))
def test_sparse_matmul_equals_dense_of_zero_filled_weights(hw, sparsity, seed, in_signed, in_zp, accumulate,
                                                           n1, n0, sg, empty):
    rng = np.random.default_rng(seed)
    lanes = hw.lanes
    blocks = [pruned(rng, sparsity.window * lanes, lanes, sparsity, empty) for _ in range(3)]
    assert all(satisfies(b.T, sparsity) for b in blocks)
    act_sg = 2 * sg + 1
    fields = dict(mode=MatmulMode.MATMUL, in_signed=in_signed, in_zp=in_zp, accumulate=accumulate,
                  act_addr=int(rng.integers(0, 20)), act_s1=5, act_s0=1, act_sg=act_sg,
                  w_addr=0, w_s1=1, w_s0=int(rng.integers(0, 2)) * (n1 == 1),
                  # (overwriting iterations need distinct entries: the dense twin accumulates its lines)
                  acc_addr=0, acc_s1=n0, acc_s0=int(rng.integers(1 - accumulate, 2)), n1=n1, n0=n0)
    act = rng.integers(0, 256, hw.act_lines * lanes, dtype=np.uint8).tobytes()
    sparse_acc, dense_acc, sparse_result, dense_result = run_pair(hw, sparsity, blocks, fields, act)
    np.testing.assert_array_equal(sparse_acc, dense_acc)
    # One iteration per cycle either way: the sparse MATMUL takes the cycles of one dense MATMUL.
    assert sparse_result.counters[0]["pe_busy"] == n1 * n0 + 2
    assert dense_result.counters[0]["pe_busy"] == sparsity.window * (n1 * n0 + 2)


def test_repeated_indices_add_up():
    """Metadata naming one activation twice (not what compress makes): both products count."""
    hw, sparsity = HW, Sparsity.S2_4
    rng = np.random.default_rng(1)
    blocks = [pruned(rng, 2 * hw.lanes, hw.lanes, sparsity, 0.0)]
    fields = dict(mode=MatmulMode.MATMUL, in_signed=0, in_zp=0, accumulate=0, act_addr=0, act_s1=0, act_s0=0,
                  act_sg=1, w_addr=0, w_s1=0, w_s0=0, acc_addr=0, acc_s1=0, acc_s0=0, n1=1, n0=1)
    act = rng.integers(0, 256, hw.act_lines * hw.lanes, dtype=np.uint8).tobytes()
    zero_meta = np.zeros(hw.meta_lines_per_block * hw.lanes, np.uint8)      # every index 0
    acc, _, _, _ = run_pair(hw, sparsity, blocks, fields, act, meta_override=zero_meta)
    values, _ = compress(blocks[0], sparsity)
    x = np.frombuffer(act, np.uint8)[:2 * hw.lanes].astype(np.int64)
    rows = (np.arange(hw.lanes) // 2) * 4                                    # position 0 of each group
    np.testing.assert_array_equal(acc[0], (x[rows][:, None] * values.astype(np.int64)).sum(axis=0))


def _error(words, hw=HW):
    _, result = simulate(words, (), hw)
    return result.error


@pytest.mark.parametrize("case", ["pattern_absent", "not_matmul_mode", "even_stride", "dense_meta_load",
                                  "meta_other_buffer", "meta_store", "window_out_of_range"])
def test_malformed_sparse_instructions(case):
    one = dict(n1=1, n0=1, act_sg=1, sparse=Sparsity.S1_4)
    dense_hw = HW.baseline()
    only_24 = dataclasses.replace(HW, sparse_patterns=("2:4",))
    words, hw, code = {
        "pattern_absent": ([encode(Opcode.MATMUL, **one)], only_24, ErrorCode.BAD_FIELD),
        "not_matmul_mode": ([encode(Opcode.MATMUL, **dict(one, mode=MatmulMode.DEPTHWISE))], HW, ErrorCode.BAD_FIELD),
        "even_stride": ([encode(Opcode.MATMUL, **dict(one, act_sg=2))], HW, ErrorCode.BAD_FIELD),
        "dense_meta_load": ([load(Buffer.WEIGHT, 0, DATA, 1, meta=1)], dense_hw, ErrorCode.BAD_FIELD),
        "meta_other_buffer": ([load(Buffer.PARAM, 0, DATA, 1, meta=1)], HW, ErrorCode.BAD_FIELD),
        "meta_store": ([encode(Opcode.STORE, buffer=Buffer.ACT, n0=1, n1=1, n2=1, meta=1)], HW, ErrorCode.BAD_FIELD),
        "window_out_of_range": ([encode(Opcode.MATMUL, **dict(one, act_addr=HW.act_lines - 3 * 5, act_sg=5))], HW,
                                ErrorCode.SRAM_RANGE),
    }[case]
    assert _error(words + [encode(Opcode.END)], hw) == ErrorInfo(code, 0, 0)
    if case == "window_out_of_range":     # one line less far: in range
        assert _error([encode(Opcode.MATMUL, **dict(one, act_addr=HW.act_lines - 3 * 5 - 1, act_sg=5)),
                       encode(Opcode.END)]) is None
    if case == "dense_meta_load":
        assert _error(words + [encode(Opcode.END)], HW) is None


def test_metadata_store_range():
    """The metadata store is ``weight_blocks * L/4`` lines: a LOAD past it is SRAM_RANGE."""
    assert HW.meta_lines == HW.weight_blocks * HW.lanes * HW.lanes // 4 // HW.lanes
    ok = [load(Buffer.WEIGHT, HW.meta_lines - 1, DATA, 1, meta=1), encode(Opcode.END)]
    bad = [load(Buffer.WEIGHT, HW.meta_lines, DATA, 1, meta=1), encode(Opcode.END)]
    assert _error(ok) is None
    assert _error(bad) == ErrorInfo(ErrorCode.SRAM_RANGE, 0, 0)


def test_binary_roundtrip_keeps_dense_configurations():
    """A HwConfig without sparsity hashes as before sparsity existed; with it, its header says so."""
    binary = make_binary([encode(Opcode.END)], hw=HW)
    assert binary.hw.sparse_patterns == ("2:4", "1:4")
    assert HW.baseline().identity().get("sparse_patterns") is None
    assert HW.identity()["sparse_patterns"] == ["2:4", "1:4"]
