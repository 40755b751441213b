"""A global average pool over a map wider than the windowed lowering's largest window (EfficientNet-B0's first
squeeze-and-excitation pools 112x112): summed in bands of rows into one accumulator entry per channel block,
bit for bit the reference's, alone on one or several cores (channel split) and with a lookup table."""

import numpy as np
import pytest

from dlfusion.compiler.compile import compile_graph
from dlfusion.compiler.ir import Graph, Node, Op, Tensor, check
from dlfusion.compiler.lower.common import MAX_KERNEL
from dlfusion.compiler.plan import make_plan
from dlfusion.compiler.reference import run_graph
from dlfusion.hw.config import HwConfig
from dlfusion.sim.golden import GoldenSimulator

HW = HwConfig()
SMALL = HwConfig(cores=2, act_lines=1024, weight_blocks=512, acc_entries=256)


def _pool_graph(channels: int, size: int, table: bool, seed: int) -> Graph:
    rng = np.random.default_rng(seed)
    tensors = {"x": Tensor("x", (channels, size, size), "uint8", 0.05, 120),
               "y": Tensor("y", (channels, 1, 1), "uint8", 0.02, 3)}
    attrs = dict(kernel=size, stride=1, pad=0, multiplier=np.float32(0.05 / (0.02 * size * size)), clamp=(0, 255))
    if table:
        attrs.update(table=rng.integers(0, 256, 256).astype(np.uint8), table_input=Tensor("p", (channels, 1, 1),
                                                                                          "uint8", 0.02, 3))
    graph = Graph("pool", tensors, [Node("pool", Op.AVGPOOL, ["x"], "y", attrs)], "x", "y")
    check(graph)
    return graph


@pytest.mark.parametrize("hw, channels, size, table, cores", [(HW, 40, 112, False, 1), (HW, 40, 112, True, 4),
                                                              (SMALL, 20, 70, True, 2), (SMALL, 3, 65, False, 1)])
def test_a_large_global_pool_equals_the_reference(hw, channels, size, table, cores):
    assert size > MAX_KERNEL
    graph = _pool_graph(channels, size, table, size)
    x = np.random.default_rng(size).integers(0, 256, (channels, size, size)).astype(np.uint8)
    binary = compile_graph(graph, hw, make_plan(graph, hw, cores=cores))
    result = GoldenSimulator(hw).run(binary, {"input": x})
    assert result.error is None, str(result.error)
    assert np.array_equal(result.outputs["output"], run_graph(graph, x))
