"""Depth-first lowering of a fusion group: several layers, intermediates on chip.

A fusion group is a contiguous run of nodes with one result that leaves the
group (its last node's output). Its output rows are cut into *bands* of ``T``
rows; per band every node of the group computes just the rows its consumers
need next, walking backwards from the band through the kernels' windows. The
group's tensors live in activation-scratchpad regions:

* inputs from DRAM and intermediates are *circular row buffers*: row ``r`` of a
  tensor sits at row ``r mod capacity`` of its region, one plane per channel
  block. A band computes only rows no earlier band computed, so the halo rows
  of a ``k x k`` convolution are kept, not recomputed (except at the rows where
  two cores' parts meet). A capacity covers the rows a band reads plus, for
  DRAM inputs, the rows loaded ahead for the next band.
* the group's output has two band-sized slots, stored to DRAM per band while
  the next band is computed.

Padding is not stored: a kernel tap whose window leaves the image is restricted
to the output pixels where it stays inside (a padded pixel contributes nothing
to a convolution, an average pool with ``count_include_pad``, or a max pool).
The first instruction of every accumulator tile is a tap that covers all
pixels ("full-coverage" tap), so it can overwrite the accumulators.

Synchronisation uses the lowering's semaphores (see :mod:`.common`):

* weights and parameters of all the group's layers are loaded once (the whole
  weight and parameter scratchpads, both ``W_FREE`` credits), ``W_FULL`` once;
* per band the DMA loads new input rows (first load waits ``IN_FREE``, last
  signals ``IN_FULL``; a band without new rows issues an empty load so every
  band takes one credit); the band's first PE instruction waits ``IN_FULL``
  and the band's last PPU instruction signals ``IN_FREE``. Two credits let the
  loads of band ``b + 1`` overlap band ``b``, and a row is overwritten only once
  the band before the one that last read it has finished;
* accumulator tiles alternate between two slots (``ACC_FULL``/``ACC_FREE``);
* before the PE reads a tensor the PPU wrote, it *drains* the PPU: it takes
  both ``ACC_FREE`` credits (all requantizations issued so far have finished)
  and gives them back. An ADD runs on the PPU behind a PE ``SYNC`` that passes
  an accumulator credit through, so drains cover it too;
* the band's output slot: first write waits ``OUT_FREE``, last signals
  ``OUT_FULL``; the DMA stores it and signals ``OUT_FREE``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...hw.asm import StreamBuilder
from ...hw.config import HwConfig
from ...hw.isa import Buffer, Opcode, Sparsity, Unit
from ..errors import CompileError
from ..ir import Graph, Node, Op, computed
from .common import (
    ACC_FREE,
    ACC_FULL,
    FIELD_MAX_COUNT,
    IN_FREE,
    IN_FULL,
    MATMUL_MODES,
    OUT_FREE,
    OUT_FULL,
    W_FREE,
    W_FULL,
    LayerKind,
    ceil_div,
    contiguous,
    layer_of,
    load_whole_constants,
    lookup_fields,
    partition,
    split_folded_first,
    step_instructions,
    to_byte,
    weight_blocks_for,
    weight_loads,
)

__all__ = ["FusedGroup", "FUSABLE_OPS"]

FUSABLE_OPS = (Op.CONV, Op.FC, Op.DEPTHWISE, Op.MAXPOOL, Op.AVGPOOL, Op.ADD, Op.CONCAT)
_PE_OPS = (Op.CONV, Op.FC, Op.DEPTHWISE, Op.MAXPOOL, Op.AVGPOOL)


def _valid_range(o0: int, o1: int, offset: int, stride: int, size: int) -> tuple[int, int]:
    """Outputs ``o`` in ``[o0, o1)`` whose input position ``o * stride + offset`` is in ``[0, size)``."""
    first = max(o0, -(offset // stride))
    last = min(o1, (size - 1 - offset) // stride + 1)
    return first, max(first, last)


@dataclass
class _Region:
    """An activation-scratchpad region holding some rows of a tensor, one plane per channel block."""
    base: int
    blocks: int
    width: int
    rows: int                 # capacity in rows (per slot for the output)
    circular: bool = True
    slots: int = 1
    odd: bool = False         # read by a sparse convolution: planes an odd number of lines apart

    @property
    def plane(self) -> int:
        plane = self.rows * self.width
        return plane + 1 if self.odd and plane % 2 == 0 else plane

    @property
    def lines(self) -> int:
        return self.slots * self.blocks * self.plane

    def row_line(self, row: int, origin: int = 0, slot: int = 0) -> int:
        """Line of pixel 0 of ``row`` in block 0."""
        phys = row % self.rows if self.circular else row - origin
        return self.base + slot * self.blocks * self.plane + phys * self.width

    def run_end(self, row: int, stride: int, last: int) -> int:
        """How many of the rows ``row, row + stride, ...`` (at most ``last``) stay contiguous."""
        if not self.circular:
            return last
        left = self.rows - row % self.rows
        return min(last, ceil_div(left, stride))


@dataclass
class _Schedule:
    """One core's bands: per tensor the cumulative end row after each band, its first row and
    the first row each band reads."""
    bands: list[tuple[int, int]]
    start: dict[str, int] = field(default_factory=dict)
    end: dict[str, list[int]] = field(default_factory=dict)
    low: dict[str, list[int]] = field(default_factory=dict)

    def new_rows(self, tensor: str, band: int) -> tuple[int, int]:
        first = self.start[tensor] if band == 0 else self.end[tensor][band - 1]
        return first, self.end[tensor][band]


@dataclass
class _Layout:
    rows: int                             # output rows per band
    schedules: list[_Schedule]            # per core (cores without rows are absent)
    parts: list[tuple[int, int]]          # output rows per core
    regions: dict[str, _Region]           # by region root tensor
    weight_base: dict[str, int]           # node -> first weight block
    param_base: dict[str, int]            # node -> first parameter entry
    act_lines: int
    table_slot: dict[str, int] = field(default_factory=dict)   # node -> its lookup table


class FusedGroup:
    """The nodes ``names`` of ``graph`` as one depth-first fusion group.

    The constructor checks the group's structure (and raises :class:`CompileError` naming
    the group when it cannot be fused); :meth:`layout` sizes it to the scratchpads for a core
    count (raising a capacity-shortfall error); :meth:`emit` writes the per-core streams.
    """

    def __init__(self, graph: Graph, hw: HwConfig, names: list[str], label: str | None = None):
        self.graph, self.hw = graph, hw
        self.label = label or f"group ({', '.join(names)})"
        by_name = {node.name: node for node in graph.nodes}
        missing = [name for name in names if name not in by_name]
        if missing:
            raise CompileError(f"{self.label}: unknown nodes {missing}")
        self.nodes: list[Node] = [by_name[name] for name in names]
        self.final = self.nodes[-1]
        self.produced = {node.output: node for node in self.nodes}
        self.consumers: dict[str, list[Node]] = {}
        for node in self.nodes:
            for name in dict.fromkeys(node.inputs):
                self.consumers.setdefault(name, []).append(node)
        self.inputs = [name for name in self.consumers if name not in self.produced]
        self.alias: dict[str, tuple[str, int]] = {}
        self._check_structure()

    # -- structure -----------------------------------------------------------------------------------

    def _fail(self, why: str):
        raise CompileError(f"{self.label} cannot be fused: {why}")

    def _check_structure(self) -> None:
        lanes = self.hw.lanes
        graph = self.graph
        if len(self.nodes) < 2:
            self._fail("a fusion group needs at least two nodes (single nodes use the layer lowering)")
        for node in self.nodes:
            if node.op not in FUSABLE_OPS:
                self._fail(f"{node.name} is a {node.op.value}; fusable: {', '.join(o.value for o in FUSABLE_OPS)}")
        inside = {node.name for node in self.nodes}
        escaping = []
        for tensor in self.produced:
            outside = [c.name for c in graph.consumers(tensor) if c.name not in inside]
            if outside or tensor in graph.outputs:
                escaping.append(tensor)
        if escaping != [self.final.output]:
            others = [t for t in escaping if t != self.final.output]
            self._fail(f"only the last node's output may leave the group, but {others} are used after it")
        for node in self.nodes:
            if node.op is Op.CONCAT:
                offset = 0
                for index, name in enumerate(node.inputs):
                    if name not in self.produced:
                        self._fail(f"{node.name} concatenates {name!r}, which is computed outside the group")
                    if len(self.consumers.get(name, [])) != 1:
                        self._fail(f"{node.name}: concat input {name!r} has other consumers")
                    channels = graph.tensors[name].shape[0]
                    if index < len(node.inputs) - 1 and channels % lanes:
                        self._fail(f"{node.name}: concat input {name!r} has {channels} channels, not a multiple of "
                                   f"the {lanes} lanes")
                    self.alias[name] = (node.output, offset)
                    offset += channels // lanes
            elif node.op in _PE_OPS:
                if self._full_tap(node) is None:
                    self._fail(f"{node.name}: no kernel tap stays inside the image for every output pixel, "
                               "so padding would have to be stored")

    def _full_tap(self, node: Node) -> tuple[int, int] | None:
        _, h, w = self.graph.tensors[node.inputs[0]].shape
        _, oh, ow = self.graph.tensors[node.output].shape
        k, s, p = node.attrs.kernel, node.attrs.stride, node.attrs.pad
        rows = [ky for ky in range(k) if _valid_range(0, oh, ky - p, s, h) == (0, oh)]
        cols = [kx for kx in range(k) if _valid_range(0, ow, kx - p, s, w) == (0, ow)]
        if not rows or not cols:
            return None
        return min(rows, key=lambda v: abs(v - p)), min(cols, key=lambda v: abs(v - p))

    def root(self, tensor: str) -> tuple[str, int]:
        """The tensor whose region holds ``tensor`` and the channel-block offset in it."""
        offset = 0
        while tensor in self.alias:
            tensor, extra = self.alias[tensor]
            offset += extra
        return tensor, offset

    # -- schedule ------------------------------------------------------------------------------------

    def _window(self, node: Node, first: int, last: int, size: int) -> tuple[int, int]:
        """Input rows ``node`` reads for its output rows ``[first, last)`` (clipped to the image)."""
        if node.op in (Op.ADD, Op.CONCAT):
            return first, last
        k, s, p = node.attrs.kernel, node.attrs.stride, node.attrs.pad
        return max(0, first * s - p), min(size, (last - 1) * s - p + k)

    def schedule(self, rows: tuple[int, int], band_rows: int) -> _Schedule:
        r0, r1 = rows
        bands = [(a, min(a + band_rows, r1)) for a in range(r0, r1, band_rows)]
        sched = _Schedule(bands)
        out = self.final.output
        sched.start[out] = r0
        sched.end[out] = [b for _, b in bands]
        count = len(bands)
        for node in reversed(self.nodes):
            t = node.output
            if t not in sched.start:
                self._fail(f"{node.name}'s output is not used inside the group")
            s_n, e_n = sched.start[t], sched.end[t]
            for x in dict.fromkeys(node.inputs):
                size = self.graph.tensors[x].shape[1]
                lo = self._window(node, s_n, s_n + 1, size)[0]
                ends = [self._window(node, s_n, e, size)[1] if e > s_n else lo for e in e_n]
                if x in sched.start:
                    sched.start[x] = min(sched.start[x], lo)
                    sched.end[x] = [max(a, b) for a, b in zip(sched.end[x], ends, strict=True)]
                else:
                    sched.start[x], sched.end[x] = lo, ends
        # First row each band reads of every tensor.
        for x in sched.start:
            lows = []
            for band in range(count):
                low = sched.end[x][band]
                for node in self.consumers.get(x, []):
                    first, last = sched.new_rows(node.output, band)
                    if last > first:
                        size = self.graph.tensors[x].shape[1]
                        low = min(low, self._window(node, first, last, size)[0])
                lows.append(min(low, sched.new_rows(x, band)[0]))
            sched.low[x] = lows
        return sched

    def _capacity(self, sched: _Schedule, tensor: str, from_dram: bool) -> int:
        count = len(sched.bands)
        need = 1
        for band in range(count):
            ahead = sched.end[tensor][min(band + 1, count - 1)] if from_dram else sched.end[tensor][band]
            need = max(need, ahead - sched.low[tensor][band])
        return need

    # -- capacity ------------------------------------------------------------------------------------

    def _constants(self) -> tuple[dict[str, int], dict[str, int], int, int]:
        lanes = self.hw.lanes
        weight_base, param_base = {}, {}
        weights = params = 0
        for node in self.nodes:
            if node.op in _PE_OPS:
                layer_blocks = ceil_div(self.graph.tensors[node.output].shape[0], lanes)
                weight_base[node.name] = weights
                weights += layer_blocks * weight_blocks_for(layer_of(self.graph, node), lanes)
                param_base[node.name] = params
                params += 2 * layer_blocks
            elif node.op is Op.ADD:
                param_base[node.name] = params
                params += 3
        return weight_base, param_base, weights, params

    def _regions(self, schedules: list[_Schedule], band_rows: int) -> tuple[dict[str, _Region], int]:
        lanes = self.hw.lanes
        regions: dict[str, _Region] = {}
        cursor = 0
        out = self.final.output
        c, _, w = self.graph.tensors[out].shape
        regions[out] = _Region(cursor, ceil_div(c, lanes), w, band_rows, circular=False, slots=2)
        cursor += regions[out].lines
        # The regions a sparse convolution reads (its MATMULs' window lines are a plane apart).
        sparse_read = {self.root(node.inputs[0])[0] for node in self.nodes
                       if node.op in _PE_OPS and node.attrs.sparsity is not Sparsity.DENSE}
        for tensor in [*self.inputs, *(node.output for node in self.nodes)]:
            if tensor == out or tensor in self.alias:
                continue
            c, _, w = self.graph.tensors[tensor].shape
            rows = max(self._capacity(s, tensor, tensor in self.inputs) for s in schedules)
            # A concat's inputs are written into its region: it must hold their rows too.
            regions[tensor] = _Region(cursor, ceil_div(c, lanes), w, rows, odd=tensor in sparse_read)
            cursor += regions[tensor].lines
        return regions, cursor

    def layout(self, cores: int) -> _Layout:
        """Choose the band height for ``cores`` cores (split by output rows) and place the regions.

        Raises :class:`CompileError` naming the group and the capacity shortfall when even one
        output row per band does not fit."""
        hw = self.hw
        weight_base, param_base, weights, params = self._constants()
        if weights > hw.weight_blocks:
            raise CompileError(f"{self.label} does not fit on chip: its weights need {weights} weight blocks, "
                               f"weight_blocks = {hw.weight_blocks} (short by {weights - hw.weight_blocks})")
        if params > hw.param_entries:
            raise CompileError(f"{self.label} does not fit on chip: its parameters need {params} entries, "
                               f"param_entries = {hw.param_entries} (short by {params - hw.param_entries})")
        tabled = [node.name for node in self.nodes if node.attrs.table is not None]
        if len(tabled) > hw.lut_tables:
            raise CompileError(f"{self.label} does not fit on chip: its layers need {len(tabled)} lookup tables, "
                               f"lut_tables = {hw.lut_tables}")
        table_slot = {name: slot for slot, name in enumerate(tabled)}
        for node in self.nodes:
            ow = self.graph.tensors[node.output].shape[2]
            if node.op in _PE_OPS and ow > hw.acc_slot_entries:
                raise CompileError(f"{self.label} does not fit on chip: {node.name} has {ow}-pixel rows, an "
                                   f"accumulator slot holds {hw.acc_slot_entries} (acc_entries = {hw.acc_entries})")
            if ow > FIELD_MAX_COUNT:
                raise CompileError(f"{self.label}: rows of {ow} pixels exceed the {FIELD_MAX_COUNT}-iteration loops")
        out_rows = self.graph.tensors[self.final.output].shape[1]
        parts = partition(out_rows, cores)
        def attempt(band_rows):
            schedules = [self.schedule(part, band_rows) for part in parts]
            regions, lines = self._regions(schedules, band_rows)
            return _Layout(band_rows, schedules, parts, regions, weight_base, param_base, lines, table_slot)

        # The scratchpad need grows with the band height: check one row, then search the tallest band.
        best = attempt(1)
        if best.act_lines > hw.act_lines:
            raise CompileError(f"{self.label} does not fit on chip: one output row per band needs {best.act_lines} "
                               f"act lines, act_lines = {hw.act_lines} (short by {best.act_lines - hw.act_lines})")
        low, high = 1, max(b - a for a, b in parts)
        while low < high:
            middle = (low + high + 1) // 2
            candidate = attempt(middle)
            if candidate.act_lines <= hw.act_lines:
                best, low = candidate, middle
            else:
                high = middle - 1
        return best

    # -- emission ------------------------------------------------------------------------------------

    def emit(self, streams: list[StreamBuilder], layout: _Layout, *, address, constants: dict) -> dict:
        """Emit the group into ``streams[core]`` for every core with rows. ``address(tensor)`` is a
        DRAM tensor's first line; ``constants[node]`` has ``weight_line`` and ``param_line``."""
        for core, sched in enumerate(layout.schedules):
            _CoreEmitter(self, layout, sched, streams[core], address, constants).run()
        return {"band_rows": layout.rows, "bands": len(layout.schedules[0].bands), "act_lines": layout.act_lines}


@dataclass
class _Record:
    """One instruction of a band, kept until the band's semaphore flags are settled."""
    unit: Unit
    opcode: Opcode
    wait: int = 0
    signal: int = 0
    fields: dict = field(default_factory=dict)
    writes_output: bool = False     # a PPU instruction writing the group's output region


class _CoreEmitter:
    def __init__(self, group: FusedGroup, layout: _Layout, sched: _Schedule, stream: StreamBuilder, address,
                 constants):
        self.g, self.layout, self.sched, self.stream = group, layout, sched, stream
        self.hw = group.hw
        self.graph = group.graph
        self.address, self.constants = address, constants
        self.acc_count = 0
        self.dirty: set[str] = set()
        self.first_pe_of_group = True

    # regions
    def _where(self, tensor: str, band: int) -> tuple[_Region, int, int]:
        root, offset = self.g.root(tensor)
        region = self.layout.regions[root]
        if region.circular:
            return region, offset, 0
        return region, offset, band % 2

    def _line(self, tensor: str, row: int, block: int, band: int) -> int:
        region, offset, slot = self._where(tensor, band)
        origin = self.sched.bands[band][0]
        return region.row_line(row, origin, slot) + (offset + block) * region.plane

    def _run(self, tensor: str, row: int, stride: int, count: int, band: int) -> int:
        region, _, _ = self._where(tensor, band)
        return region.run_end(row, stride, count)

    def run(self) -> None:
        hw, stream = self.hw, self.stream
        lanes = hw.lanes
        # -- constants: both weight/parameter slots, loaded once ---------------------------------
        loads = []
        for node in self.g.nodes:
            if node.name not in self.layout.param_base:
                continue
            entries = 3 if node.op is Op.ADD else 2 * ceil_div(self.graph.tensors[node.output].shape[0], lanes)
            lpe = hw.param_lines_per_entry
            loads.append(dict(buffer=Buffer.PARAM, dram_addr=self.constants[node.name]["param_line"],
                              sram_addr=self.layout.param_base[node.name] * lpe, n2=1, n1=entries, n0=lpe,
                              dram_s1=lpe, sram_s1=lpe))
        for node in self.g.nodes:
            if node.name in self.layout.table_slot:
                per_table = hw.lut_lines_per_table
                loads.append(dict(buffer=Buffer.LUT, dram_addr=self.constants[node.name]["table_line"],
                                  sram_addr=self.layout.table_slot[node.name] * per_table, n2=1, n1=1,
                                  n0=per_table))
        for node in self.g.nodes:
            if node.op not in _PE_OPS:
                continue
            layer = layer_of(self.graph, node)
            blocks = ceil_div(self.graph.tensors[node.output].shape[0], lanes) * weight_blocks_for(layer, lanes)
            if blocks:
                loads += weight_loads(hw, layer, weight_line=self.constants[node.name]["weight_line"],
                                      meta_line=self.constants[node.name].get("meta_line"), first=0, count=blocks,
                                      sram_block=self.layout.weight_base[node.name])
        load_whole_constants(stream, loads)
        count = len(self.sched.bands)
        self._load_band(0)
        if count > 1:
            self._load_band(1)
        for band in range(count):
            self._compute_band(band, last=band == count - 1)
            self._store_band(band)
            if band + 2 < count:
                self._load_band(band + 2)

    def _load_band(self, band: int) -> None:
        loads = []
        for tensor in self.g.inputs:
            first, last = self.sched.new_rows(tensor, band)
            c, h, w = self.graph.tensors[tensor].shape
            blocks = ceil_div(c, self.hw.lanes)
            region = self.layout.regions[tensor]
            row = first
            while row < last:
                n = self._run(tensor, row, 1, last - row, band)
                loads.append(dict(buffer=Buffer.ACT, dram_addr=self.address(tensor) + row * w, dram_s1=w,
                                  dram_s2=h * w, sram_addr=self._line(tensor, row, 0, band), sram_s1=w,
                                  sram_s2=region.plane, n2=blocks, n1=n, n0=w))
                row += n
        if not loads:   # every band takes and gives one IN credit
            loads.append(dict(buffer=Buffer.ACT, n2=0, n1=0, n0=0))
        for index, fields in enumerate(loads):
            self.stream.emit(Opcode.LOAD, wait=IN_FREE if index == 0 else 0,
                             signal=IN_FULL if index == len(loads) - 1 else 0, **fields)

    def _store_band(self, band: int) -> None:
        out = self.g.final.output
        c, h, w = self.graph.tensors[out].shape
        a, b = self.sched.bands[band]
        region = self.layout.regions[out]
        self.stream.emit(Opcode.STORE, wait=OUT_FULL, signal=OUT_FREE, buffer=Buffer.ACT,
                         dram_addr=self.address(out) + a * w, dram_s1=w, dram_s2=h * w,
                         sram_addr=self._line(out, a, 0, band), sram_s1=w, sram_s2=region.plane,
                         n2=region.blocks, n1=b - a, n0=w)

    def _compute_band(self, band: int, last: bool) -> None:
        records: list[_Record] = []
        out_root = self.g.final.output
        for node in self.g.nodes:
            first, end = self.sched.new_rows(node.output, band)
            if end <= first or node.op is Op.CONCAT:
                continue
            writes_out = self.g.root(node.output)[0] == out_root
            if node.op is Op.ADD:
                self._add(node, band, first, end, records, writes_out)
            else:
                if any(self.g.root(x)[0] in self.dirty for x in node.inputs):
                    self._drain(records)
                self._windowed(node, band, first, end, records, writes_out)
            self.dirty.add(self.g.root(node.output)[0])
        # Flags: the band's first PE instruction waits for its input rows (and, in the first band,
        # the weights); its last PPU instruction frees the input rows; output slot hand-over.
        pe = [r for r in records if r.unit is Unit.PE]
        ppu = [r for r in records if r.unit is Unit.PPU]
        pe[0].wait |= IN_FULL | (W_FULL if self.first_pe_of_group else 0)
        self.first_pe_of_group = False
        ppu[-1].signal |= IN_FREE | (W_FREE if last else 0)
        writers = [r for r in ppu if r.writes_output]
        writers[0].wait |= OUT_FREE
        writers[-1].signal |= OUT_FULL
        for record in records:
            if record.opcode is Opcode.SYNC:
                self.stream.sync(record.unit, wait=record.wait, signal=record.signal)
            else:
                self.stream.emit(record.opcode, wait=record.wait, signal=record.signal, **record.fields)
        if last:
            self.stream.sync(Unit.PPU, signal=W_FREE)

    def _drain(self, records) -> None:
        records.append(_Record(Unit.PE, Opcode.SYNC, wait=ACC_FREE))
        records.append(_Record(Unit.PE, Opcode.SYNC, wait=ACC_FREE, signal=ACC_FREE))
        records.append(_Record(Unit.PE, Opcode.SYNC, signal=ACC_FREE))
        self.dirty.clear()

    def _add(self, node: Node, band: int, first: int, end: int, records, writes_out: bool) -> None:
        c, _, w = self.graph.tensors[node.output].shape
        blocks = ceil_div(c, self.hw.lanes)
        a_name, b_name = node.inputs
        out = computed(self.graph, node)
        lo, hi = node.attrs.clamp
        table = lookup_fields(node.name in self.layout.table_slot, self.layout.table_slot.get(node.name, 0))
        row = first
        while row < end:
            n = min(end - row, FIELD_MAX_COUNT // w)
            for name in (a_name, b_name, node.output):
                n = self._run(name, row, 1, n, band)
            planes = [self._where(name, band)[0].plane for name in (a_name, b_name, node.output)]
            records.append(_Record(Unit.PE, Opcode.SYNC, wait=ACC_FREE, signal=ACC_FULL))
            records.append(_Record(Unit.PPU, Opcode.ADD, ACC_FULL, ACC_FREE, dict(
                a_addr=self._line(a_name, row, 0, band), a_s1=planes[0], a_s0=1,
                b_addr=self._line(b_name, row, 0, band), b_s1=planes[1], b_s0=1,
                out_addr=self._line(node.output, row, 0, band), out_s1=planes[2], out_s0=1,
                n1=blocks, n0=n * w, param_addr=self.layout.param_base[node.name], in_signed=int(out.signed),
                out_signed=int(out.signed), out_zp=0, clamp_lo=to_byte(lo), clamp_hi=to_byte(hi), **table),
                writes_out))
            row += n

    def _windowed(self, node: Node, band: int, first: int, end: int, records, writes_out: bool) -> None:
        hw = self.hw
        lanes = hw.lanes
        x_name = node.inputs[0]
        x, y = self.graph.tensors[x_name], computed(self.graph, node)
        table = lookup_fields(node.name in self.layout.table_slot, self.layout.table_slot.get(node.name, 0))
        cout_blocks = ceil_div(y.shape[0], lanes)
        _, h, w = x.shape
        _, _, ow = y.shape
        k, s, p = node.attrs.kernel, node.attrs.stride, node.attrs.pad
        layer = layer_of(self.graph, node)
        per_block = weight_blocks_for(layer, lanes)
        mode = MATMUL_MODES[layer.kind]
        full = self.g._full_tap(node)
        taps = [full] + [(ky, kx) for ky in range(k) for kx in range(k) if (ky, kx) != full]
        x_plane = self._where(x_name, band)[0].plane
        chunk = max(1, hw.acc_slot_entries // ow)
        wbase = self.layout.weight_base[node.name]
        pbase = self.layout.param_base[node.name]
        lo, hi = node.attrs.clamp
        for y0 in range(first, end, chunk):
            y1 = min(end, y0 + chunk)
            single = (y1 - y0) * ow == 1
            for j in range(cout_blocks):
                acc = (self.acc_count % 2) * hw.acc_slot_entries
                self.acc_count += 1
                instructions = []   # (fields, overwrite)
                if single and layer.kind is LayerKind.CONV and contiguous(layer.input_blocks(j, lanes)):
                    steps = layer.steps(j, lanes)
                    for n_tap, (ky, kx) in enumerate(taps):
                        iy, ix = y0 * s - p + ky, -p + kx
                        if not (0 <= iy < h and 0 <= ix < w):
                            continue
                        tap_fields = step_instructions(
                            steps, layer, w0=wbase + j * per_block + (ky * k + kx) * len(steps),
                            act0=self._line(x_name, iy, 0, band) + ix, in_plane=x_plane, single_pixel=True)
                        for n_part, fields in enumerate(tap_fields):
                            fields = dict(fields, acc_addr=acc)
                            parts = split_folded_first(fields) if n_tap == 0 and n_part == 0 else [fields]
                            instructions += [(part, n_tap == 0 and n_part == 0 and i == 0)
                                             for i, part in enumerate(parts)]
                elif single and layer.kind in (LayerKind.MAXPOOL, LayerKind.AVGPOOL) \
                        and self._contiguous(x_name, y0 * s - p, k, h, band):
                    iy0, iy1 = max(0, y0 * s - p), min(h, y0 * s - p + k)
                    ix0, ix1 = max(0, -p), min(w, k - p)
                    fields = dict(w_addr=wbase + j * per_block, w_row=0,
                                  act_addr=self._line(x_name, iy0, j, band) + ix0, act_s1=w, act_s0=1,
                                  acc_addr=acc, acc_s1=0, acc_s0=0, n1=iy1 - iy0, n0=ix1 - ix0)
                    instructions += [(part, i == 0) for i, part in enumerate(split_folded_first(fields))]
                else:
                    for n_tap, (ky, kx) in enumerate(taps):
                        oy0, oy1 = _valid_range(y0, y1, ky - p, s, h)
                        ox0, ox1 = _valid_range(0, ow, kx - p, s, w)
                        if oy1 <= oy0 or ox1 <= ox0:
                            continue
                        if layer.kind is LayerKind.CONV:
                            steps = layer.steps(j, lanes)
                            sources = [(step.block, wbase + j * per_block + (ky * k + kx) * len(steps) + n, 0,
                                        {"sparse": layer.sparsity, "act_sg": x_plane} if step.window > 1 else {})
                                       for n, step in enumerate(steps)]
                        elif layer.kind is LayerKind.DEPTHWISE:
                            tap = ky * k + kx
                            sources = [(j, wbase + j * per_block + tap // lanes, tap % lanes, {})]
                        else:
                            sources = [(j, wbase + j * per_block if per_block else 0, 0, {})]
                        for n_src, (in_block, w_addr, w_row, sparse) in enumerate(sources):
                            oy = oy0
                            while oy < oy1:
                                iy = oy * s - p + ky
                                n = self._run(x_name, iy, s, oy1 - oy, band)
                                fields = dict(w_addr=w_addr, w_row=w_row,
                                              act_addr=self._line(x_name, iy, in_block, band) + ox0 * s - p + kx,
                                              act_s1=s * w, act_s0=s, acc_addr=acc + (oy - y0) * ow + ox0,
                                              acc_s1=ow, acc_s0=1, n1=n, n0=ox1 - ox0, **sparse)
                                instructions.append((fields, n_tap == 0 and n_src == 0))
                                oy += n
                for index, (fields, overwrite) in enumerate(instructions):
                    wait = ACC_FREE if index == 0 else 0
                    signal = ACC_FULL if index == len(instructions) - 1 else 0
                    records.append(_Record(Unit.PE, Opcode.MATMUL, wait, signal, dict(
                        mode=mode, accumulate=int(not overwrite), in_signed=int(x.signed),
                        in_zp=to_byte(x.zero_point), **fields)))
                # requantize the tile into the output region, split where the region wraps
                row = y0
                pieces = []
                while row < y1:
                    n = self._run(node.output, row, 1, y1 - row, band)
                    pieces.append((row, n))
                    row += n
                for index, (row, n) in enumerate(pieces):
                    wait = ACC_FULL if index == 0 else 0
                    signal = ACC_FREE if index == len(pieces) - 1 else 0
                    records.append(_Record(Unit.PPU, Opcode.REQUANT, wait, signal, dict(
                        acc_addr=acc + (row - y0) * ow, acc_s1=ow, acc_s0=1,
                        out_addr=self._line(node.output, row, j, band), out_s1=ow, out_s0=1, n1=n, n0=ow,
                        param_addr=pbase + 2 * j, out_signed=int(y.signed), out_zp=to_byte(y.zero_point),
                        clamp_lo=to_byte(lo), clamp_hi=to_byte(hi), **table), writes_out))

    def _contiguous(self, tensor: str, row: int, k: int, h: int, band: int) -> bool:
        first, last = max(0, row), min(h, row + k)
        return self._run(tensor, first, 1, last - first, band) == last - first
