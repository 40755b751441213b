"""Golden simulator vs the numpy reference for every layer type, on random shapes.

The lowering (tiling, double buffering, semaphores, folding) and the golden
simulator are checked together: the binary's output must equal the
independent numpy reference bit for bit.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlfusion.compiler import layers
from dlfusion.compiler.errors import CompileError
from dlfusion.compiler.plan import SPLITS
from dlfusion.hw.config import HwConfig
from dlfusion.sim.golden import GoldenSimulator

DEFAULT = HwConfig()
SMALL = HwConfig(pe_rows=4, pe_cols=4, act_lines=4096, weight_blocks=1024, acc_entries=256, param_entries=64,
                 dram_bytes=1 << 20, dram_bytes_per_cycle=4, dram_latency=8)
CONFIGS = {"default": DEFAULT, "small": SMALL}

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def run_golden(case):
    result = GoldenSimulator(case.binary.hw).run(case.binary, case.inputs)
    assert result.error is None, str(result.error)
    return result


def assert_matches(case):
    result = run_golden(case)
    for name, expected in case.expected.items():
        actual = result.outputs[name]
        assert actual.dtype == expected.dtype and actual.shape == expected.shape
        mismatches = int(np.count_nonzero(actual != expected))
        assert mismatches == 0, f"{mismatches} of {expected.size} outputs differ for {case.description}"
    return result


@st.composite
def conv_shapes(draw):
    k = draw(st.sampled_from([1, 3, 5, 7]))
    stride = draw(st.sampled_from([1, 2]))
    pad = draw(st.integers(0, k - 1))
    h = draw(st.integers(max(1, k - 2 * pad), 12))
    w = draw(st.integers(max(1, k - 2 * pad), 12))
    return dict(h=h, w=w, k=k, stride=stride, pad=pad, cin=draw(st.integers(1, 40)),
                cout=draw(st.integers(1, 40)), seed=draw(st.integers(0, 2**16)),
                in_signed=draw(st.booleans()), out_signed=draw(st.booleans()), relu=draw(st.booleans()))


@pytest.mark.parametrize("config", CONFIGS)
@SETTINGS
@given(shape=conv_shapes())
def test_conv_random_shapes(config, shape):
    assert_matches(layers.build_conv(CONFIGS[config], **shape))


@pytest.mark.parametrize("config", CONFIGS)
@SETTINGS
@given(k=st.sampled_from([1, 3, 5, 7]), stride=st.sampled_from([1, 2]), c=st.integers(1, 40),
       h=st.integers(7, 13), w=st.integers(7, 13), seed=st.integers(0, 2**16), in_signed=st.booleans())
def test_depthwise_random_shapes(config, k, stride, c, h, w, seed, in_signed):
    assert_matches(layers.build_dwconv(CONFIGS[config], h=h, w=w, c=c, k=k, stride=stride, seed=seed,
                                       in_signed=in_signed))


@pytest.mark.parametrize("config", CONFIGS)
@SETTINGS
@given(cin=st.integers(1, 700), cout=st.integers(1, 300), seed=st.integers(0, 2**16))
def test_fully_connected_random_shapes(config, cin, cout, seed):
    assert_matches(layers.build_fc(CONFIGS[config], cin=cin, cout=cout, seed=seed))


@pytest.mark.parametrize("config", CONFIGS)
@SETTINGS
@given(mode=st.sampled_from(["max", "avg"]), k=st.integers(2, 7), stride=st.sampled_from([1, 2]),
       c=st.integers(1, 40), h=st.integers(7, 14), seed=st.integers(0, 2**16), data=st.data())
def test_pool_random_shapes(config, mode, k, stride, c, h, seed, data):
    pad = data.draw(st.integers(0, k // 2))
    assert_matches(layers.build_pool(CONFIGS[config], h=h, w=h, c=c, k=k, stride=stride, pad=pad, mode=mode,
                                     seed=seed))


@pytest.mark.parametrize("config", CONFIGS)
def test_global_average_pool(config):
    """A 7x7 window on a 7x7 input: the tap loop is folded into one accumulator."""
    assert_matches(layers.build_pool(CONFIGS[config], h=7, w=7, c=37, k=7, stride=1, pad=0, mode="avg"))


@pytest.mark.parametrize("config", CONFIGS)
@SETTINGS
@given(c=st.integers(1, 40), h=st.integers(1, 20), w=st.integers(1, 20), seed=st.integers(0, 2**16),
       signed=st.booleans())
def test_add_random_shapes(config, c, h, w, seed, signed):
    assert_matches(layers.build_add(CONFIGS[config], h=h, w=w, c=c, seed=seed, signed=signed))


def test_large_conv_tiles_and_weight_groups():
    """Several row tiles and several weight groups (weights larger than half the buffer)."""
    hw = HwConfig(weight_blocks=64, act_lines=4096)
    case = layers.build_conv(hw, h=20, w=20, cin=48, cout=80, k=3, seed=3)
    assert case.description["tiles"] > 2 and case.description["weight_groups"] > 1
    assert_matches(case)


def test_fully_connected_weight_groups():
    hw = HwConfig(weight_blocks=128)
    case = layers.build_fc(hw, cin=512, cout=200, seed=4)
    assert case.description["weight_groups"] > 1
    assert_matches(case)


def test_compilation_is_deterministic():
    first = layers.build_conv(DEFAULT, h=10, w=10, cin=20, cout=30, k=3, seed=7).binary.to_bytes()
    second = layers.build_conv(DEFAULT, h=10, w=10, cin=20, cout=30, k=3, seed=7).binary.to_bytes()
    assert first == second


def test_compute_bound_conv_overlaps_dma_in_the_estimate():
    """The golden estimate of a compute-bound conv is close to its MAC count over the PEs."""
    case = layers.build_conv(DEFAULT, h=28, w=28, cin=64, cout=64, k=3, seed=1)
    result = assert_matches(case)
    assert case.macs / (DEFAULT.macs_per_cycle * result.cycles) > 0.85


def test_layer_too_large_is_a_clear_error():
    tiny = HwConfig(act_lines=64, acc_entries=16)
    with pytest.raises(CompileError, match=r"act lines double-buffered \(act_lines = 64\)"):
        layers.build_conv(tiny, h=32, w=32, cin=64, cout=64, k=3)


def test_bad_layer_parameters_are_clear_errors():
    with pytest.raises(CompileError, match="stride must be 1 or 2, not 3"):
        layers.build_conv(DEFAULT, h=8, w=8, cin=4, cout=4, k=3, stride=3)
    with pytest.raises(CompileError, match="kernel must be between 1 and 64, not 99"):
        layers.build_conv(DEFAULT, h=12, w=12, cin=4, cout=4, k=99, pad=0)
    with pytest.raises(CompileError, match="pool mode must be 'max' or 'avg'"):
        layers.build_pool(DEFAULT, h=8, w=8, c=4, mode="min")


CHUNKY = HwConfig(cores=2, weight_blocks=32, act_lines=4096, acc_entries=256, param_entries=64)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(k=st.sampled_from([1, 3]), stride=st.sampled_from([1, 2]), cin=st.integers(17, 300), cout=st.integers(1, 60),
       h=st.integers(3, 9), w=st.integers(3, 9), cores=st.integers(1, 2), split=st.sampled_from(SPLITS),
       seed=st.integers(0, 2**16), relu=st.booleans())
def test_input_channel_chunks_random_shapes(k, stride, cin, cout, h, w, cores, split, seed, relu):
    """Weights of one output block beyond half the weight scratchpad: the input channels are
    accumulated in chunks, on one or two cores, split either way."""
    case = layers.build_conv(CHUNKY, h=h, w=w, cin=cin, cout=cout, k=k, stride=stride, cores=cores, split=split,
                             seed=seed, relu=relu)
    cin_blocks, half = -(-cin // CHUNKY.lanes), CHUNKY.weight_blocks // 2
    if k * k * cin_blocks > half:
        assert case.description["input_chunks"] == -(-cin_blocks // (half // (k * k))) >= 2
    else:
        assert "input_chunks" not in case.description
    assert_matches(case)


def test_input_channel_chunks_fully_connected():
    # 600 inputs are 38 blocks, above the 16 of half the weight scratchpad: 3 chunks per output block.
    case = layers.build_fc(CHUNKY, cin=600, cout=40, seed=5)
    assert case.description["input_chunks"] == 3
    assert_matches(case)


def test_chunking_limits_are_clear_errors():
    with pytest.raises(CompileError, match=r"needs weight_blocks >= 50"):    # a 5x5 tap set alone is 25 blocks
        layers.build_conv(CHUNKY, h=6, w=6, cin=40, cout=8, k=5)



def test_input_channel_chunks_with_more_output_blocks_than_parameter_room():
    # 150 output channels are 10 blocks, 20 parameter entries; 8 entries hold 4 blocks at a time,
    # so every core's part is lowered in 2 or 3 block ranges, one after the other.
    from dlfusion.compiler.lower.tiling import chunked_block_ranges
    few_params = HwConfig(cores=2, weight_blocks=32, param_entries=8, act_lines=4096)
    assert chunked_block_ranges(few_params, 0, 10) == [(0, 4), (4, 8), (8, 10)]
    for cores, split in ((1, "rows"), (2, "rows"), (2, "channels")):
        case = layers.build_conv(few_params, h=4, w=4, cin=64, cout=150, k=3, cores=cores, split=split, seed=2)
        assert case.description["input_chunks"] == 4
        assert_matches(case)
