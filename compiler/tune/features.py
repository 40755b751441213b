"""What a fusion group costs, counted from the graph without lowering it: the cost model's features.

For a group of nodes on ``cores`` cores split by ``rows`` or ``channels``,
:meth:`Workload.features` counts what the compiler's lowering would make the
hardware do, following the same tiling decisions (:func:`~dlfusion.compiler.lower.plan_tiling`
for a single layer, :meth:`~dlfusion.compiler.fuse.FusedGroup.layout` for a
fusion group) but without emitting instructions, so a search can price hundreds
of candidate groups in well under a second:

* DMA lines loaded and stored, per core and in total (padding excluded): exactly
  what the group's LOADs and STOREs move (``tests/tune/test_features.py`` checks
  them against :func:`~dlfusion.sim.traffic.dram_traffic_by_barrier` of compiled
  plans);
* PE cycles (one pixel per cycle per MATMUL step: ``L x L`` MACs, or ``L`` in
  depthwise/pooling modes) and PPU cycles, per core, the busiest core counting;
* instructions (their fetch also goes through the DRAM port), tiles (bands), and
  the weight lines a fusion group loads before it can start computing.

These are counts, not cycles; :mod:`.costmodel` turns them into cycles with
coefficients fitted to RTL measurements.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ...hw.config import HwConfig
from ..compile import _windowed_layer
from ..fuse import FusedGroup
from ..ir import Graph, Node, Op
from ..layers import SPLITS, partition
from ..lower import chunk_blocks, chunked_block_ranges, plan_tiling, weight_blocks_for
from ..program import CompileError
from .errors import TuneError

__all__ = ["GroupFeatures", "Workload", "Candidate"]

#: ``(node names, cores, split)``: one way to run a contiguous run of nodes as one group.
Candidate = tuple[tuple[str, ...], int, str]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _valid(o0: int, o1: int, offset: int, stride: int, size: int) -> bool:
    """Whether some output ``o`` in ``[o0, o1)`` reads input ``o * stride + offset`` inside ``[0, size)``."""
    first = max(o0, -(offset // stride))
    last = min(o1, (size - 1 - offset) // stride + 1)
    return last > first


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


@dataclass
class _Core:
    load: int = 0
    store: int = 0
    pe: int = 0
    ppu: int = 0
    instructions: int = 1       # the group's BARRIER
    tiles: int = 0

    @property
    def lines(self) -> int:
        return self.load + self.store


def _bands(layer, tiling, r0: int, r1: int):
    """Per band of output rows ``[r0, r1)``: its rows and the input rows it loads (padding excluded)."""
    k, s, p = layer.kernel, layer.stride, layer.pad
    for oy0 in range(r0, r1, tiling.rows):
        rows = min(tiling.rows, r1 - oy0)
        first_row = oy0 * s - p
        in_rows = (rows - 1) * s + k
        yield rows, max(0, min(layer.height, first_row + in_rows) - max(0, first_row))


class Workload:
    """A graph on a HwConfig, with memoized :meth:`fits` and :meth:`features` of its candidate groups.

    Parameters
    ----------
    graph : Graph
    hw : HwConfig
    """

    def __init__(self, graph: Graph, hw: HwConfig):
        self.graph, self.hw = graph, hw
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

    def splits(self, nodes: tuple[str, ...], cores: int) -> tuple[str, ...]:
        """Split axes of a group: both for one layer on several cores, rows otherwise."""
        return SPLITS if len(nodes) == 1 and cores > 1 else ("rows",)

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
                    self._layouts[key] = FusedGroup(self.graph, self.hw, list(nodes)).layout(cores)
                    self._fits[key] = None
                except CompileError as error:
                    self._fits[key] = str(error)
        return self._fits[key]

    def features(self, nodes: tuple[str, ...], cores: int, split: str = "rows") -> GroupFeatures:
        """The counts of ``nodes`` as one group on ``cores`` cores split by ``split``.

        Raises
        ------
        TuneError
            The group does not fuse or fit, or the split is not allowed for it.
        """
        nodes = tuple(nodes)
        if cores == 1:
            split = "rows"
        key = (nodes, cores, split)
        cached = self._features.get(key)
        if cached is not None:
            return cached
        if split not in self.splits(nodes, cores):
            raise TuneError(f"a group of {len(nodes)} nodes on {cores} cores cannot be split by {split!r}")
        if len(nodes) == 1:
            per_core = self._single(self.node[nodes[0]], cores, split)
            prologue = 0
        else:
            why = self.fits(nodes, cores)
            if why is not None:
                raise TuneError(why)
            per_core, prologue = self._fused(nodes, cores)
        features = GroupFeatures(
            nodes=len(nodes), cores=max(1, sum(1 for core in per_core if core.tiles or core.lines)),
            macs=sum(self.node[name].macs for name in nodes),
            load_lines=sum(core.load for core in per_core), store_lines=sum(core.store for core in per_core),
            max_core_lines=max(core.lines for core in per_core), pe_cycles=max(core.pe for core in per_core),
            ppu_cycles=max(core.ppu for core in per_core),
            instructions=sum(core.instructions for core in per_core),
            max_core_instructions=max(core.instructions for core in per_core),
            tiles=max(core.tiles for core in per_core), prologue_lines=prologue)
        self._features[key] = features
        return features

    # -- one layer: the tiling of compiler.lower -------------------------------------------------

    def _single(self, node: Node, cores: int, split: str) -> list[_Core]:
        graph, hw = self.graph, self.hw
        lanes = hw.lanes
        if node.op is Op.CONCAT:      # its producers wrote into it: nothing to do but the barrier
            return [_Core()]
        if node.op is Op.ADD:
            channels, height, width = graph.tensors[node.inputs[0]].shape
            blocks = _ceil_div(channels, lanes)
            parts = ([((a, b), blocks) for a, b in partition(height, cores)] if split == "rows"
                     else [((0, height), b - a) for a, b in partition(blocks, cores)])
            result = []
            for (r0, r1), part_blocks in parts:
                rows = next((c for c in range(r1 - r0, 0, -1)
                             if 6 * part_blocks * c * width <= hw.act_lines and c * width <= 4095), 1)
                tiles = _ceil_div(r1 - r0, rows)
                pixels = part_blocks * (r1 - r0) * width
                result.append(_Core(load=3 * hw.param_lines_per_entry + 2 * pixels, store=pixels, ppu=pixels,
                                    instructions=2 + 4 * tiles, tiles=tiles))
            return result
        layer = _windowed_layer(graph, node)
        k, p = layer.kernel, layer.pad
        out_rows, out_width = layer.out_height, layer.out_width
        cin_blocks = _ceil_div(layer.in_channels, lanes)
        cout_blocks = _ceil_div(layer.out_channels, lanes)
        per_block = weight_blocks_for(layer, lanes)
        parts = ([((a, b), (0, cout_blocks)) for a, b in partition(out_rows, cores)] if split == "rows"
                 else [((0, out_rows), (a, b)) for a, b in partition(cout_blocks, cores)])
        valid_cols = None
        result = []
        chunk = chunk_blocks(hw, layer)
        for (r0, r1), (b0, b1) in parts:
            blocks = b1 - b0
            tiling = plan_tiling(hw, layer, out_rows=r1 - r0, out_blocks=blocks)
            valid_cols = min(layer.width, tiling.in_width - p)
            if chunk is not None:
                result.append(self._chunked(layer, tiling, chunk, r0, r1, blocks))
                continue
            groups = _ceil_div(blocks, tiling.group_blocks)
            tiles = _ceil_div(r1 - r0, tiling.rows)
            core = _Core()
            core.load = 2 * blocks * hw.param_lines_per_entry + blocks * per_block * lanes
            core.instructions += groups + (blocks if per_block else 0)
            taps = k * k
            for g in range(groups):
                group_blocks = min(tiling.group_blocks, blocks - g * tiling.group_blocks)
                in_blocks = cin_blocks if layer.kind == "conv" else group_blocks
                for rows, valid_rows in _bands(layer, tiling, r0, r1):
                    core.load += in_blocks * valid_rows * valid_cols
                    core.store += group_blocks * rows * out_width
                    single = rows * out_width == 1
                    if layer.kind == "conv":
                        # one pixel: the input blocks fold into the loop, the first tap splits
                        matmuls = taps + (cin_blocks > 1) if single else taps * cin_blocks
                    elif single and layer.kind in ("maxpool", "avgpool"):
                        matmuls = 1 + 2 * (k > 1)
                    else:
                        matmuls = taps
                    core.instructions += 2 + group_blocks * (matmuls + 1)   # load, store; MATMULs + REQUANT
            core.tiles = groups * tiles
            core.pe = blocks * taps * (cin_blocks if layer.kind == "conv" else 1) * (r1 - r0) * out_width
            core.ppu = blocks * (r1 - r0) * out_width
            result.append(core)
        return result

    def _chunked(self, layer, tiling, chunk: int, r0: int, r1: int, blocks: int) -> _Core:
        """One core's part of a convolution lowered in input-channel chunks (``compiler.lower._lower_chunked``),
        its output blocks in ranges (``chunked_block_ranges``) one after the other."""
        hw = self.hw
        lanes = hw.lanes
        taps = layer.kernel * layer.kernel
        cin_blocks = _ceil_div(layer.in_channels, lanes)
        sizes = [min(chunk, cin_blocks - c0) for c0 in range(0, cin_blocks, chunk)]
        tiles = _ceil_div(r1 - r0, tiling.rows)
        valid_cols = min(layer.width, tiling.in_width - layer.pad)
        core = _Core()
        core.load = 2 * blocks * hw.param_lines_per_entry + blocks * tiles * taps * cin_blocks * lanes
        # per block range: the credits sync, its parameters and the final credit; then a LOAD per chunk
        core.instructions += 3 * len(chunked_block_ranges(hw, 0, blocks)) + blocks * tiles * len(sizes)
        for rows, valid_rows in _bands(layer, tiling, r0, r1):
            core.load += blocks * cin_blocks * valid_rows * valid_cols
            core.store += blocks * rows * layer.out_width
            if rows * layer.out_width == 1:   # the chunk's blocks fold into the loop; the first tap splits
                matmuls = taps * len(sizes) + (sizes[0] > 1)
            else:
                matmuls = taps * cin_blocks
            core.instructions += blocks * (2 + matmuls + 1)              # load, store, MATMULs, REQUANT
        core.tiles = blocks * tiles
        core.pe = blocks * taps * cin_blocks * (r1 - r0) * layer.out_width
        core.ppu = blocks * (r1 - r0) * layer.out_width
        return core

    # -- a fusion group: the band schedule of compiler.fuse ---------------------------------------

    def _fused(self, nodes: tuple[str, ...], cores: int) -> tuple[list[_Core], int]:
        """Per core: the loops of ``compiler.fuse._CoreEmitter`` without the instructions."""
        graph, hw = self.graph, self.hw
        lanes = hw.lanes
        group = FusedGroup(graph, hw, list(nodes))
        layout = self._layouts[(nodes, cores)]
        members = [self.node[name] for name in nodes]
        constants = constant_loads = 0
        for node in members:
            if node.op is Op.ADD:
                constants += 3 * hw.param_lines_per_entry
                constant_loads += 1
            elif node.op is not Op.CONCAT:
                blocks = _ceil_div(graph.tensors[node.output].shape[0], lanes)
                constants += 2 * blocks * hw.param_lines_per_entry
                constant_loads += 1
                weights = blocks * weight_blocks_for(group._layer_view(node), lanes)
                if weights:
                    constants += weights * lanes
                    constant_loads += 1
        out_root = group.final.output
        out_blocks = _ceil_div(graph.tensors[out_root].shape[0], lanes)
        out_width = graph.tensors[out_root].shape[2]

        def pieces(tensor: str, row: int, stride: int, count: int) -> int:
            """Instructions an access of ``count`` rows from ``row`` takes where the region wraps."""
            region = layout.regions[group.root(tensor)[0]]
            n = 0
            while count > 0:
                step = region.run_end(row, stride, count)
                row, count, n = row + step * stride, count - step, n + 1
            return n

        result = []
        for sched in layout.schedules:
            core = _Core(load=constants, tiles=len(sched.bands))
            core.instructions += 1 + constant_loads + 1          # W_FREE sync, constants, final W_FREE sync
            dirty: set[str] = set()
            for band, (a, b) in enumerate(sched.bands):
                loads = 0
                for tensor in group.inputs:
                    first, last = sched.new_rows(tensor, band)
                    if last > first:
                        c, _, w = graph.tensors[tensor].shape
                        core.load += _ceil_div(c, lanes) * (last - first) * w
                        loads += pieces(tensor, first, 1, last - first)
                core.instructions += max(1, loads) + 1                  # loads, the band's store
                core.store += out_blocks * (b - a) * out_width
                for node in members:
                    first, end = sched.new_rows(node.output, band)
                    if end <= first or node.op is Op.CONCAT:
                        continue
                    if node.op is Op.ADD:
                        self._fused_add(node, first, end, core, pieces)
                    else:
                        if any(group.root(x)[0] in dirty for x in node.inputs):
                            core.instructions += 3                      # drain the PPU
                            dirty.clear()
                        self._fused_windowed(group, node, first, end, core, pieces)
                    dirty.add(group.root(node.output)[0])
            result.append(core)
        return result, constants

    def _fused_add(self, node: Node, first: int, end: int, core: _Core, pieces) -> None:
        channels, _, width = self.graph.tensors[node.output].shape
        core.ppu += _ceil_div(channels, self.hw.lanes) * (end - first) * width
        row = first
        while row < end:
            n = min(end - row, 4095 // width)
            for name in (*node.inputs, node.output):
                region_rows = pieces(name, row, 1, n)
                if region_rows > 1:       # the run stops where a region wraps
                    n = self._run_length(name, row, n, pieces)
            core.instructions += 2                                       # SYNC + ADD
            row += n

    def _run_length(self, tensor: str, row: int, count: int, pieces) -> int:
        low, high = 1, count
        while low < high:
            middle = (low + high + 1) // 2
            if pieces(tensor, row, 1, middle) == 1:
                low = middle
            else:
                high = middle - 1
        return low

    def _fused_windowed(self, group: FusedGroup, node: Node, first: int, end: int, core: _Core, pieces) -> None:
        hw, graph = self.hw, self.graph
        lanes = hw.lanes
        x_name = node.inputs[0]
        x, y = graph.tensors[x_name], graph.tensors[node.output]
        _, h, w = x.shape
        cout_blocks = _ceil_div(y.shape[0], lanes)
        ow = y.shape[2]
        k, s, p = node.attrs["kernel"], node.attrs["stride"], node.attrs["pad"]
        conv = node.op in (Op.CONV, Op.FC)
        pool = node.op in (Op.MAXPOOL, Op.AVGPOOL)
        cin_blocks = _ceil_div(x.shape[0], lanes)
        sources = cin_blocks if conv else 1
        core.pe += cout_blocks * k * k * sources * (end - first) * ow
        core.ppu += cout_blocks * (end - first) * ow
        chunk = max(1, (hw.acc_entries // 2) // ow)
        columns = [kx for kx in range(k) if _valid(0, ow, kx - p, s, w)]
        for y0 in range(first, end, chunk):
            y1 = min(end, y0 + chunk)
            if (y1 - y0) * ow == 1 and conv:
                taps = sum(1 for ky in range(k) for kx in range(k) if 0 <= y0 * s - p + ky < h and 0 <= kx - p < w)
                matmuls = taps + (cin_blocks > 1)                        # the first tap is split
            elif (y1 - y0) * ow == 1 and pool and pieces(x_name, max(0, y0 * s - p),
                                                         1, min(h, y0 * s - p + k) - max(0, y0 * s - p)) == 1:
                rows, cols = min(h, y0 * s - p + k) - max(0, y0 * s - p), min(w, k - p) - max(0, -p)
                matmuls = 1 + (rows * cols > 1) * ((cols > 1) + (rows > 1))
            else:
                matmuls = 0
                for ky in range(k):
                    if not _valid(y0, y1, ky - p, s, h):
                        continue
                    oy0 = max(y0, -((ky - p) // s))
                    oy1 = min(y1, (h - 1 - (ky - p)) // s + 1)
                    matmuls += len(columns) * sources * pieces(x_name, oy0 * s - p + ky, s, oy1 - oy0)
            requants = pieces(node.output, y0, 1, y1 - y0)
            core.instructions += cout_blocks * (matmuls + requants)
