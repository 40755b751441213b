"""Multicore RTL: layers split across cores, barriers, the shared DRAM port.

One 4-core model (4x4 PE arrays, a one-line-per-cycle DRAM port) is built once
and reused; programs use 1, 2 or 4 of its cores.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlfusion.compiler import layers
from dlfusion.compiler.program import DramAllocator, StreamBuilder, assemble
from dlfusion.hw.config import HwConfig
from dlfusion.hw.isa import Buffer, ErrorCode, Opcode
from dlfusion.sim.binary import Segment, Tensor
from dlfusion.sim.golden import GoldenSimulator
from dlfusion.sim.rtl import RtlSimulator

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
