"""Whole-graph compilation, the compiler's driver: passes -> plan -> lower -> emit.

:func:`compile_graph` checks the graph (the IR invariant check), validates the
plan against it and the HwConfig (:mod:`.plan`) and emits the binary
(:mod:`.emit`, which lowers each group through :mod:`.lower.group`).
"""

from __future__ import annotations

from ..hw.binary import Binary
from ..hw.config import HwConfig
from .emit import emit_program
from .ir import Graph, check
from .passes.sparsity import choose_sparsity
from .plan import Plan

__all__ = ["compile_graph"]


def compile_graph(graph: Graph, hw: HwConfig, plan: Plan, *, check_ir: bool = True,
                  sparse_exec: str = "auto") -> Binary:
    """Lower ``graph`` with ``plan`` to a binary for ``hw``; ``sparse_exec`` (auto, on, off) says which
    convolutions run sparse (:func:`~.passes.sparsity.choose_sparsity`).

    Raises
    ------
    IRError
        ``check_ir`` and the graph breaks an IR invariant.
    CompileError
        The plan does not fit the graph or the HwConfig, or a group does not fit on chip.
    """
    if check_ir:
        check(graph)
    choose_sparsity(graph, hw, sparse_exec)
    plan.validate(graph, hw)
    return emit_program(graph, hw, plan)
