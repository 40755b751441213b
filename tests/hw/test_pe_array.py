"""The PE array on the Amaranth simulator: MATMUL, DEPTHWISE, MAX and sparse MATMUL against numpy loops.

The array runs between its scratchpads (activation banks, weight blocks, metadata, accumulators),
fed instruction by instruction through its queue; the accumulators are compared with a
plain numpy loop over the instruction's iterations, in program order.
"""

import numpy as np
import pytest
from amaranth.hdl import Elaboratable, Module
from amaranth.lib import memory, wiring
from hypothesis import given, settings
from hypothesis import strategies as st
from unit_bench import TINY, drive, entry, pack, simulate, unpack

from dlfusion.hw.isa import ErrorCode, MatmulMode, Opcode, Sparsity, encode
from dlfusion.hw.pe_array import PeArray
from dlfusion.hw.sparse import expand, meta_entry

HW = TINY
LANES = HW.lanes
BANKS = HW.sparse_window
SPARSE = [s for s in Sparsity if s is not Sparsity.DENSE]


class PeBench(Elaboratable):
    """The PE array with its act (banked by line address), weight, metadata and accumulator
    scratchpads (initial contents given; ``index``: the ``(L, L)`` indices of each block)."""

    def __init__(self, act, weight, acc, index=None):
        self.pe = PeArray(HW)
        self.act = [memory.Memory(shape=8 * LANES, depth=HW.act_lines // BANKS,
                                  init=[pack(line, 8) for line in act[bank::BANKS]]) for bank in range(BANKS)]
        self.weight = memory.Memory(shape=8 * LANES * LANES, depth=HW.weight_blocks,
                                    init=[pack(block, 8) for block in weight])
        index = np.zeros((HW.weight_blocks, LANES, LANES), np.uint8) if index is None else index
        self.meta = memory.Memory(shape=2 * LANES * LANES, depth=HW.weight_blocks,
                                  init=[pack(meta_entry(block), 8) for block in index])
        self.acc = memory.Memory(shape=32 * LANES, depth=HW.acc_entries, init=[pack(e, 32) for e in acc])

    def elaborate(self, platform):
        m = Module()
        m.submodules.pe = pe = self.pe
        for bank, act in enumerate(self.act):
            m.submodules[f"act{bank}"] = act
            wiring.connect(m, pe.act_read[bank], act.read_port())
        m.submodules.weight = self.weight
        m.submodules.meta = self.meta
        m.submodules.acc = self.acc
        wiring.connect(m, pe.meta_read, self.meta.read_port())
        connect_pe(m, pe, self.weight, self.acc)
        return m


def connect_pe(m, pe, weight, acc):
    acc_w = acc.write_port()
    wiring.connect(m, pe.weight_read, weight.read_port())
    wiring.connect(m, pe.acc_write, acc_w)
    wiring.connect(m, pe.acc_read, acc.read_port(transparent_for=(acc_w,)))


def wrap32(values):
    return ((np.asarray(values, dtype=np.int64) + 2**31) % 2**32) - 2**31


def expected_acc(instructions, act, weight, acc, index=None):
    """Accumulators after ``instructions`` (dicts of MATMUL fields), iteration by iteration."""
    acc = acc.astype(np.int64).copy()
    for f in instructions:
        signed = f.get("in_signed", 0)
        x_all = act.view(np.int8).astype(np.int64) if signed else act.astype(np.int64)
        zp = np.int64(np.int8(np.uint8(f.get("in_zp", 0)))) if signed else np.int64(f.get("in_zp", 0))
        sparsity = f.get("sparse", Sparsity.DENSE)
        for i1 in range(f["n1"]):
            for i0 in range(f["n0"]):
                a = f.get("act_addr", 0) + i1 * f.get("act_s1", 0) + i0 * f.get("act_s0", 0)
                w = f.get("w_addr", 0) + i1 * f.get("w_s1", 0) + i0 * f.get("w_s0", 0)
                c = f.get("acc_addr", 0) + i1 * f.get("acc_s1", 0) + i0 * f.get("acc_s0", 0)
                x = x_all[a] - zp
                mode = f.get("mode", MatmulMode.MATMUL)
                if sparsity is not Sparsity.DENSE:
                    window = [x_all[a + j * f["act_sg"]] - zp for j in range(sparsity.window)]
                    v = np.concatenate(window) @ expand(weight[w], index[w], sparsity)
                elif mode == MatmulMode.MATMUL:
                    v = x @ weight[w].astype(np.int64)
                elif mode == MatmulMode.DEPTHWISE:
                    v = x * weight[w][f["w_row"]].astype(np.int64)
                else:
                    v = x
                if not f.get("accumulate", 0):
                    acc[c] = v
                elif mode == MatmulMode.MAX:
                    acc[c] = np.maximum(acc[c], v)
                else:
                    acc[c] = wrap32(acc[c] + v)
    return acc


def run_pe(instructions, act, weight, acc, *, signals=None, index=None):
    """Run MATMUL ``instructions`` (field dicts); returns (accumulators, UnitRun)."""
    bench = PeBench(act, weight, acc, index)
    signals = signals or [1 << (k % 8) for k in range(len(instructions))]
    words = [encode(Opcode.MATMUL, signal=s, **f) for f, s in zip(instructions, signals, strict=True)]
    entries = [entry(PeArray.PAYLOAD, word, pc=10 + k) for k, word in enumerate(words)]
    result = {}

    async def testbench(ctx):
        result["run"] = await drive(ctx, bench.pe, entries)
        result["acc"] = np.array([unpack(ctx.get(bench.acc.data[i]), LANES, 32, signed=True)
                                  for i in range(HW.acc_entries)])

    simulate(bench, testbench)
    return result["acc"], result["run"]


def random_memories(rng):
    act = rng.integers(0, 256, size=(HW.act_lines, LANES)).astype(np.uint8)
    weight = rng.integers(-128, 128, size=(HW.weight_blocks, LANES, LANES)).astype(np.int8)
    acc = rng.integers(-2**20, 2**20, size=(HW.acc_entries, LANES)).astype(np.int64)
    return act, weight, acc


def test_matmul_reduces_over_rows_and_accumulates_back_to_back():
    rng = np.random.default_rng(1)
    act, weight, acc = random_memories(rng)
    instructions = [
        # Overwrite 3 x 2 entries, then accumulate 4 products into one entry in consecutive
        # cycles (the write of the previous cycle must be forwarded).
        dict(mode=MatmulMode.MATMUL, n1=3, n0=2, act_addr=5, act_s1=7, act_s0=1, w_addr=1, w_s1=1, w_s0=2,
             acc_addr=0, acc_s1=2, acc_s0=1, in_zp=128),
        dict(mode=MatmulMode.MATMUL, accumulate=1, n1=1, n0=4, act_addr=40, act_s0=3, w_addr=0, w_s0=1,
             acc_addr=9, acc_s0=0, in_signed=1, in_zp=0xFB),
    ]
    got, run = run_pe(instructions, act, weight, acc)
    assert run.error is None
    assert [(signal, pc) for _, signal, pc in run.done] == [(1, 10), (2, 11)]
    np.testing.assert_array_equal(got, expected_acc(instructions, act, weight, acc))


def test_depthwise_and_max_modes():
    rng = np.random.default_rng(2)
    act, weight, acc = random_memories(rng)
    instructions = [
        dict(mode=MatmulMode.DEPTHWISE, n1=2, n0=3, act_addr=3, act_s1=10, act_s0=2, w_addr=2, w_s0=1,
             w_row=3, acc_addr=1, acc_s1=3, acc_s0=1, in_zp=7),
        dict(mode=MatmulMode.DEPTHWISE, accumulate=1, n1=1, n0=3, act_addr=20, act_s0=1, w_addr=4, w_row=1,
             acc_addr=1, acc_s0=1),
        dict(mode=MatmulMode.MAX, n1=1, n0=2, act_addr=30, act_s0=1, acc_addr=12, acc_s0=1, in_signed=1),
        # Max-accumulate four lines into one entry, back to back.
        dict(mode=MatmulMode.MAX, accumulate=1, n1=2, n0=2, act_addr=50, act_s1=2, act_s0=1, acc_addr=12,
             in_signed=1, in_zp=3),
    ]
    got, run = run_pe(instructions, act, weight, acc)
    assert run.error is None and len(run.done) == 4
    np.testing.assert_array_equal(got, expected_acc(instructions, act, weight, acc))


def test_pipelined_instructions_keep_the_array_busy():
    # Two instructions of 6 iterations each: the second issues right after the first, so the
    # whole run takes one cycle per iteration plus the pipeline (no bubble between them).
    rng = np.random.default_rng(3)
    act, weight, acc = random_memories(rng)
    first = dict(n1=2, n0=3, act_addr=0, act_s1=3, act_s0=1, acc_addr=0, acc_s1=3, acc_s0=1)
    second = dict(first, accumulate=1, w_addr=1)
    got, run = run_pe([first, second], act, weight, acc)
    assert run.popped[1] - run.popped[0] == 6
    assert run.done[1][0] - run.done[0][0] == 6
    np.testing.assert_array_equal(got, expected_acc([first, second], act, weight, acc))


@pytest.mark.parametrize(("fields", "why"), [
    (dict(n1=1, n0=3, act_addr=HW.act_lines - 2, act_s0=1), "activation"),
    (dict(n1=2, n0=1, w_addr=HW.weight_blocks - 1, w_s1=1), "weight"),
    (dict(n1=1, n0=2, acc_addr=HW.acc_entries - 1, acc_s0=1), "accumulator"),
    (dict(n1=1, n0=1, mode=MatmulMode.DEPTHWISE, w_row=LANES), "depthwise row"),
])
def test_address_beyond_a_scratchpad_is_an_sram_range_error(fields, why):
    rng = np.random.default_rng(4)
    act, weight, acc = random_memories(rng)
    _, run = run_pe([dict(fields)], act, weight, acc)
    assert run.error == (ErrorCode.SRAM_RANGE, 10), why


@st.composite
def matmul_instructions(draw):
    mode = draw(st.sampled_from(list(MatmulMode)))
    n1, n0 = draw(st.integers(1, 3)), draw(st.integers(1, 4))

    def base_and_strides(depth):
        half = (depth - 1) // 2
        s1 = draw(st.integers(0, min(3, half // max(n1 - 1, 1))))
        s0 = draw(st.integers(0, min(3, half // max(n0 - 1, 1))))
        top = depth - 1 - (n1 - 1) * s1 - (n0 - 1) * s0
        return dict(addr=draw(st.integers(0, top)), s1=s1, s0=s0)

    act, w, acc = (base_and_strides(d) for d in (HW.act_lines, HW.weight_blocks, HW.acc_entries))
    return dict(mode=mode, n1=n1, n0=n0, accumulate=draw(st.integers(0, 1)), in_signed=draw(st.integers(0, 1)),
                in_zp=draw(st.integers(0, 255)), w_row=draw(st.integers(0, LANES - 1)),
                act_addr=act["addr"], act_s1=act["s1"], act_s0=act["s0"],
                w_addr=w["addr"], w_s1=w["s1"], w_s0=w["s0"],
                acc_addr=acc["addr"], acc_s1=acc["s1"], acc_s0=acc["s0"])


@settings(max_examples=8, deadline=None)
@given(instructions=st.lists(matmul_instructions(), min_size=1, max_size=3), seed=st.integers(0, 2**32 - 1))
def test_random_instructions_match_numpy(instructions, seed):
    act, weight, acc = random_memories(np.random.default_rng(seed))
    got, run = run_pe(instructions, act, weight, acc)
    assert run.error is None
    assert [pc for _, _, pc in run.done] == list(range(10, 10 + len(instructions)))
    np.testing.assert_array_equal(got, expected_acc(instructions, act, weight, acc))


def random_index(rng):
    return rng.integers(0, 4, size=(HW.weight_blocks, LANES, LANES)).astype(np.uint8)


@pytest.mark.parametrize("sparsity", SPARSE)
def test_sparse_matmul_selects_each_weights_activation_in_its_window(sparsity):
    """Every window line from its bank, each multiplier's activation by its index (random, repeated
    too), both signs, zero points, accumulation back to back; one iteration per cycle as dense."""
    rng = np.random.default_rng(5 + sparsity.value)
    act, weight, acc = random_memories(rng)
    index = random_index(rng)
    instructions = [
        dict(mode=MatmulMode.MATMUL, sparse=sparsity, act_sg=3, n1=2, n0=3, act_addr=1, act_s1=9, act_s0=2,
             w_addr=1, w_s1=2, w_s0=1, acc_addr=0, acc_s1=3, acc_s0=1, in_zp=200),
        dict(mode=MatmulMode.MATMUL, sparse=sparsity, act_sg=5, accumulate=1, n1=1, n0=4, act_addr=30,
             act_s0=1, w_addr=6, acc_addr=9, in_signed=1, in_zp=0xF0),
        dict(mode=MatmulMode.MATMUL, accumulate=1, n1=1, n0=2, act_addr=7, act_s0=1, acc_addr=9),
    ]
    got, run = run_pe(instructions, act, weight, acc, index=index)
    assert run.error is None
    np.testing.assert_array_equal(got, expected_acc(instructions, act, weight, acc, index))
    dense = [dict(f, sparse=Sparsity.DENSE, act_sg=0) for f in instructions]
    _, dense_run = run_pe(dense, act, weight, acc, index=index)
    assert run.done == dense_run.done and run.popped == dense_run.popped


@pytest.mark.parametrize("sparsity", SPARSE)
def test_every_sparse_window_line_is_range_checked(sparsity):
    rng = np.random.default_rng(7)
    act, weight, acc = random_memories(rng)
    last = HW.act_lines - 1 - (sparsity.window - 1) * 7
    ok = dict(mode=MatmulMode.MATMUL, sparse=sparsity, act_sg=7, n1=1, n0=1, act_addr=last)
    assert run_pe([ok], act, weight, acc)[1].error is None
    _, run = run_pe([dict(ok, act_addr=last + 1)], act, weight, acc)
    assert run.error == (ErrorCode.SRAM_RANGE, 10)
