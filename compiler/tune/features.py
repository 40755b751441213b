"""What a fusion group costs, counted by the compiler's own lowering: the cost model's features.

For a group of nodes on ``cores`` cores split by ``rows`` or ``channels``,
:meth:`Workload.features` runs the lowering of that group
(:func:`~dlfusion.compiler.lower.group.lower_group`) into streams that count
instead of encoding (:class:`~dlfusion.hw.asm.CountSink`), so the counts are
those of the compiled program by construction:

* DMA lines loaded and stored, per core and in total (padding excluded);
* PE cycles (one pixel per cycle per MATMUL step: ``L x L`` MACs, or ``L`` in
  depthwise/pooling modes) and PPU cycles, per core, the busiest core counting
  (a fusion group's PE cycles count whole kernel windows over the rows each
  core computes, from the group's schedule);
* instructions (their fetch also goes through the DRAM port), tiles (bands), and
  the weight and parameter lines a fusion group loads before it can start computing.

These are counts, not cycles; :mod:`.costmodel` turns them into cycles with
coefficients fitted to RTL measurements.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ...hw.asm import CountSink, StreamBuilder
from ...hw.config import HwConfig
from ..errors import CompileError
from ..ir import WINDOWED, Graph, Op
from ..lower.common import Split, ceil_div, layer_of
from ..lower.fused import FusedGroup
from ..lower.group import lower_group
from ..passes.sparsity import choose_sparsity
from .errors import TuneError

__all__ = ["GroupFeatures", "Workload", "Candidate"]

#: ``(node names, cores, split)``: one way to run a contiguous run of nodes as one group.
Candidate = tuple[tuple[str, ...], int, Split]


class _NoConstants(dict):
    """Every node's constants at DRAM line 0 (counts do not depend on addresses)."""

    def __missing__(self, name):
        return {"weight_line": 0, "param_line": 0, "table_line": 0, "meta_line": 0}


_NO_CONSTANTS = _NoConstants()


@dataclass(frozen=True)
class GroupFeatures:
    """Static counts of one group (see the module docstring).

    Attributes
    ----------
    nodes : int
        Nodes in the group.
    cores : int
        Cores that get work (a split can leave some idle).
    macs : int
    load_lines, store_lines : int
        DMA lines over all cores.
    max_core_lines : int
        DMA lines of the busiest core.
    pe_cycles, ppu_cycles : int
        Of the busiest core.
    instructions : int
        Over all cores, the group's barrier included.
    max_core_instructions : int
    tiles : int
        Tiles (layer) or bands (fusion group) of the core with the most.
    prologue_lines : int
        Weight and parameter lines a fusion group loads on each core before its first
        band can start (a single layer streams them block by block instead).
    """
    nodes: int
    cores: int
    macs: int
    load_lines: int
    store_lines: int
    max_core_lines: int
    pe_cycles: int
    ppu_cycles: int
    instructions: int
    max_core_instructions: int
    tiles: int
    prologue_lines: int

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> GroupFeatures:
        return cls(**{name: int(data[name]) for name in cls.__dataclass_fields__})


class Workload:
    """A graph on a HwConfig, with memoized :meth:`fits` and :meth:`features` of its candidate groups.

    Parameters
    ----------
    graph : Graph
    hw : HwConfig
    sparse_exec : str
        ``auto``, ``on`` or ``off``: which layers run sparse (:func:`~..passes.sparsity.choose_sparsity`,
        applied to ``graph`` for ``hw`` here, as compiling does).
    """

    def __init__(self, graph: Graph, hw: HwConfig, sparse_exec: str = "auto"):
        self.graph, self.hw = graph, hw
        choose_sparsity(graph, hw, sparse_exec)
        self.names = [node.name for node in graph.nodes]
        self.position = {name: index for index, name in enumerate(self.names)}
        self.node = {node.name: node for node in graph.nodes}
        self._fits: dict[tuple[tuple[str, ...], int], str | None] = {}
        self._features: dict[Candidate, GroupFeatures] = {}
        self._layouts: dict[tuple[tuple[str, ...], int], object] = {}

    # -- candidates ------------------------------------------------------------------------------

    def core_counts(self) -> list[int]:
        """``{1, 2, 4, ...} <= hw.cores`` and ``hw.cores``: the core counts the tuner considers."""
        counts = {1 << i for i in range(self.hw.cores.bit_length()) if 1 << i <= self.hw.cores}
        return sorted(counts | {self.hw.cores})

    def splits(self, nodes: tuple[str, ...], cores: int) -> tuple[Split, ...]:
        """Split axes of a group: both for one layer on several cores, rows otherwise."""
        return tuple(Split) if len(nodes) == 1 and cores > 1 else (Split.ROWS,)

    def run(self, start: int, length: int) -> tuple[str, ...]:
        return tuple(self.names[start:start + length])

    def fits(self, nodes: tuple[str, ...], cores: int) -> str | None:
        """``None`` if ``nodes`` fuse and fit on chip on ``cores`` cores, else why not."""
        key = (tuple(nodes), cores)
        if key not in self._fits:
            if len(nodes) == 1:
                self._fits[key] = None
            else:
                try:
                    group = FusedGroup(self.graph, self.hw, list(nodes))
                    self._layouts[key] = (group, group.layout(cores))
                    self._fits[key] = None
                except CompileError as error:
                    self._fits[key] = str(error)
        return self._fits[key]

    def features(self, nodes: tuple[str, ...], cores: int, split: Split | str = Split.ROWS) -> GroupFeatures:
        """The counts of ``nodes`` as one group on ``cores`` cores split by ``split``.

        Raises
        ------
        TuneError
            The group does not fuse or fit, or the split is not allowed for it.
        """
        nodes = tuple(nodes)
        if cores == 1:
            split = Split.ROWS
        key = (nodes, cores, split)
        cached = self._features.get(key)
        if cached is not None:
            return cached
        if split not in self.splits(nodes, cores):
            raise TuneError(f"a group of {len(nodes)} nodes on {cores} cores cannot be split by {str(split)!r}")
        fused = layout = None
        if len(nodes) > 1:
            why = self.fits(nodes, cores)
            if why is not None:
                raise TuneError(why)
            fused, layout = self._layouts[(nodes, cores)]
        streams = [StreamBuilder(core, CountSink()) for core in range(cores)]
        lowered = lower_group(self.graph, self.hw, list(nodes), cores, Split(split), streams,
                              address=lambda name: 0, constants=_NO_CONSTANTS, label=f"group ({', '.join(nodes)})",
                              fused=fused, layout=layout)
        counts = [stream.sink for stream in streams if stream.sink.instructions] or [streams[0].sink]
        if fused is None:
            pe_cycles = max(count.pe_steps for count in counts)
            prologue = 0
        else:
            # The PE work of whole kernel windows, padding included: what the cost model was fitted to.
            pe_cycles = max(self._nominal_pe(fused, schedule) for schedule in layout.schedules)
            prologue = max(count.constant_lines for count in counts)
        features = GroupFeatures(
            nodes=len(nodes), cores=max(1, sum(1 for count in counts if count.instructions)),
            macs=sum(self.node[name].macs for name in nodes),
            load_lines=sum(count.load_lines for count in counts),
            store_lines=sum(count.store_lines for count in counts),
            max_core_lines=max(count.dma_lines for count in counts), pe_cycles=pe_cycles,
            ppu_cycles=max(count.ppu_steps for count in counts),
            instructions=sum(count.instructions + 1 for count in counts),        # + the group's BARRIER
            max_core_instructions=max(count.instructions + 1 for count in counts),
            tiles=max(lowered.tiles, default=0), prologue_lines=prologue)
        self._features[key] = features
        return features

    def _nominal_pe(self, fused: FusedGroup, schedule) -> int:
        """PE cycles of one core's part of a fusion group, counting every kernel tap over the
        output rows it computes."""
        graph, lanes = self.graph, self.hw.lanes
        cycles = 0
        for node in fused.nodes:
            if node.op not in WINDOWED:
                continue
            y = graph.tensors[node.output]
            rows = schedule.end[node.output][-1] - schedule.start[node.output]
            # the steps the lowering multiplies (the input blocks of nonzero weight blocks for a block-sparse
            # conv, windows of M/N blocks for an N:M sparse one)
            sources = layer_of(graph, node).step_count(lanes) if node.op in (Op.CONV, Op.FC) else 1
            cycles += ceil_div(y.shape[0], lanes) * node.attrs.kernel ** 2 * sources * rows * y.shape[2]
        return cycles
