"""Folding: Relu and Clip into the clamp of the op that produces their input, lookup tables into the
op whose output bytes they map."""

from __future__ import annotations

from ..ir import TABLE_OPS, Graph, IRError, Node, Op
from ..tables import clamp_table, compose

__all__ = ["fold_clamps", "fold_lookups", "remove_unused"]


def _bypass(graph: Graph, node: Node, source: str) -> None:
    """Remove ``node`` (one input ``source``); its readers and the graph output read ``source``."""
    graph.nodes.remove(node)
    del graph.tensors[node.output]
    for reader in graph.consumers(node.output):
        reader.inputs = [source if name == node.output else name for name in reader.inputs]
    graph.rename_output(node.output, source)


def fold_clamps(graph: Graph) -> None:
    """Remove every CLAMP node: its producer's clamp is narrowed to it (a LOOKUP's table clamped) and
    its readers read the producer.

    Raises
    ------
    IRError
        A clamp whose input is the graph input, or is read by other nodes too (the producer's
        clamp would change what they see).
    """
    for node in [n for n in graph.nodes if n.op is Op.CLAMP]:
        source = node.inputs[0]
        producer = graph.producer(source)
        if producer is None or len(graph.consumers(source)) != 1 or source in graph.outputs:
            what = node.attrs.source or "clamp"
            raise IRError(f"node {node.name!r} ({what}): a {what} must directly follow the op producing "
                          f"{source!r} and be its only consumer")
        clamp_lo, clamp_hi = node.attrs.clamp
        if producer.op is Op.LOOKUP:
            producer.attrs.table = clamp_table(producer.attrs.table, clamp_lo, clamp_hi,
                                               graph.tensors[source].signed)
        else:
            lo, hi = producer.attrs.clamp
            producer.attrs.clamp = (max(lo, clamp_lo), min(hi, clamp_hi))
        _bypass(graph, node, source)


def fold_lookups(graph: Graph) -> None:
    """Fold every LOOKUP into the op producing its input where that op writes its output through the PPU
    (:data:`~dlfusion.compiler.ir.TABLE_OPS`) and nothing else reads it: the op computes the table's
    index (``table_input``) and writes the table's bytes; a LOOKUP of a LOOKUP becomes one table. The
    others stay, each lowered as a PPU pass of its own."""
    for node in [n for n in graph.nodes if n.op is Op.LOOKUP]:
        source = node.inputs[0]
        producer = graph.producer(source)
        if producer is None or len(graph.consumers(source)) != 1 or source in graph.outputs:
            continue
        if producer.op is Op.LOOKUP:
            producer.attrs.table = compose(producer.attrs.table, node.attrs.table)
        elif producer.op in TABLE_OPS and producer.attrs.table is None:
            producer.attrs.table = node.attrs.table
            producer.attrs.table_input = graph.tensors[source]
        else:
            continue
        # the producer now writes the lookup's output tensor
        out = graph.tensors[node.output]
        _bypass(graph, node, source)
        graph.tensors[source] = type(out)(source, out.shape, out.dtype, out.scale, out.zero_point)


def remove_unused(graph: Graph) -> None:
    """Remove the nodes whose output nothing reads (the sigmoid of a SiLU the frontend made one table)."""
    while True:
        read = {name for node in graph.nodes for name in node.inputs} | set(graph.outputs)
        unused = [node for node in graph.nodes if node.output not in read]
        if not unused:
            return
        for node in unused:
            graph.nodes.remove(node)
            del graph.tensors[node.output]
