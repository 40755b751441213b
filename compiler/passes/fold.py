"""Folding: Relu and Clip into the clamp of the op that produces their input."""

from __future__ import annotations

from ..ir import Graph, IRError, Op

__all__ = ["fold_clamps"]


def fold_clamps(graph: Graph) -> None:
    """Remove every CLAMP node: its producer's clamp is narrowed to it and its readers read the producer.

    Raises
    ------
    IRError
        A clamp whose input is the graph input, or is read by other nodes too (the producer's
        clamp would change what they see).
    """
    for node in [n for n in graph.nodes if n.op is Op.CLAMP]:
        source = node.inputs[0]
        producer = graph.producer(source)
        if producer is None or len(graph.consumers(source)) != 1 or source == graph.output:
            what = node.attrs.source or "clamp"
            raise IRError(f"node {node.name!r} ({what}): a {what} must directly follow the op producing "
                          f"{source!r} and be its only consumer")
        lo, hi = producer.attrs.clamp
        clamp_lo, clamp_hi = node.attrs.clamp
        producer.attrs.clamp = (max(lo, clamp_lo), min(hi, clamp_hi))
        graph.nodes.remove(node)
        del graph.tensors[node.output]
        for reader in graph.consumers(node.output):
            reader.inputs = [source if name == node.output else name for name in reader.inputs]
        if graph.output == node.output:
            graph.output = source
