"""The IR passes and their runner: order, the invariant check between passes, what each pass does."""

import numpy as np
import pytest

from dlfusion.compiler.ir import Graph, IRError, Node, Op, Tensor, check
from dlfusion.compiler.passes import FRONTEND_PASSES, Pass, run_passes
from dlfusion.compiler.passes.annotate import annotate_macs
from dlfusion.compiler.passes.fold import fold_clamps


def _graph(clamps=((0, 255),)):
    """input -> conv (3x3, 4 -> 8) -> clamp... -> output, uint8."""
    tensors = {"x": Tensor("x", (4, 6, 6), "uint8", 0.05, 128), "y": Tensor("y", (8, 6, 6), "uint8", 0.1, 100)}
    nodes = [Node("conv", Op.CONV, ["x"], "y", dict(kernel=3, stride=1, pad=1, weight=np.ones((8, 4, 3, 3), np.int8),
                                                    bias=np.zeros(8, np.int32),
                                                    multiplier=np.full(8, 0.01, np.float32), clamp=(0, 255)))]
    last = "y"
    for index, clamp in enumerate(clamps):
        out = f"r{index}"
        tensors[out] = Tensor(out, (8, 6, 6), "uint8", 0.1, 100)
        nodes.append(Node(f"relu{index}", Op.CLAMP, [last], out, dict(clamp=clamp, source="Relu")))
        last = out
    return Graph("g", tensors, nodes, input="x", output=last)


def test_frontend_passes_fold_annotate_and_leave_a_legal_graph():
    graph = run_passes(_graph([(100, 255), (0, 200)]), check_between=True)
    assert [n.op for n in graph.nodes] == [Op.CONV]
    assert graph.nodes[0].attrs.clamp == (100, 200) and graph.output == "y"
    assert graph.nodes[0].attrs.macs == 8 * 36 * 9 * 4
    assert [p.name for p in FRONTEND_PASSES] == ["fold_clamps", "rescale_concat_inputs", "align_concat_inputs",
                                                 "annotate_macs"]
    check(graph)


def test_an_unfolded_clamp_is_illegal_for_the_lowering():
    graph = _graph()
    check(graph, legal=False)
    with pytest.raises(IRError, match="must be folded into its producer before lowering"):
        check(graph)


def test_a_pass_that_breaks_an_invariant_is_named():
    def drop_the_producer(graph):
        graph.nodes.pop(0)

    with pytest.raises(IRError, match=r"after pass 'breaker': .*used before it is produced"):
        run_passes(_graph(), [Pass("breaker", drop_the_producer)], check_between=True)


def test_the_check_between_passes_catches_what_a_later_pass_would_hide():
    """Without the check between passes only the final graph is checked; with it, the broken
    intermediate graph is reported at the pass that made it."""
    def rename_output_tensor(graph):
        graph.tensors["elsewhere"] = graph.tensors.pop("y")

    def restore(graph):
        graph.tensors["y"] = graph.tensors.pop("elsewhere")

    passes = [Pass("rename", rename_output_tensor), Pass("restore", restore), *FRONTEND_PASSES]
    run_passes(_graph(), passes, check_between=False)
    with pytest.raises(IRError, match=r"after pass 'rename': conv: output 'y' has no tensor"):
        run_passes(_graph(), passes, check_between=True)


def test_fold_refuses_a_clamp_of_the_graph_input():
    graph = _graph()
    graph.tensors["z"] = Tensor("z", (4, 6, 6), "uint8", 0.05, 128)
    graph.nodes.append(Node("relu_in", Op.CLAMP, ["x"], "z", dict(clamp=(128, 255), source="Relu")))
    with pytest.raises(IRError, match=r"node 'relu_in' \(Relu\): a Relu must directly follow"):
        fold_clamps(graph)


def test_macs_of_depthwise_and_fully_connected():
    tensors = {"x": Tensor("x", (8, 5, 5), "int8", 0.1, 0), "d": Tensor("d", (8, 3, 3), "int8", 0.1, 0),
               "f": Tensor("f", (10, 1, 1), "int8", 0.1, 0)}
    nodes = [Node("dw", Op.DEPTHWISE, ["x"], "d", dict(kernel=3, stride=2, pad=1)),
             Node("fc", Op.FC, ["d"], "f", dict(kernel=3, stride=1, pad=0))]
    graph = Graph("g", tensors, nodes, "x", "f")
    annotate_macs(graph)
    assert nodes[0].attrs.macs == 8 * 9 * 9 and nodes[1].attrs.macs == 10 * 8 * 9
