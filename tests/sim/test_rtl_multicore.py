"""Multicore RTL: layers split across cores, barriers, the shared DRAM port.

One 4-core model (4x4 PE arrays, a one-line-per-cycle DRAM port) is built once
and reused; programs use 1, 2 or 4 of its cores.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlfusion.compiler import ir, layers
from dlfusion.compiler.compile import compile_graph
from dlfusion.compiler.plan import Group, Plan
from dlfusion.hw.asm import DramAllocator, StreamBuilder, assemble
from dlfusion.hw.binary import Segment, Tensor
from dlfusion.hw.config import HwConfig
from dlfusion.hw.isa import Buffer, ErrorCode, Opcode
from dlfusion.sim.golden import GoldenSimulator
from dlfusion.sim.rtl import RtlSimulator
from dlfusion.sim.runtime import group_report
from dlfusion.sim.traffic import dram_traffic_by_barrier

pytestmark = pytest.mark.rtl

QUAD = HwConfig(cores=4, pe_rows=4, pe_cols=4, act_lines=2048, weight_blocks=1024, acc_entries=256,
                param_entries=64, dram_bytes=1 << 20, dram_bytes_per_cycle=4, dram_latency=12,
                watchdog_cycles=4000)


@pytest.fixture(scope="module")
def quad():
    simulator = RtlSimulator(QUAD)
    simulator.build()
    return simulator


def run_both(quad, binary, inputs):
    return GoldenSimulator(QUAD).run(binary, inputs), quad.run(binary, inputs)


split_layers = st.one_of(
    st.builds(lambda h, cin, cout, k, stride, seed: ("conv", dict(h=h, w=h + 1, cin=cin, cout=cout, k=k,
                                                                   stride=stride, seed=seed)),
              st.integers(4, 10), st.integers(1, 12), st.integers(1, 24), st.sampled_from([1, 3, 5]),
              st.sampled_from([1, 2]), st.integers(0, 999)),
    st.builds(lambda h, c, k, seed: ("dwconv", dict(h=h, w=h, c=c, k=k, seed=seed)),
              st.integers(4, 10), st.integers(1, 24), st.sampled_from([3, 5]), st.integers(0, 999)),
    st.builds(lambda cin, cout, seed: ("fc", dict(cin=cin, cout=cout, seed=seed)),
              st.integers(1, 100), st.integers(1, 40), st.integers(0, 999)),
    st.builds(lambda h, c, mode, seed: ("pool", dict(h=h, w=h, c=c, k=2, stride=2, mode=mode, seed=seed)),
              st.integers(4, 10), st.integers(1, 24), st.sampled_from(["max", "avg"]), st.integers(0, 999)),
    st.builds(lambda h, c, seed: ("add", dict(h=h, w=h, c=c, seed=seed)),
              st.integers(1, 10), st.integers(1, 24), st.integers(0, 999)),
)
BUILDERS = {"conv": layers.build_conv, "dwconv": layers.build_dwconv, "fc": layers.build_fc,
            "pool": layers.build_pool, "add": layers.build_add}


@pytest.mark.parametrize("cores", [1, 2, 4])
@pytest.mark.parametrize("split", ["rows", "channels"])
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(case=split_layers)
def test_split_layers_match_golden_and_reference(quad, cores, split, case):
    kind, parameters = case
    layer = BUILDERS[kind](QUAD, cores=cores, split=split, **parameters)
    golden, rtl = run_both(quad, layer.binary, layer.inputs)
    assert golden.error is None and rtl.error is None, (golden.error, rtl.error)
    assert np.array_equal(rtl.outputs["y"], golden.outputs["y"])
    assert np.array_equal(rtl.outputs["y"], layer.expected["y"])
    used = layer.description["cores"]
    assert len(rtl.counters) == QUAD.cores
    for core in range(QUAD.cores):
        # Every participating core executed its stream; the others did nothing.
        assert (rtl.counters[core]["instructions"] > 0) == (core < used)


@pytest.mark.parametrize(("cores", "split", "size", "cout"), [(1, "rows", 5, 9), (2, "rows", 5, 9),
                                                              (2, "channels", 5, 9), (2, "channels", 3, 264)])
def test_input_channel_chunks_match_golden_and_reference(quad, cores, split, size, cout):
    # 240 input channels are 60 blocks of 4: a 3x3 output block's 540 weight blocks exceed the
    # 512 of half the weight scratchpad, so the input channels go in chunks of 56 and 4 blocks.
    # 264 output channels on a 3x3 image (one output pixel): 33 blocks per core, more than the 32
    # whose parameters fit, so each core lowers two block ranges.
    layer = layers.build_conv(QUAD, h=size, w=3, cin=240, cout=cout, k=3, pad=1 if size > 3 else 0, cores=cores,
                              split=split, seed=11)
    assert layer.description["input_chunks"] == 2
    golden, rtl = run_both(quad, layer.binary, layer.inputs)
    assert golden.error is None and rtl.error is None, (golden.error, rtl.error)
    assert np.array_equal(rtl.outputs["y"], golden.outputs["y"])
    assert np.array_equal(rtl.outputs["y"], layer.expected["y"])


def _barrier_program(*, broken: bool):
    """Core 0 copies data to a shared buffer; after the barrier core 1 copies it to the output."""
    hw = QUAD
    lanes = hw.lanes
    dram = DramAllocator(hw)
    data = np.arange(64 * lanes, dtype=np.uint8)
    source = dram.allocate(64, "source")
    shared = dram.allocate(64, "shared")
    output = Tensor("y", dram.allocate(64, "output"), (64 * lanes,), "uint8", "flat")
    producer, consumer = StreamBuilder(0), StreamBuilder(1)
    producer.emit(Opcode.LOAD, signal=1, buffer=Buffer.ACT, dram_addr=source, n2=1, n1=1, n0=64)
    producer.emit(Opcode.STORE, wait=1, buffer=Buffer.ACT, dram_addr=shared, n2=1, n1=1, n0=64)
    producer.emit(Opcode.BARRIER, core_mask=0b11)
    producer.end()
    if not broken:
        consumer.emit(Opcode.BARRIER, core_mask=0b11)
    consumer.emit(Opcode.LOAD, signal=1, buffer=Buffer.ACT, dram_addr=shared, n2=1, n1=1, n0=64)
    consumer.emit(Opcode.STORE, wait=1, buffer=Buffer.ACT, dram_addr=output.dram_line, n2=1, n1=1, n0=64)
    consumer.end()
    binary = assemble(hw, [producer, consumer], [Segment("source", source, data.tobytes())], dram, [],
                      [output], {})
    return binary, data


def test_barrier_orders_cores(quad):
    binary, data = _barrier_program(broken=False)
    golden, rtl = run_both(quad, binary, {})
    assert golden.error is None and rtl.error is None
    assert np.array_equal(rtl.outputs["y"], data) and np.array_equal(golden.outputs["y"], data)
    # The consumer waited at the barrier for the producer's load and store.
    assert rtl.counters[1]["barrier_wait"] > 64
    assert rtl.counters[0]["barrier_wait"] <= 2


def test_barrier_that_never_completes_is_a_watchdog_error(quad):
    binary, _ = _barrier_program(broken=True)
    golden, rtl = run_both(quad, binary, {})
    for result in (golden, rtl):
        assert result.error is not None
        assert (result.error.code, result.error.core, result.error.pc) == (ErrorCode.WATCHDOG, 0, 2)
    assert not rtl.metadata.get("harness_timeout")
    assert rtl.cycles < 2 * QUAD.watchdog_cycles + 500


def test_every_core_looks_up_its_own_tables(quad):
    """Each core loads a table of its own into table 1 and applies it (an identity ADD with a
    look-up) to the same data, all at once: each table store belongs to its core."""
    hw = QUAD
    lanes, lines = hw.lanes, 16
    rng = np.random.default_rng(12)
    dram = DramAllocator(hw)
    data = rng.integers(0, 256, size=(lines, lanes), dtype=np.uint8)
    tables = rng.integers(0, 256, size=(hw.cores, 256), dtype=np.uint8)
    identity = np.zeros((3, lanes), np.float32)
    identity[0] = 1.0                                   # ra = 1, rb = 0, fixed = 0
    source = dram.allocate(lines, "source")
    params = dram.allocate(3 * hw.param_lines_per_entry, "params")
    segments = [Segment("source", source, data.tobytes()), Segment("params", params, identity.tobytes())]
    streams, outputs = [], []
    for core in range(hw.cores):
        table = dram.allocate(hw.lut_lines_per_table, f"table {core}")
        segments.append(Segment(f"table {core}", table, tables[core].tobytes()))
        output = Tensor(f"y{core}", dram.allocate(lines, f"output {core}"), (lines * lanes,), "uint8", "flat")
        outputs.append(output)
        stream = StreamBuilder(core)
        stream.emit(Opcode.LOAD, signal=1, buffer=Buffer.ACT, dram_addr=source, n2=1, n1=1, n0=lines)
        stream.emit(Opcode.LOAD, signal=2, buffer=Buffer.PARAM, dram_addr=params, n2=1, n1=1,
                    n0=3 * hw.param_lines_per_entry)
        stream.emit(Opcode.LOAD, signal=4, buffer=Buffer.LUT, sram_addr=hw.lut_lines_per_table, dram_addr=table,
                    n2=1, n1=1, n0=hw.lut_lines_per_table)
        stream.emit(Opcode.ADD, wait=0b111, signal=8, a_addr=0, a_s0=1, b_addr=0, b_s0=1, out_addr=lines, out_s0=1,
                    n1=1, n0=lines, clamp_hi=0xFF, lut=1, lut_table=1)
        stream.emit(Opcode.STORE, wait=8, buffer=Buffer.ACT, sram_addr=lines, dram_addr=output.dram_line, n2=1,
                    n1=1, n0=lines)
        stream.end()
        streams.append(stream)
    binary = assemble(hw, streams, segments, dram, [], outputs, {})
    golden, rtl = run_both(quad, binary, {})
    assert golden.error is None and rtl.error is None, (golden.error, rtl.error)
    for core in range(hw.cores):
        expected = tables[core][data].reshape(-1)
        assert np.array_equal(golden.outputs[f"y{core}"], expected)
        assert np.array_equal(rtl.outputs[f"y{core}"], expected)


def test_compute_bound_layer_scales_with_cores(quad):
    cycles = {}
    for cores in (1, 2, 4):
        case = layers.build_conv(QUAD, h=32, w=32, cin=16, cout=16, k=3, cores=cores, split="rows", seed=1)
        result = quad.run(case.binary, case.inputs)
        assert result.error is None and np.array_equal(result.outputs["y"], case.expected["y"])
        cycles[cores] = result.cycles
    assert cycles[1] / cycles[2] > 1.8, cycles
    assert cycles[1] / cycles[4] > 3.2, cycles


def test_memory_bound_layer_stops_scaling_when_the_port_saturates(quad):
    """A 2x2 average pool moves about 2 DRAM lines per 4 PE cycles of work: one core is
    compute-bound, two cores already fill the one-line-per-cycle port, four cores gain
    nothing (they only queue for the port)."""
    cycles, stalls = {}, {}
    for cores in (1, 2, 4):
        case = layers.build_pool(QUAD, h=32, w=32, c=16, k=2, stride=1, mode="avg", cores=cores, split="rows",
                                 seed=2)
        result = quad.run(case.binary, case.inputs)
        assert result.error is None and np.array_equal(result.outputs["y"], case.expected["y"])
        cycles[cores] = result.cycles
        stalls[cores] = sum(c["dma_stall"] for c in result.counters)
    assert cycles[1] / cycles[2] > 1.3, cycles          # still scaling from one to two cores
    assert cycles[4] >= 0.95 * cycles[2], cycles        # the port is saturated: no gain
    assert stalls[4] > 1.5 * stalls[2] > 0, stalls      # cores queue for the port


def _grouped_network() -> ir.Graph:
    """conv 3x3 (3 -> 8, 8x8) -> conv 3x3 stride 2 (8 -> 8) -> max pool 2x2 -> fully connected (-> 10)."""
    rng = np.random.default_rng(5)

    def tensor(name, shape):
        return ir.Tensor(name, shape, "uint8", 0.05, 10)

    def weighted(name, op, x, y, cin, cout, k, stride, pad, out_hw):
        return ir.Node(name, op, [x], y, dict(
            kernel=k, stride=stride, pad=pad, clamp=(0, 255), macs=cout * out_hw * out_hw * k * k * cin,
            weight=rng.integers(-8, 8, (cout, cin, k, k), dtype=np.int8),
            bias=rng.integers(-50, 50, cout, dtype=np.int32), multiplier=np.full(cout, 0.05, np.float32)))

    shapes = {"input": (3, 8, 8), "c1": (8, 8, 8), "c2": (8, 4, 4), "p": (8, 2, 2), "output": (10, 1, 1)}
    nodes = [weighted("conv1", ir.Op.CONV, "input", "c1", 3, 8, 3, 1, 1, 8),
             weighted("conv2", ir.Op.CONV, "c1", "c2", 8, 8, 3, 2, 1, 4),
             ir.Node("pool", ir.Op.MAXPOOL, ["c2"], "p", dict(kernel=2, stride=2, pad=0, clamp=(0, 255))),
             weighted("fc", ir.Op.FC, "p", "output", 8, 10, 2, 1, 0, 1)]
    return ir.Graph("grouped", {name: tensor(name, shape) for name, shape in shapes.items()}, nodes, "input",
                    "output")


@pytest.fixture(scope="module")
def grouped_runs(quad):
    """A four-group network on mixed core counts and splits, run on the golden model and the RTL."""
    plan = Plan("grouped", QUAD.hash, [Group(["conv1"], 4, "rows"), Group(["conv2"], 2, "channels"),
                                       Group(["pool"], 1, "rows"), Group(["fc"], 3, "channels")])
    binary = compile_graph(_grouped_network(), QUAD, plan)
    x = np.random.default_rng(6).integers(0, 256, (3, 8, 8), dtype=np.uint8)
    golden, rtl = run_both(quad, binary, {"input": x})
    return binary, golden, rtl


def test_group_cycles_and_dram_bytes_on_the_rtl(grouped_runs):
    binary, golden, rtl = grouped_runs
    assert golden.error is None and rtl.error is None, (golden.error, rtl.error)
    assert np.array_equal(rtl.outputs["output"], golden.outputs["output"])
    groups = binary.metadata["groups"]
    rtl_groups, golden_groups = group_report(binary, rtl), group_report(binary, golden)
    assert [g["nodes"] for g in rtl_groups] == [g["nodes"] for g in golden_groups] == [g["nodes"] for g in groups]
    assert [g["cores"] for g in rtl_groups] == [4, 2, 1, 3]

    # Cycles: the groups tile the run up to the last barrier; after it each core reads END's
    # instr_lines lines from its prefetch buffer (one per cycle), dispatches it, reports
    # finished the next cycle, and `done` is registered one cycle later.
    assert all(g["cycles"] > 0 for g in rtl_groups), rtl_groups
    assert rtl_groups[-1]["end_cycle"] == sum(g["cycles"] for g in rtl_groups)
    assert rtl.cycles - sum(g["cycles"] for g in rtl_groups) == QUAD.instr_lines + 3
    assert golden.cycles - sum(g["cycles"] for g in golden_groups) == 2   # END: dispatched, completes

    # DRAM: the DMA's lines per group are known statically from the streams (a barrier drains
    # the DMA of every core); writes are only DMA stores, reads add the instruction fetch:
    # every instruction up to the group's barrier, plus at most the prefetch buffer of each core.
    sections = dram_traffic_by_barrier(binary)
    assert len(sections) == len(groups) + 1
    assert sections[-1] == {"load_bytes": 0, "store_bytes": 0, "fetch_bytes": 32 * len(binary.streams)}
    prefetch_bytes = len(binary.streams) * QUAD.fetch_lines * QUAD.line_bytes
    for result, report in ((rtl, rtl_groups), (golden, golden_groups)):
        dma_read = fetched = read = 0
        for group, section in zip(report, sections, strict=False):
            assert group["dram_bytes"] == group["dram_read_bytes"] + group["dram_write_bytes"] > 0
            assert group["dram_write_bytes"] == section["store_bytes"]
            dma_read += section["load_bytes"]
            fetched += section["fetch_bytes"]
            read += group["dram_read_bytes"]
            assert 0 <= read - dma_read - fetched <= prefetch_bytes, (result.backend, group)
        total_read = result.dram_read_lines * QUAD.line_bytes
        fetched += sections[-1]["fetch_bytes"]
        assert 0 <= total_read - dma_read - fetched <= prefetch_bytes, result.backend
        assert result.dram_write_lines * QUAD.line_bytes == sum(s["store_bytes"] for s in sections)
    for group in rtl_groups:
        assert group["utilization"] == group["macs"] / (QUAD.macs_per_cycle * group["cores"] * group["cycles"])
        assert 0 <= group["utilization"] <= 1
