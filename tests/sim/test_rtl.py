"""The RTL on Verilator against the golden simulator (and the numpy reference).

Two hardware configurations with different PE arrays, buffers and DRAM ports.
Each Verilator model is built once per configuration and reused (cached under
build/rtl/<hash>). Random programs and random layers must agree bit for bit;
malformed programs must stop the RTL with the same error status as the golden
simulator, within the watchdog.
"""


import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_sparse_golden import pruned  # the golden sparse tests' pruning

from dlfusion.compiler import layers
from dlfusion.hw.asm import DramAllocator, StreamBuilder, assemble, pack_params
from dlfusion.hw.binary import Binary, Segment, Stream, Tensor
from dlfusion.hw.config import HwConfig
from dlfusion.hw.isa import _PAYLOAD_FIELDS, Buffer, ErrorCode, MatmulMode, Opcode, Sparsity, Unit, encode
from dlfusion.hw.sparse import compress, meta_entry
from dlfusion.sim.golden import GoldenSimulator
from dlfusion.sim.random_program import random_program
from dlfusion.sim.rtl import RtlSimulator

pytestmark = pytest.mark.rtl

SMALL = HwConfig(pe_rows=4, pe_cols=4, act_lines=2048, weight_blocks=1024, acc_entries=256, param_entries=64,
                 dram_bytes=1 << 20, dram_bytes_per_cycle=4, dram_latency=8, watchdog_cycles=3000)
MID = HwConfig(pe_rows=8, pe_cols=8, act_lines=4096, weight_blocks=512, acc_entries=512, param_entries=64,
               dram_bytes=1 << 21, dram_bytes_per_cycle=6, dram_latency=21, queue_depth=4, fetch_lines=16,
               watchdog_cycles=5000)
CONFIGS = {"small": SMALL, "mid": MID}
#: SMALL without lookup tables (buffer 3 is still reserved) and without sparsity (a dense array).
SMALL_NO_TABLES = SMALL.baseline()
RTL_SETTINGS = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                              HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="session")
def simulators():
    cache = {}

    def get(hw):
        if hw.hash not in cache:
            cache[hw.hash] = RtlSimulator(hw)
            cache[hw.hash].build()
        return cache[hw.hash]
    return get


def run_both(simulators, binary, inputs):
    golden = GoldenSimulator(binary.hw).run(binary, inputs)
    rtl = simulators(binary.hw).run(binary, inputs)
    return golden, rtl


def assert_same_outputs(golden, rtl):
    assert golden.error is None, str(golden.error)
    assert rtl.error is None, str(rtl.error)
    for name, expected in golden.outputs.items():
        differing = int(np.count_nonzero(rtl.outputs[name] != expected))
        assert differing == 0, f"{differing} bytes of {name!r} differ between the RTL and the golden simulator"


@pytest.mark.parametrize("config", CONFIGS)
@RTL_SETTINGS
@given(seed=st.integers(0, 2**32 - 1))
def test_random_programs(simulators, config, seed):
    # (both configurations are sparse: the programs have sparse MATMULs and metadata loads too)
    binary, inputs = random_program(CONFIGS[config], seed, length=30)
    golden, rtl = run_both(simulators, binary, inputs)
    assert_same_outputs(golden, rtl)


def _sparse_program(hw, sparsity, seed, *, dense=False):
    """Pruned random weights compressed to ``sparsity`` with their metadata, sparse MATMULs (both
    signs, zero points, accumulation, strides) into 8 accumulators, then each accumulator requantized
    at three scales (so that its low, middle and high bits show) and stored. ``dense``: the same
    program with dense MATMULs (other results, the same cycles)."""
    rng = np.random.default_rng(seed)
    lanes, window = hw.lanes, sparsity.window
    dram = DramAllocator(hw)
    blocks = [compress(pruned(rng, window * lanes, lanes, sparsity, 0.2), sparsity) for _ in range(4)]
    act_line = dram.allocate(64, "act")
    weight_line = dram.allocate(4 * lanes, "weights")
    meta_line = dram.allocate(4 * hw.meta_lines_per_block, "metadata")
    params = np.zeros((6, lanes), np.uint32)
    for k, scale in enumerate((1.0, 2.0 ** -8, 2.0 ** -16)):
        params[2 * k + 1] = np.full(lanes, scale, np.float32).view(np.uint32)
    param_line = dram.allocate(6 * hw.param_lines_per_entry, "params")
    output = Tensor("acc_bytes", dram.allocate(24, "output"), (24 * lanes,), "uint8", "flat")
    segments = [Segment("act", act_line, rng.integers(0, 256, 64 * lanes, dtype=np.uint8).tobytes()),
                Segment("weights", weight_line, np.stack([v for v, _ in blocks]).tobytes()),
                Segment("metadata", meta_line, np.concatenate([meta_entry(i) for _, i in blocks]).tobytes()),
                Segment("params", param_line, pack_params(params))]
    s = StreamBuilder(0)
    s.emit(Opcode.LOAD, buffer=Buffer.ACT, dram_addr=act_line, n0=64, n1=1, n2=1)
    s.emit(Opcode.LOAD, buffer=Buffer.WEIGHT, dram_addr=weight_line, n0=4 * lanes, n1=1, n2=1)
    s.emit(Opcode.LOAD, buffer=Buffer.WEIGHT, meta=1, dram_addr=meta_line, n0=4 * hw.meta_lines_per_block,
           n1=1, n2=1)
    s.emit(Opcode.LOAD, buffer=Buffer.PARAM, dram_addr=param_line, n0=6 * hw.param_lines_per_entry, n1=1, n2=1,
           signal=1)
    for k in range(4):
        sg = 2 * int(rng.integers(0, 4)) + 1
        s.emit(Opcode.MATMUL, wait=1 if k == 0 else 0, signal=2 if k == 3 else 0,
               sparse=Sparsity.DENSE if dense else sparsity, act_sg=0 if dense else sg,
               accumulate=int(k > 0), in_signed=int(rng.integers(0, 2)), in_zp=int(rng.integers(0, 256)),
               act_addr=int(rng.integers(0, 8)), act_s1=int(rng.integers(0, 6)), act_s0=int(rng.integers(0, 3)),
               w_addr=int(rng.integers(0, 4)) if k else 0, w_s1=int(k == 0), w_s0=0,
               acc_addr=0, acc_s1=4, acc_s0=1, n1=2, n0=4)
    for k in range(3):
        s.emit(Opcode.REQUANT, wait=2 if k == 0 else 0, signal=4 if k == 2 else 0, acc_addr=0, acc_s0=1, n1=1,
               n0=8, out_addr=8 * k, out_s0=1, param_addr=2 * k, out_signed=1, clamp_lo=0x80, clamp_hi=0x7F)
    s.emit(Opcode.STORE, wait=4, buffer=Buffer.ACT, dram_addr=output.dram_line, n0=24, n1=1, n2=1)
    s.end()
    return assemble(hw, [s], segments, dram, [], [output], {"sparse_program": seed})


@pytest.mark.parametrize("sparsity", [Sparsity.S2_4, Sparsity.S1_4])
@RTL_SETTINGS
@given(seed=st.integers(0, 2**32 - 1))
def test_sparse_matmuls_match_golden(simulators, sparsity, seed):
    """The property of tests/sim/test_sparse_golden.py on the RTL: pruned, compressed weights."""
    binary = _sparse_program(SMALL, sparsity, seed)
    golden, rtl = run_both(simulators, binary, {})
    assert_same_outputs(golden, rtl)
    assert golden.outputs["acc_bytes"].any()
    # A sparse MATMUL takes the cycles of the dense one with the same counts.
    dense = simulators(SMALL).run(_sparse_program(SMALL, sparsity, seed, dense=True), {})
    assert (dense.cycles, dense.counters) == (rtl.cycles, rtl.counters)


layer_cases = st.one_of(
    st.builds(lambda h, w, cin, cout, k, stride, seed: ("conv", dict(h=h, w=w, cin=cin, cout=cout, k=k,
                                                                      stride=stride, seed=seed)),
              st.integers(5, 9), st.integers(5, 9), st.integers(1, 20), st.integers(1, 20),
              st.sampled_from([1, 3, 5, 7]), st.sampled_from([1, 2]), st.integers(0, 999)),
    st.builds(lambda h, c, k, stride, seed: ("dwconv", dict(h=h, w=h, c=c, k=k, stride=stride, seed=seed)),
              st.integers(5, 9), st.integers(1, 20), st.sampled_from([3, 5]), st.sampled_from([1, 2]),
              st.integers(0, 999)),
    st.builds(lambda cin, cout, seed: ("fc", dict(cin=cin, cout=cout, seed=seed)),
              st.integers(1, 200), st.integers(1, 60), st.integers(0, 999)),
    st.builds(lambda h, c, k, mode, seed: ("pool", dict(h=h, w=h, c=c, k=k, stride=2, pad=k // 2 if mode == "max"
                                                        else 0, mode=mode, seed=seed)),
              st.integers(5, 9), st.integers(1, 20), st.sampled_from([2, 3]), st.sampled_from(["max", "avg"]),
              st.integers(0, 999)),
    st.builds(lambda h, c, signed, seed: ("add", dict(h=h, w=h, c=c, signed=signed, seed=seed)),
              st.integers(1, 9), st.integers(1, 20), st.booleans(), st.integers(0, 999)),
)
BUILDERS = {"conv": layers.build_conv, "dwconv": layers.build_dwconv, "fc": layers.build_fc,
            "pool": layers.build_pool, "add": layers.build_add}


@pytest.mark.parametrize("config", CONFIGS)
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(case=layer_cases)
def test_random_layers(simulators, config, case):
    kind, parameters = case
    layer = BUILDERS[kind](CONFIGS[config], **parameters)
    golden, rtl = run_both(simulators, layer.binary, layer.inputs)
    assert_same_outputs(golden, rtl)
    for name, expected in layer.expected.items():
        assert np.array_equal(rtl.outputs[name], expected), f"RTL differs from the numpy reference for {kind}"


def test_cycles_and_counters_are_deterministic_and_consistent(simulators):
    case = layers.build_conv(MID, h=12, w=12, cin=16, cout=24, k=3, seed=5)
    first = simulators(MID).run(case.binary, case.inputs)
    second = simulators(MID).run(case.binary, case.inputs)
    assert first.cycles == second.cycles and first.counters == second.counters
    counters = first.counters[0]
    # The PE issues one iteration per cycle: at least MACs / (L*L) busy cycles, never more than the run.
    assert case.macs // MID.macs_per_cycle <= counters["pe_busy"] <= first.cycles
    assert counters["instructions"] == case.binary.streams[0].instructions
    for unit in ("dma_busy", "ppu_busy", "sem_wait"):
        assert 0 < counters[unit] <= first.cycles


def test_compute_bound_conv_keeps_the_pe_array_busy(simulators):
    """Double buffering hides the DMA: a compute-bound convolution reaches high utilization."""
    case = layers.build_conv(MID, h=16, w=16, cin=32, cout=32, k=3, seed=2)
    rtl = simulators(MID).run(case.binary, case.inputs)
    assert rtl.error is None
    utilization = case.macs / (MID.macs_per_cycle * rtl.cycles)
    assert utilization > 0.85, utilization
    assert np.array_equal(rtl.outputs["y"], case.expected["y"])


# -- malformed programs -----------------------------------------------------------------------------

def _program(hw, build, *, place_at_end=False) -> Binary:
    stream = StreamBuilder(0)
    build(stream)
    dram = DramAllocator(hw, start=hw.dram_lines - 4 * len(stream.words) if place_at_end else 0)
    return assemble(hw, [stream], [], dram, [], [], {})


def _with_field(word: int, opcode: Opcode, field: str, value: int) -> int:
    offset, width, _ = _PAYLOAD_FIELDS[opcode][field]
    return (word & ~(((1 << width) - 1) << offset)) | (value << offset)


def _bad_opcode(s):
    s.sync(Unit.DMA)
    s.words.append(encode(Opcode.END) & ~0x3F | 0x3F)


def _bad_buffer(s):
    s.sync(Unit.PE)
    s.words.append(_with_field(encode(Opcode.LOAD, n0=1, n1=1, n2=1), Opcode.LOAD, "buffer", 3))
    s.end()


def _store_from_weights(s):
    s.words.append(encode(Opcode.STORE, buffer=Buffer.WEIGHT, n0=1, n1=1, n2=1))
    s.end()


def _sram_range(s):
    s.sync(Unit.PPU)
    s.emit(Opcode.MATMUL, mode=MatmulMode.MATMUL, act_addr=SMALL.act_lines - 2, act_s0=1, n1=1, n0=4)
    s.end()


def _dram_range(s):
    s.emit(Opcode.LOAD, buffer=Buffer.ACT, dram_addr=SMALL.dram_lines - 3, n0=5, n1=1, n2=1)
    s.end()


def _deadlock(s):
    s.emit(Opcode.LOAD, buffer=Buffer.ACT, n0=4, n1=1, n2=1)
    s.emit(Opcode.MATMUL, wait=1 << 5, n1=1, n0=1)   # semaphore 5 is never signalled
    s.end()


def _semaphore_overflow(s):
    for _ in range(256):
        s.sync(Unit.PPU, signal=1 << 2)
    s.end()


def _missing_table(s):
    s.sync(Unit.DMA)
    s.emit(Opcode.REQUANT, n1=1, n0=1, lut=1, lut_table=SMALL.lut_tables)
    s.end()


def _table_load_range(s):
    s.emit(Opcode.LOAD, buffer=Buffer.LUT, sram_addr=SMALL.lut_lines - 1, n0=2, n1=1, n2=1)
    s.end()


def _runs_off_the_end(s):
    s.sync(Unit.DMA)
    s.sync(Unit.PE)


def _sparse_matmul(**fields):
    def build(s):
        s.sync(Unit.DMA)
        s.words.append(encode(Opcode.MATMUL, **dict(dict(n1=1, n0=1, act_sg=1, sparse=Sparsity.S1_4), **fields)))
        s.end()
    return build


def _word(word):
    def build(s):
        s.sync(Unit.DMA)
        s.words.append(word)
        s.end()
    return build


MALFORMED = {
    "bad_opcode": (_bad_opcode, ErrorCode.BAD_OPCODE, 1),
    "bad_buffer": (_bad_buffer, ErrorCode.BAD_FIELD, 1),        # on SMALL_NO_TABLES
    "missing_table": (_missing_table, ErrorCode.SRAM_RANGE, 1),
    "table_load_range": (_table_load_range, ErrorCode.SRAM_RANGE, 0),
    "store_from_weights": (_store_from_weights, ErrorCode.BAD_FIELD, 0),
    "sram_range": (_sram_range, ErrorCode.SRAM_RANGE, 1),
    "dram_range": (_dram_range, ErrorCode.DRAM_RANGE, 0),
    "deadlock": (_deadlock, ErrorCode.WATCHDOG, 2),   # the END the dispatcher waits on
    "semaphore_overflow": (_semaphore_overflow, ErrorCode.SEM_OVERFLOW, 255),
    # The sparse cases of tests/sim/test_sparse_golden.py (the dense array: SMALL_NO_TABLES).
    "sparse_pattern_absent": (_sparse_matmul(), ErrorCode.BAD_FIELD, 1),
    "sparse_not_matmul_mode": (_sparse_matmul(mode=MatmulMode.DEPTHWISE), ErrorCode.BAD_FIELD, 1),
    "sparse_even_stride": (_sparse_matmul(act_sg=2), ErrorCode.BAD_FIELD, 1),
    "sparse_3": (_word(_with_field(encode(Opcode.MATMUL, n1=1, n0=1, act_sg=1), Opcode.MATMUL, "sparse", 3)),
                 ErrorCode.BAD_FIELD, 1),
    "dense_meta_load": (_word(encode(Opcode.LOAD, buffer=Buffer.WEIGHT, meta=1, n0=1, n1=1, n2=1)),
                        ErrorCode.BAD_FIELD, 1),
    "meta_other_buffer": (_word(encode(Opcode.LOAD, buffer=Buffer.PARAM, meta=1, n0=1, n1=1, n2=1)),
                          ErrorCode.BAD_FIELD, 1),
    "meta_store": (_word(encode(Opcode.STORE, buffer=Buffer.ACT, meta=1, n0=1, n1=1, n2=1)), ErrorCode.BAD_FIELD, 1),
    "sparse_window_out_of_range": (_sparse_matmul(act_addr=SMALL.act_lines - 3 * 5, act_sg=5),
                                   ErrorCode.SRAM_RANGE, 1),
    "meta_load_range": (_word(encode(Opcode.LOAD, buffer=Buffer.WEIGHT, meta=1, sram_addr=SMALL.meta_lines - 1,
                                     n0=2, n1=1, n2=1)), ErrorCode.SRAM_RANGE, 1),
}
#: The malformed programs run on the dense SMALL_NO_TABLES.
ON_DENSE = {"bad_buffer", "sparse_pattern_absent", "dense_meta_load"}


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_programs_stop_with_the_same_error(simulators, name):
    build, code, pc = MALFORMED[name]
    binary = _program(SMALL_NO_TABLES if name in ON_DENSE else SMALL, build)
    golden, rtl = run_both(simulators, binary, {})
    assert golden.error is not None and rtl.error is not None
    assert (golden.error.code, golden.error.core, golden.error.pc) == (code, 0, pc)
    assert (rtl.error.code, rtl.error.core, rtl.error.pc) == (code, 0, pc)
    assert rtl.outputs == {}
    if code == ErrorCode.WATCHDOG:
        # The accelerator's own watchdog fired, not the testbench's timeout.
        assert not rtl.metadata.get("harness_timeout")
        assert rtl.cycles < 2 * SMALL.watchdog_cycles


def test_stream_running_off_the_end_of_dram(simulators):
    hw = SMALL
    stream = StreamBuilder(0)
    _runs_off_the_end(stream)
    from dlfusion.hw.isa import encode_program
    code = encode_program(stream.words)
    line = hw.dram_lines - len(code) // hw.line_bytes
    binary = Binary(hw, [Stream(0, line, len(stream.words))], [Segment("code", line, code)], [], [], {})
    golden, rtl = run_both(simulators, binary, {})
    assert (golden.error.code, golden.error.pc) == (ErrorCode.FETCH_RANGE, 2)
    assert (rtl.error.code, rtl.error.pc) == (ErrorCode.FETCH_RANGE, 2)
