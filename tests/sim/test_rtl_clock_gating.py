"""Clock gating changes nothing: the gated model equals the model on one clock, cycle for cycle.

Each unit of a core runs on a clock gated by its ``awake`` output (``hw/core.py``), so an
idle unit costs no simulation time. The promise is that no observable behaviour depends on
it: on random programs, random layers split over the cores, barriers and malformed
programs, the default (gated) Verilator model and one generated with
``clock_gating=False`` give the same cycles, per-core counters, barrier log, DRAM traffic,
error and outputs.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_rtl_multicore import BUILDERS, QUAD, _barrier_program, split_layers  # the 4-core model, its layers

from dlfusion.hw.top import generate_verilog
from dlfusion.sim.random_program import random_program
from dlfusion.sim.rtl import RtlSimulator, default_build_root

pytestmark = pytest.mark.rtl

SETTINGS = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                          HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def models():
    gated = RtlSimulator(QUAD)      # the model every other test of QUAD uses
    # Another build directory: the model directory is named by the HwConfig, not the Verilog.
    ungated = RtlSimulator(QUAD, verilog=generate_verilog(QUAD, clock_gating=False),
                           build_dir=default_build_root() / "ungated")
    gated.build()
    ungated.build()
    return gated, ungated


def assert_same(models, binary, inputs):
    gated, ungated = (model.run(binary, inputs) for model in models)
    assert gated.to_json() == ungated.to_json()
    assert gated.barriers == ungated.barriers
    for name, array in ungated.outputs.items():
        assert np.array_equal(gated.outputs[name], array), name
    return gated


def test_the_two_models_differ_in_their_clocks():
    gated, ungated = (generate_verilog(QUAD, clock_gating=flag) for flag in (True, False))
    assert "negedge" in gated and "ppu_clock_enable" in gated
    assert "negedge" not in ungated and "clock_enable" not in ungated


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1))
def test_random_programs(models, seed):
    binary, inputs = random_program(QUAD, seed, length=30)
    assert_same(models, binary, inputs)


@SETTINGS
@given(case=split_layers, cores=st.sampled_from([1, 2, 4]), split=st.sampled_from(["rows", "channels"]))
def test_layers_split_over_the_cores(models, case, cores, split):
    kind, parameters = case
    layer = BUILDERS[kind](QUAD, cores=cores, split=split, **parameters)
    result = assert_same(models, layer.binary, layer.inputs)
    assert result.error is None
    assert np.array_equal(result.outputs["y"], layer.expected["y"])


@pytest.mark.parametrize("broken", [False, True])
def test_barriers_and_deadlock(models, broken):
    binary, _ = _barrier_program(broken=broken)
    result = assert_same(models, binary, {})
    assert (result.error is not None) == broken
