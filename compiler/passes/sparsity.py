"""The hardware pass that chooses each convolution's N:M weight pattern (``--sparse-exec``).

The pattern of a CONV or FC node follows from its int8 weights and the HwConfig alone: the
sparsest of ``hw.sparse_patterns`` that the weights satisfy along their input channels and
for which the layer has a whole window of input blocks (:func:`~..lower.common.detect_sparsity`).
Grouped convolutions and channel selections (block-sparse weights, whose input blocks differ
per output block) stay dense, as do depthwise layers and pools. The graph the frontend
made does not depend on the hardware; this pass runs where a HwConfig is known (compiling,
planning), and runs again for another HwConfig.
"""

from __future__ import annotations

import enum

from ...hw.config import HwConfig
from ...hw.isa import Sparsity
from ..errors import CompileError
from ..ir import Graph, Op
from ..lower.common import detect_sparsity

__all__ = ["SparseExec", "choose_sparsity", "sparse_candidates"]


class SparseExec(enum.StrEnum):
    """How ``--sparse-exec`` runs layers whose weights follow a pattern the PE array supports."""
    AUTO = "auto"   #: sparse where the weights allow it, dense elsewhere
    ON = "on"       #: as auto, and an error naming every conv/FC layer that cannot run sparse
    OFF = "off"     #: every layer dense (the same weights on the dense datapath: the speedup reference)

    @classmethod
    def parse(cls, mode: str | SparseExec) -> SparseExec:
        """``mode`` as a member, or a one-line error naming the accepted ones."""
        try:
            return cls(mode)
        except ValueError:
            accepted = ", ".join(m.value for m in cls)
            raise CompileError(f"--sparse-exec must be one of {accepted}, not {mode!r}") from None


def _eligible(node) -> bool:
    return node.op in (Op.CONV, Op.FC) and node.attrs.groups == 1 and not node.attrs.selection


def sparse_candidates(graph: Graph, hw: HwConfig) -> dict[str, Sparsity]:
    """The pattern every CONV/FC node would run with under ``auto`` (DENSE where none applies)."""
    return {node.name: (detect_sparsity(node.attrs.weight, graph.tensors[node.inputs[0]].shape[0], hw.lanes,
                                        hw.sparse_patterns) if _eligible(node) else Sparsity.DENSE)
            for node in graph.nodes if node.op in (Op.CONV, Op.FC)}


def choose_sparsity(graph: Graph, hw: HwConfig, mode: str | SparseExec = SparseExec.AUTO) -> dict[str, Sparsity]:
    """Set ``attrs.sparsity`` of every CONV/FC node for ``hw`` under ``mode``; return the sparse ones.

    Raises
    ------
    CompileError
        An unknown mode, or ``on`` with a layer that cannot run sparse (named, with why).
    """
    mode = SparseExec.parse(mode)
    chosen = sparse_candidates(graph, hw) if mode is not SparseExec.OFF else {}
    if mode is SparseExec.ON:
        dense = [name for name, sparsity in chosen.items() if sparsity is Sparsity.DENSE]
        if not hw.sparse_patterns:
            raise CompileError("--sparse-exec on: the HwConfig has no sparse PE array (sparse_patterns is empty)")
        if dense:
            shown = ", ".join(dense[:8]) + (f" and {len(dense) - 8} more" if len(dense) > 8 else "")
            raise CompileError(f"--sparse-exec on: {len(dense)} layer(s) cannot run sparse ({shown}): their "
                               f"weights follow none of {', '.join(hw.sparse_patterns)} along input channels, or "
                               f"they have fewer input-channel blocks than one window; use --sparse-exec auto")
    for node in graph.nodes:
        if node.op in (Op.CONV, Op.FC):
            node.attrs.sparsity = chosen.get(node.name, Sparsity.DENSE)
    return {name: sparsity for name, sparsity in chosen.items() if sparsity is not Sparsity.DENSE}
