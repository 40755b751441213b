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
    assert [p.name for p in FRONTEND_PASSES] == ["remove_unused", "fold_clamps", "fold_lookups",
                                                 "rescale_concat_inputs", "align_concat_inputs", "annotate_macs"]
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


def _lookup_graph(readers=1):
    """input -> conv -> lookup (a table) -> [clamp] ... with ``readers`` lookups of the conv's output."""
    graph = _graph(clamps=())
    table = np.arange(256, dtype=np.uint8)[::-1].copy()           # 255 - i
    for index in range(readers):
        name = f"l{index}"
        graph.tensors[name] = Tensor(name, (8, 6, 6), "uint8", 0.02, 7)
        graph.nodes.append(Node(f"lookup{index}", Op.LOOKUP, ["y"], name, dict(table=table, clamp=(0, 255))))
    graph.output = "l0"
    graph.more_outputs = [f"l{index}" for index in range(1, readers)]
    return graph, table


def test_fold_lookups_moves_the_table_into_its_producer():
    graph, table = _lookup_graph()
    run_passes(graph, check_between=True)
    (conv,) = graph.nodes
    assert conv.op is Op.CONV and np.array_equal(conv.attrs.table, table)
    assert (conv.attrs.table_input.scale, conv.attrs.table_input.zero_point) == (0.1, 100)   # what REQUANT makes
    assert graph.output == "y" and (graph.tensors["y"].scale, graph.tensors["y"].zero_point) == (0.02, 7)


def test_a_lookup_of_a_tensor_read_twice_stays_a_lookup():
    graph, _ = _lookup_graph(readers=2)
    run_passes(graph, check_between=True)
    assert [n.op for n in graph.nodes] == [Op.CONV, Op.LOOKUP, Op.LOOKUP] and graph.nodes[0].attrs.table is None
    assert graph.outputs == ["l0", "l1"]


def test_a_clamp_after_a_lookup_clamps_the_table_and_two_tables_compose():
    graph, table = _lookup_graph(readers=2)
    graph.tensors["c"] = Tensor("c", (8, 6, 6), "uint8", 0.02, 7)
    graph.nodes.append(Node("relu", Op.CLAMP, ["l1"], "c", dict(clamp=(7, 200), source="Relu")))
    graph.tensors["t"] = Tensor("t", (8, 6, 6), "uint8", 0.03, 1)
    graph.nodes.append(Node("again", Op.LOOKUP, ["c"], "t", dict(table=table, clamp=(0, 255))))
    graph.more_outputs = ["t"]
    run_passes(graph, check_between=True)
    second = next(n for n in graph.nodes if n.name == "lookup1")
    i = np.arange(256)
    assert np.array_equal(second.attrs.table, 255 - np.clip(255 - i, 7, 200))    # clamp, then the second table
    assert graph.outputs == ["l0", "l1"] and (graph.tensors["l1"].scale, graph.tensors["l1"].zero_point) == (0.03, 1)


def test_remove_unused_drops_what_no_output_needs():
    graph, _ = _lookup_graph(readers=2)
    graph.more_outputs = []
    run_passes(graph, check_between=True)
    assert [n.op for n in graph.nodes] == [Op.CONV] and graph.nodes[0].attrs.table is not None
