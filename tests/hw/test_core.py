"""One core on the Amaranth simulator: fetch, dispatch, semaphores and the three units together.

The core runs behind the real memory system with a DRAM store holding its instruction
stream (made with :func:`encode` / :func:`encode_program`) and data; a one-core barrier
passes as soon as the core arrives. Checked: a stream runs to END with the right result
in DRAM and counters, semaphores order the units (the same stream without its waits
computes something else), a table loaded by the DMA is what the PPU looks up, and malformed
instructions stop the core with the matching :class:`ErrorCode` and ``error_pc``.
"""

import dataclasses

import numpy as np
import pytest
from amaranth.hdl import Elaboratable, Module, Value
from amaranth.lib import wiring
from unit_bench import TINY, backing_store, pack, simulate, unpack

from dlfusion.hw.core import COUNTER_BITS, COUNTER_NAMES, Core, Semaphores
from dlfusion.hw.dma import dma_tag_layout
from dlfusion.hw.isa import (
    _PAYLOAD_FIELDS,
    Buffer,
    ErrorCode,
    MatmulMode,
    Opcode,
    Sparsity,
    Unit,
    encode,
    encode_program,
)
from dlfusion.hw.memsys import MemorySystem
from dlfusion.hw.numerics import requantize
from dlfusion.hw.sparse import expand, meta_entry, meta_indices

HW = TINY
NO_TABLES = dataclasses.replace(TINY, lut_tables=0)
LANES = HW.lanes
DATA, PARAMS, OUTPUT, TABLE = 512, 600, 700, 800     # DRAM lines


class CoreBench(Elaboratable):
    def __init__(self, dram, hw=HW):
        self.core = Core(hw, 0)
        self.memsys = MemorySystem(hw, [0, dma_tag_layout(hw).size])
        self.dram_init = dram
        self.dram = None

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self.core
        m.submodules.memsys = memsys = self.memsys
        wiring.connect(m, core.fetch, memsys.req0)
        wiring.connect(m, core.fetch_resp, memsys.resp0)
        wiring.connect(m, core.dma, memsys.req1)
        wiring.connect(m, core.dma_resp, memsys.resp1)
        self.dram = backing_store(m, memsys.mem, self.dram_init)
        m.d.comb += [core.barrier_go.eq(core.barrier_arrive), core.halt.eq(core.error)]
        return m


def image(words, *, at=0, data=()):
    """DRAM lines: the instruction stream at line ``at``, then (line, bytes) data segments."""
    dram = [0] * HW.dram_lines
    code = encode_program(words)
    for k in range(0, len(code), HW.line_bytes):
        dram[at + k // HW.line_bytes] = int.from_bytes(code[k:k + HW.line_bytes], "little")
    for line, values in data:
        values = np.asarray(values, dtype=np.uint8).reshape(-1, LANES)
        for k, row in enumerate(values):
            dram[line + k] = pack(row, 8)
    return dram


def run_core(words, *, at=0, data=(), max_cycles=3000, hw=HW):
    """Start the core on ``words``; returns dict(finished, error, cycles, counters, pc, dram)."""
    bench = CoreBench(image(words, at=at, data=data), hw)
    core = bench.core
    result = {}

    async def testbench(ctx):
        ctx.set(core.enable, 1)
        ctx.set(core.prog_addr, at)
        ctx.set(core.start, 1)
        await ctx.tick()
        ctx.set(core.start, 0)
        finished = error = False
        cycles = 0
        for _ in range(max_cycles):
            _, _, finished, error = await ctx.tick().sample(core.finished, core.error)
            cycles += 1
            if finished or error:
                break
        else:
            raise AssertionError(f"the core neither finished nor stopped in {max_cycles} cycles")
        result["finished"] = bool(finished)
        result["cycles"] = cycles
        result["error"] = (ErrorCode(ctx.get(Value.cast(core.error_code))), ctx.get(core.error_pc)) if error else None
        counters = ctx.get(Value.cast(core.counters))
        result["counters"] = {name: (counters >> (COUNTER_BITS * k)) & ((1 << COUNTER_BITS) - 1)
                              for k, name in enumerate(COUNTER_NAMES)}
        result["pc"] = ctx.get(core.pc)
        for _ in range(4):
            await ctx.tick()
        result["dram"] = np.array([unpack(ctx.get(bench.dram.data[i]), LANES, 8) for i in range(HW.dram_lines)],
                                  dtype=np.uint8)

    simulate(bench, testbench)
    return result


def requant_stream(*, waits: bool, lut_table: int | None = None, look_up: bool = True):
    """LOAD 48 activation lines, LOAD the parameters, copy the last 4 lines to the accumulators
    (MAX, not accumulating), REQUANT them, STORE the result. With ``lut_table``, first LOAD the
    table at DRAM line ``TABLE`` into that table of the store, which the REQUANT then looks up
    (if ``look_up``)."""
    sem = (lambda mask: mask) if waits else (lambda mask: 0)
    table_load, look_up_fields = [], {}
    if lut_table is not None:
        lines = HW.lut_lines_per_table
        table_load = [encode(Opcode.LOAD, signal=0b10000, buffer=Buffer.LUT, sram_addr=lut_table * lines,
                             dram_addr=TABLE, n0=lines, n1=1, n2=1)]
        look_up_fields = dict(lut=int(look_up), lut_table=lut_table)
    return [
        *table_load,
        encode(Opcode.LOAD, signal=0b001, buffer=Buffer.ACT, sram_addr=0, dram_addr=DATA, n0=48, n1=1, n2=1),
        encode(Opcode.LOAD, signal=0b010, buffer=Buffer.PARAM, sram_addr=0, dram_addr=PARAMS,
               n0=2 * HW.param_lines_per_entry, n1=1, n2=1),
        encode(Opcode.MATMUL, wait=sem(0b001), signal=0b100, mode=MatmulMode.MAX, act_addr=44, act_s0=1,
               acc_addr=0, acc_s0=1, n1=1, n0=4, in_signed=1, in_zp=3),
        encode(Opcode.REQUANT, wait=sem(0b110 | (0b10000 if table_load else 0)), signal=0b1000, acc_addr=0,
               acc_s0=1, out_addr=60, out_s0=1, n1=1, n0=4, param_addr=0, out_signed=1, out_zp=5, clamp_lo=0x80,
               clamp_hi=0x7F, **look_up_fields),
        encode(Opcode.STORE, wait=sem(0b1000), buffer=Buffer.ACT, sram_addr=60, dram_addr=OUTPUT, n0=4, n1=1, n2=1),
        encode(Opcode.END),
    ]


def requant_data():
    rng = np.random.default_rng(5)
    x = rng.integers(1, 256, size=(48, LANES)).astype(np.uint8)
    bias = rng.integers(-50, 50, size=LANES).astype(np.int32)
    mult = rng.uniform(0.3, 0.9, size=LANES).astype(np.float32)
    params = np.concatenate([bias.view(np.uint8), mult.view(np.uint8)])
    expected = requantize(x[44:48].view(np.int8).astype(np.int64) - 3, bias, mult, out_zp=5, clamp_lo=-128,
                          clamp_hi=127, out_signed=True).view(np.uint8)
    return [(DATA, x), (PARAMS, params)], expected


def test_stream_runs_to_end_and_semaphores_order_the_units():
    data, expected = requant_data()
    words = requant_stream(waits=True)
    run = run_core(words, data=data)
    assert run["finished"] and run["error"] is None
    np.testing.assert_array_equal(run["dram"][OUTPUT:OUTPUT + 4], expected)
    counters = run["counters"]
    assert counters["instructions"] == len(words)
    assert counters["sem_wait"] > 0                 # the MATMUL waited for the long LOAD
    assert 0 < counters["pe_busy"] < counters["dma_busy"]
    assert counters["ppu_busy"] > 0 and counters["barrier_wait"] == 0
    assert run["pc"] == len(words)

    # The same stream without its semaphore waits reads the activations before they arrive.
    unordered = run_core(requant_stream(waits=False), data=data)
    assert unordered["finished"] and unordered["counters"]["sem_wait"] == 0
    assert not np.array_equal(unordered["dram"][OUTPUT:OUTPUT + 4], expected)


def test_a_loaded_table_is_what_the_ppu_looks_up_two_cycles_later():
    data, expected = requant_data()
    table = np.random.default_rng(9).integers(0, 256, size=256).astype(np.uint8)
    data = [*data, (TABLE, table)]
    run = run_core(requant_stream(waits=True, lut_table=2), data=data)
    assert run["finished"] and run["error"] is None
    np.testing.assert_array_equal(run["dram"][OUTPUT:OUTPUT + 4], table[expected])
    plain = run_core(requant_stream(waits=True, lut_table=2, look_up=False), data=data)
    np.testing.assert_array_equal(plain["dram"][OUTPUT:OUTPUT + 4], expected)
    # The STORE waits for the REQUANT's semaphore the two cycles longer.
    assert run["counters"] == dict(plain["counters"], ppu_busy=plain["counters"]["ppu_busy"] + 2,
                                   sem_wait=plain["counters"]["sem_wait"] + 2)
    assert run["cycles"] == plain["cycles"] + 2


def test_tables_change_nothing_for_a_stream_without_look_ups():
    data, _ = requant_data()
    words = requant_stream(waits=True)
    with_tables, without = run_core(words, data=data), run_core(words, data=data, hw=NO_TABLES)
    for key in ("finished", "error", "cycles", "counters", "pc"):
        assert with_tables[key] == without[key], key
    np.testing.assert_array_equal(with_tables["dram"], without["dram"])


def test_a_table_load_is_a_bad_field_only_without_tables():
    # Buffer 3 (lut) was reserved before lookup tables; without them it still is.
    words = [SYNC, with_field(encode(Opcode.LOAD, n0=1, n1=1, n2=1), Opcode.LOAD, "buffer", 3), END]
    assert run_core(words, hw=NO_TABLES)["error"] == (ErrorCode.BAD_FIELD, 1)
    run = run_core(words)
    assert run["finished"] and run["error"] is None


def test_barrier_and_sync_complete():
    words = [encode(Opcode.SYNC, signal=1, unit=Unit.PE), encode(Opcode.SYNC, wait=1, unit=Unit.PPU),
             encode(Opcode.BARRIER, core_mask=1), encode(Opcode.END)]
    run = run_core(words)
    assert run["finished"] and run["error"] is None
    assert run["counters"]["instructions"] == 4 and run["counters"]["barrier_wait"] == 1


def with_field(word, opcode, name, value):
    offset, width, _ = _PAYLOAD_FIELDS[opcode][name]
    return (word & ~(((1 << width) - 1) << offset)) | (value << offset)


SYNC = encode(Opcode.SYNC, unit=Unit.DMA)
END = encode(Opcode.END)


@pytest.mark.parametrize(("words", "code", "pc"), [
    pytest.param([SYNC, encode(Opcode.END) | 0x3F, END], ErrorCode.BAD_OPCODE, 1, id="opcode_63"),
    pytest.param([SYNC, SYNC, 0], ErrorCode.BAD_OPCODE, 2, id="zeroed_memory"),
    pytest.param([encode(Opcode.STORE, buffer=Buffer.PARAM, n0=1, n1=1, n2=1), END], ErrorCode.BAD_FIELD, 0,
                 id="store_from_params"),
    pytest.param([SYNC, with_field(encode(Opcode.MATMUL, n0=1, n1=1), Opcode.MATMUL, "mode", 3), END],
                 ErrorCode.BAD_FIELD, 1, id="matmul_mode_3"),
    pytest.param([with_field(SYNC, Opcode.SYNC, "unit", 3), END], ErrorCode.BAD_FIELD, 0, id="sync_unit_3"),
    pytest.param([SYNC, encode(Opcode.BARRIER, core_mask=0b11), END], ErrorCode.BAD_FIELD, 1,
                 id="barrier_names_a_missing_core"),
    pytest.param([SYNC, SYNC, encode(Opcode.BARRIER, core_mask=0), END], ErrorCode.BAD_FIELD, 2,
                 id="barrier_without_this_core"),
    pytest.param([SYNC, encode(Opcode.LOAD, buffer=Buffer.ACT, sram_addr=HW.act_lines, n0=1, n1=1, n2=1), END],
                 ErrorCode.SRAM_RANGE, 1, id="unit_error"),
])
def test_malformed_instruction_stops_the_core(words, code, pc):
    run = run_core(words)
    assert not run["finished"]
    assert run["error"] == (code, pc)


DENSE = TINY.baseline()
ONLY_2_4 = dataclasses.replace(TINY, sparse_patterns=("2:4",))
SPARSE_ONE = dict(n1=1, n0=1, act_sg=1, sparse=Sparsity.S1_4)


@pytest.mark.parametrize(("word", "hw", "code"), [
    pytest.param(encode(Opcode.MATMUL, **SPARSE_ONE), ONLY_2_4, ErrorCode.BAD_FIELD, id="pattern_absent"),
    pytest.param(encode(Opcode.MATMUL, **dict(SPARSE_ONE, sparse=Sparsity.S2_4)), DENSE, ErrorCode.BAD_FIELD,
                 id="sparse_on_a_dense_array"),
    pytest.param(with_field(encode(Opcode.MATMUL, **SPARSE_ONE), Opcode.MATMUL, "sparse", 3), HW,
                 ErrorCode.BAD_FIELD, id="sparse_3"),
    pytest.param(encode(Opcode.MATMUL, **dict(SPARSE_ONE, mode=MatmulMode.MAX)), HW, ErrorCode.BAD_FIELD,
                 id="not_matmul_mode"),
    pytest.param(encode(Opcode.MATMUL, **dict(SPARSE_ONE, act_sg=4)), HW, ErrorCode.BAD_FIELD, id="even_stride"),
    pytest.param(encode(Opcode.LOAD, buffer=Buffer.WEIGHT, meta=1, n0=1, n1=1, n2=1), DENSE, ErrorCode.BAD_FIELD,
                 id="dense_meta_load"),
    pytest.param(encode(Opcode.LOAD, buffer=Buffer.ACT, meta=1, n0=1, n1=1, n2=1), HW, ErrorCode.BAD_FIELD,
                 id="meta_other_buffer"),
    pytest.param(encode(Opcode.STORE, buffer=Buffer.ACT, meta=1, n0=1, n1=1, n2=1), HW, ErrorCode.BAD_FIELD,
                 id="meta_store"),
    pytest.param(encode(Opcode.MATMUL, **dict(SPARSE_ONE, act_addr=HW.act_lines - 3 * 5, act_sg=5)), HW,
                 ErrorCode.SRAM_RANGE, id="window_out_of_range"),
])
def test_malformed_sparse_instruction_stops_the_core(word, hw, code):
    assert run_core([SYNC, word, END], hw=hw)["error"] == (code, 1)


def test_sparse_matmul_through_the_core():
    """LOAD the values and their metadata, a 1:4 and a 2:4 MATMUL accumulating into the same entries,
    REQUANT, STORE: the DRAM holds what the expanded weights give."""
    rng = np.random.default_rng(11)
    x = rng.integers(0, 256, size=(48, LANES)).astype(np.uint8)
    values = rng.integers(-128, 128, size=(2, LANES, LANES)).astype(np.int8)
    index = rng.integers(0, 4, size=(2, LANES, LANES)).astype(np.uint8)
    bias = rng.integers(-50, 50, size=LANES).astype(np.int32)
    mult = rng.uniform(0.001, 0.01, size=LANES).astype(np.float32)
    weights, metas = 900, 950
    data = [(DATA, x), (PARAMS, np.concatenate([bias.view(np.uint8), mult.view(np.uint8)])),
            (weights, values.view(np.uint8)), (metas, np.concatenate([meta_entry(i) for i in index]))]
    per_block = HW.meta_lines_per_block
    words = [
        encode(Opcode.LOAD, signal=0b001, buffer=Buffer.ACT, dram_addr=DATA, n0=48, n1=1, n2=1),
        encode(Opcode.LOAD, signal=0b010, buffer=Buffer.PARAM, dram_addr=PARAMS, n0=2 * HW.param_lines_per_entry,
               n1=1, n2=1),
        encode(Opcode.LOAD, signal=0b100, buffer=Buffer.WEIGHT, dram_addr=weights, n0=2 * LANES, n1=1, n2=1),
        encode(Opcode.LOAD, signal=0b1000, buffer=Buffer.WEIGHT, meta=1, dram_addr=metas, n0=2 * per_block,
               n1=1, n2=1),
        encode(Opcode.MATMUL, wait=0b1101, signal=0, sparse=Sparsity.S1_4, act_addr=2, act_s0=1, act_sg=7,
               w_addr=0, w_s0=1, acc_addr=0, acc_s0=1, n1=1, n0=2, in_zp=100),
        encode(Opcode.MATMUL, signal=0b10000, sparse=Sparsity.S2_4, accumulate=1, act_addr=30, act_s0=2, act_sg=1,
               w_addr=1, w_s0=0, acc_addr=0, acc_s0=1, n1=1, n0=2, in_signed=1, in_zp=0xFE),
        encode(Opcode.REQUANT, wait=0b10010, signal=0b100000, acc_addr=0, acc_s0=1, out_addr=60, out_s0=1, n1=1,
               n0=2, param_addr=0, out_signed=1, clamp_lo=0x80, clamp_hi=0x7F),
        encode(Opcode.STORE, wait=0b100000, buffer=Buffer.ACT, sram_addr=60, dram_addr=OUTPUT, n0=2, n1=1, n2=1),
        END,
    ]
    run = run_core(words, data=data)
    assert run["finished"] and run["error"] is None
    assert (meta_indices(np.concatenate([meta_entry(i) for i in index])[:LANES * LANES // 4], LANES)
            == index[0]).all()
    unsigned, signed = x.astype(np.int64), x.view(np.int8).astype(np.int64)
    acc = np.zeros((2, LANES), np.int64)
    for i in range(2):
        window = np.concatenate([unsigned[2 + i + 7 * j] for j in range(4)]) - 100
        acc[i] = window @ expand(values[i], index[i], Sparsity.S1_4)
        window = np.concatenate([signed[30 + 2 * i + j] for j in range(2)]) + 2
        acc[i] += window @ expand(values[1], index[1], Sparsity.S2_4)
    expected = requantize(acc, bias, mult, out_zp=0, clamp_lo=-128, clamp_hi=127, out_signed=True)
    np.testing.assert_array_equal(run["dram"][OUTPUT:OUTPUT + 2], expected.view(np.uint8))


def test_stream_running_off_the_end_of_dram_is_a_fetch_range_error():
    words = [SYNC, SYNC]
    at = HW.dram_lines - len(encode_program(words)) // HW.line_bytes
    run = run_core(words, at=at)
    assert run["error"] == (ErrorCode.FETCH_RANGE, 2)


# -- the semaphore block alone ------------------------------------------------------------------------

def run_semaphores(bench):
    semaphores = Semaphores(3)

    async def testbench(ctx):
        await bench(ctx, semaphores, [semaphores.client(k) for k in range(3)])

    simulate(semaphores, testbench)


async def give(ctx, client, mask, *, pc=0, cycles=1):
    ctx.set(client.done, 1)
    ctx.set(client.done_signal, mask)
    ctx.set(client.done_pc, pc)
    for _ in range(cycles):
        await ctx.tick()
    ctx.set(client.done, 0)


def test_semaphores_grant_one_acquirer_per_cycle_in_priority_order():
    async def bench(ctx, semaphores, clients):
        await give(ctx, clients[2], 0b1)                 # semaphore 0 = 1
        for client in clients[:2]:
            ctx.set(client.head, 1)
            ctx.set(client.wait, 0b1)
            ctx.set(client.can_start, 1)
        assert ctx.get(clients[0].sem_ok) and not ctx.get(clients[1].sem_ok)
        assert ctx.get(clients[1].stalled) and ctx.get(semaphores.stalled)
        # A unit that cannot start does not hold the others back.
        ctx.set(clients[0].can_start, 0)
        assert ctx.get(clients[1].sem_ok)
        ctx.set(clients[0].can_start, 1)
        ctx.set(clients[0].take, 1)
        await ctx.tick()                                 # semaphore 0 = 0
        ctx.set(clients[0].take, 0)
        ctx.set(clients[0].head, 0)
        assert not ctx.get(clients[1].sem_ok) and ctx.get(clients[1].stalled)
        # A head without waits is never held; taken and given in one cycle cancel out.
        ctx.set(clients[2].head, 1)
        ctx.set(clients[2].can_start, 1)
        assert ctx.get(clients[2].sem_ok)
        await give(ctx, clients[2], 0b1)
        assert ctx.get(clients[1].sem_ok)
        ctx.set(clients[1].take, 1)
        await give(ctx, clients[0], 0b1)
        ctx.set(clients[1].take, 0)
        assert ctx.get(clients[1].sem_ok)                # 1 - 1 + 1

    run_semaphores(bench)


def test_semaphore_overflow_reports_the_signalling_instruction():
    async def bench(ctx, semaphores, clients):
        await give(ctx, clients[1], 0b1000, pc=7, cycles=255)   # semaphore 3 = 255
        assert not ctx.get(semaphores.overflow)
        for client, pc in zip(clients, (40, 41, 42), strict=True):
            ctx.set(client.done, 1)
            ctx.set(client.done_signal, 0b1000 if pc != 41 else 0b1)
            ctx.set(client.done_pc, pc)
        assert ctx.get(semaphores.overflow) and ctx.get(semaphores.overflow_pc) == 40   # the first unit's
        ctx.set(clients[0].done, 0)
        assert ctx.get(semaphores.overflow) and ctx.get(semaphores.overflow_pc) == 42
        await ctx.tick()
        ctx.set(clients[2].done, 0)
        ctx.set(clients[1].done, 0)
        assert not ctx.get(semaphores.overflow)
        # Not updated by the overflowing cycle: still 255, one more overflows again.
        ctx.set(clients[1].done, 1)
        ctx.set(clients[1].done_signal, 0b1000)
        assert ctx.get(semaphores.overflow)

    run_semaphores(bench)
