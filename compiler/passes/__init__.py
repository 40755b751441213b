"""Passes over the graph IR, run as an ordered list with the IR invariant check between them.

:data:`FRONTEND_PASSES` turn the graph as the frontend read it into the graph the
lowering takes:

``remove_unused``
    the nodes whose output nothing reads (the sigmoid of a SiLU, made one table with its product);
``fold_clamps``
    every Relu/Clip (:attr:`~dlfusion.compiler.ir.Op.CLAMP`) into its producer's output clamp;
``fold_lookups``
    every lookup table (:attr:`~dlfusion.compiler.ir.Op.LOOKUP`: sigmoid, tanh, SiLU, ...) into the
    conv, fully connected, average pool or add producing its input, when nothing else reads it;
``rescale_concat_inputs``
    a concat input quantized otherwise than the concat's output gets an identity
    requantization layer (onnxruntime's QLinearConcat requantizes it too);
``align_concat_inputs``
    a concat input of a channel count that does not fill whole lane blocks is padded by a channel
    selection, and a second selection takes the real channels of the padded result;
``annotate_macs``
    every node's multiply-accumulate count, from its shapes.

:func:`run_passes` checks the graph after every pass when asked, or when the
environment variable ``DLFUSION_CHECK_PASSES`` is ``1`` (the test suite sets it),
and always checks the final graph.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..ir import Graph, IRError, check
from .annotate import annotate_macs
from .fold import fold_clamps, fold_lookups, remove_unused
from .legalize import align_concat_inputs, rescale_concat_inputs

__all__ = ["Pass", "FRONTEND_PASSES", "run_passes"]


@dataclass(frozen=True)
class Pass:
    """A named transformation of a graph, in place."""
    name: str
    run: Callable[[Graph], None]


FRONTEND_PASSES = (Pass("remove_unused", remove_unused), Pass("fold_clamps", fold_clamps),
                   Pass("fold_lookups", fold_lookups), Pass("rescale_concat_inputs", rescale_concat_inputs),
                   Pass("align_concat_inputs", align_concat_inputs), Pass("annotate_macs", annotate_macs))


def run_passes(graph: Graph, passes: Sequence[Pass] = FRONTEND_PASSES, *, check_between: bool | None = None) -> Graph:
    """Run ``passes`` over ``graph`` in order; return it.

    Raises
    ------
    IRError
        A pass refused the graph, or (naming the pass) left it breaking an invariant.
    """
    if check_between is None:
        check_between = os.environ.get("DLFUSION_CHECK_PASSES") == "1"
    if check_between:
        check(graph, legal=False)
    for index, step in enumerate(passes):
        step.run(graph)
        last = index == len(passes) - 1
        if check_between or last:
            try:
                check(graph, legal=last)
            except IRError as error:
                raise IRError(f"after pass {step.name!r}: {error}") from None
    return graph
