"""Annotation: what each node costs, from its shapes."""

from __future__ import annotations

from ..ir import Graph, Op

__all__ = ["annotate_macs"]


def annotate_macs(graph: Graph) -> None:
    """``attrs.macs`` of every convolution, depthwise and fully connected node: output elements
    times the kernel window (times the input channels of a group but for depthwise and channel
    selections)."""
    for node in graph.nodes:
        if node.op not in (Op.CONV, Op.FC, Op.DEPTHWISE):
            continue
        cin = graph.tensors[node.inputs[0]].shape[0]
        cout, oh, ow = graph.tensors[node.output].shape
        fan_in = 1 if node.op is Op.DEPTHWISE or node.attrs.selection else cin // node.attrs.groups
        node.attrs.macs = cout * oh * ow * node.attrs.kernel ** 2 * fan_in
