"""What every lowering shares: semaphore roles, layer views, weight and parameter packing, ISA limits.

Semaphore roles used by the lowerings (one core's 8 semaphores):

==========  =====================================================
IN_FULL     an input tile has landed in the act scratchpad
IN_FREE     an input tile slot may be overwritten
ACC_FULL    an accumulator tile is complete
ACC_FREE    an accumulator tile slot may be overwritten
OUT_FULL    an output tile has been written by the PPU
OUT_FREE    an output tile slot may be overwritten
W_FULL      a weight group (and the parameters before it) has landed
W_FREE      a weight slot may be overwritten
==========  =====================================================
"""

from __future__ import annotations

import enum
import weakref
from dataclasses import dataclass, field

import numpy as np

from ...hw.asm import StreamBuilder
from ...hw.config import HwConfig
from ...hw.isa import PAYLOADS, Buffer, MatmulMode, Opcode, Sparsity, Unit
from ...hw.sparse import compress, meta_entry, satisfies
from ..errors import CompileError
from ..ir import Graph, Node, Op, computed, out_size
from ..prune import by_input_channel

__all__ = ["IN_FULL", "IN_FREE", "ACC_FULL", "ACC_FREE", "OUT_FULL", "OUT_FREE", "W_FULL", "W_FREE",
           "FIELD_MAX_COUNT", "FIELD_MAX_STRIDE", "MAX_KERNEL", "LayerKind", "MATMUL_MODES",
           "WINDOWED_KINDS", "WindowedLayer", "AddLayer",
           "Split", "ceil_div", "to_byte", "partition", "largest_band", "initial_credits", "layer_of",
           "weight_blocks_for",
           "pack_windowed_weights", "params_for", "split_folded_first", "input_block_lists", "weight_mask",
           "contiguous", "load_table", "lookup_fields", "load_whole_constants", "Step", "step_instructions",
           "load_weight_blocks", "weight_loads", "detect_sparsity"]

IN_FULL, IN_FREE, ACC_FULL, ACC_FREE, OUT_FULL, OUT_FREE, W_FULL, W_FREE = (1 << i for i in range(8))

#: Largest loop count of the instructions that move or compute pixels (their ``n0``/``n1`` fields).
FIELD_MAX_COUNT = min((1 << PAYLOADS[opcode][name].width) - 1
                      for opcode in (Opcode.LOAD, Opcode.STORE, Opcode.MATMUL, Opcode.REQUANT, Opcode.ADD)
                      for name in ("n0", "n1"))
#: Largest scratchpad stride of a DMA transfer (``sram_s1``/``sram_s2``).
FIELD_MAX_STRIDE = (1 << PAYLOADS[Opcode.LOAD]["sram_s2"].width) - 1
#: Largest window (global pooling and flattening fully connected layers use big ones).
MAX_KERNEL = 64


class LayerKind(enum.StrEnum):
    """What a windowed layer computes (a fully connected layer is a 1x1 ``CONV`` on a 1x1 image)."""
    CONV = "conv"
    DEPTHWISE = "depthwise"
    MAXPOOL = "maxpool"
    AVGPOOL = "avgpool"


class Split(enum.StrEnum):
    """How a group's work is divided between its cores."""
    ROWS = "rows"           #: by output rows (every core loads all the weights)
    CHANNELS = "channels"   #: by output-channel blocks (every core loads all the input)


#: The PE array's mode for each kind.
MATMUL_MODES = {LayerKind.CONV: MatmulMode.MATMUL, LayerKind.DEPTHWISE: MatmulMode.DEPTHWISE,
                LayerKind.AVGPOOL: MatmulMode.DEPTHWISE, LayerKind.MAXPOOL: MatmulMode.MAX}

#: The IR ops that are windowed layers, and their kind.
WINDOWED_KINDS = {Op.CONV: LayerKind.CONV, Op.FC: LayerKind.CONV, Op.DEPTHWISE: LayerKind.DEPTHWISE,
                  Op.MAXPOOL: LayerKind.MAXPOOL, Op.AVGPOOL: LayerKind.AVGPOOL}


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def to_byte(value: int) -> int:
    """An 8-bit instruction field holding a signed or unsigned byte."""
    return int(value) & 0xFF


def partition(total: int, parts: int) -> list[tuple[int, int]]:
    """``total`` units in ``parts`` contiguous, balanced ranges (empty ranges dropped)."""
    bounds = [total * i // parts for i in range(parts + 1)]
    return [(a, b) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def largest_band(rows: int, fits) -> int | None:
    """The most rows, at most ``rows``, of a band for which ``fits(count)`` holds; None if not even one."""
    return next((count for count in range(rows, 0, -1) if fits(count)), None)


def initial_credits(stream: StreamBuilder) -> None:
    """Two free slots of every double-buffered resource: emitted once at the start of a stream."""
    stream.credit(Unit.DMA, IN_FREE | W_FREE)
    stream.credit(Unit.PE, ACC_FREE)
    stream.credit(Unit.PPU, OUT_FREE)


@dataclass
class WindowedLayer:
    """A layer that slides a ``kernel x kernel`` window over a ``(C, H, W)`` tensor.

    ``kind`` is ``conv``, ``depthwise``, ``maxpool`` or ``avgpool`` (a fully connected
    layer is a 1x1 ``conv`` on a 1x1 image).
    """
    kind: LayerKind
    in_channels: int
    height: int
    width: int
    out_channels: int
    kernel: int
    stride: int
    pad: int
    in_signed: bool
    in_zp: int
    out_signed: bool
    out_zp: int
    clamp_lo: int
    clamp_hi: int
    #: ONNX ceil_mode (pooling): a last, partial window on the bottom/right edge, padded
    #: with the pad value like the other borders.
    ceil_mode: bool = False
    #: CONV of a block-sparse weight (a grouped convolution, a channel selection): the ``(K, C)``
    #: mask of the weights that may be nonzero (:func:`weight_mask`). Per output-channel block only
    #: the input-channel blocks holding some of them are loaded and multiplied
    #: (:func:`input_block_lists`). ``None``: a dense convolution, every input block.
    mask: np.ndarray | None = field(default=None, repr=False, compare=False)
    #: CONV: ONNX ``group`` (for the MAC count).
    groups: int = 1
    #: The output bytes go through lookup table 0 (``out_*`` and the clamps are what the REQUANT
    #: computes, the table's index).
    table: bool = False
    #: CONV: the N:M pattern its MATMULs run with (:func:`detect_sparsity`); windows of ``M/N`` input
    #: blocks are one sparse step each, the input blocks left over dense steps.
    sparsity: Sparsity = Sparsity.DENSE

    def steps(self, block: int, lanes: int) -> tuple[Step, ...]:
        """What output-channel block ``block`` reduces per tap, in weight order: one weight block each."""
        sources = self.input_blocks(block, lanes)
        window = self.sparsity.window
        if window == 1:
            return tuple(Step(b, 1) for b in sources)
        windows = len(sources) // window
        return (tuple(Step(sources[i * window], window) for i in range(windows))
                + tuple(Step(b, 1) for b in sources[windows * window:]))

    def step_count(self, lanes: int) -> int:
        """Weight blocks per output-channel block and tap (the input blocks, fewer when sparse)."""
        span = self.span(lanes)
        window = self.sparsity.window
        return span // window + span % window

    def block_lists(self, lanes: int) -> tuple[tuple[int, ...], ...] | None:
        """:func:`input_block_lists` of the mask (``None`` for a dense convolution)."""
        if self.mask is None:
            return None
        cached = self.__dict__.setdefault("_block_lists", {})
        if lanes not in cached:
            cached[lanes] = input_block_lists(self.mask, lanes)
        return cached[lanes]

    def input_blocks(self, block: int, lanes: int) -> tuple[int, ...]:
        """The input-channel blocks output-channel block ``block`` reads, in weight order."""
        lists = self.block_lists(lanes)
        return tuple(range(ceil_div(self.in_channels, lanes))) if lists is None else lists[block]

    def span(self, lanes: int) -> int:
        """Input-channel blocks per output-channel block (every tap)."""
        lists = self.block_lists(lanes)
        return ceil_div(self.in_channels, lanes) if lists is None else len(lists[0])

    def _out(self, size: int) -> int:
        return out_size(size, self.kernel, self.stride, self.pad, self.ceil_mode)

    @property
    def out_height(self) -> int:
        return self._out(self.height)

    @property
    def out_width(self) -> int:
        return self._out(self.width)

    @property
    def macs(self) -> int:
        per_output = self.kernel * self.kernel * (self.in_channels // self.groups if self.kind is LayerKind.CONV else 1)
        return self.out_channels * self.out_height * self.out_width * per_output

    def __post_init__(self):
        try:
            self.kind = LayerKind(self.kind)
        except ValueError:
            raise CompileError(f"unknown windowed layer kind {self.kind!r}; accepted: "
                               f"{', '.join(kind.value for kind in LayerKind)}") from None

    def check(self) -> None:
        global_pool = (self.kind is LayerKind.AVGPOOL and self.pad == 0
                       and self.kernel == self.height == self.width <= FIELD_MAX_COUNT)
        if not 1 <= self.kernel <= MAX_KERNEL and not global_pool:
            raise CompileError(f"kernel must be between 1 and {MAX_KERNEL}, not {self.kernel}")
        if self.stride not in (1, 2):
            raise CompileError(f"stride must be 1 or 2, not {self.stride}")
        if not 0 <= self.pad < self.kernel:
            raise CompileError(f"padding must be between 0 and kernel - 1 ({self.kernel - 1}), not {self.pad}")
        if self.kind is not LayerKind.CONV and self.in_channels != self.out_channels:
            raise CompileError(f"{self.kind} needs as many output channels as input channels "
                               f"({self.in_channels}), not {self.out_channels}")
        if self.out_height < 1 or self.out_width < 1:
            raise CompileError(f"a {self.kernel}x{self.kernel} window does not fit a {self.height}x{self.width} "
                               f"input with padding {self.pad}")


@dataclass(frozen=True)
class Step:
    """One weight block's share of a convolution tap: input blocks ``block`` to ``block + window - 1``
    (one, dense; ``M/N`` consecutive ones, sparse)."""
    block: int
    window: int


def weight_blocks_for(layer: WindowedLayer, lanes: int) -> int:
    """Weight blocks per output-channel block."""
    if layer.kind is LayerKind.CONV:
        return layer.kernel * layer.kernel * layer.step_count(lanes)
    if layer.kind is LayerKind.DEPTHWISE:
        return ceil_div(layer.kernel * layer.kernel, lanes)
    if layer.kind is LayerKind.AVGPOOL:
        return 1
    return 0


def pack_windowed_weights(layer: WindowedLayer, weight: np.ndarray | None, lanes: int) -> np.ndarray:
    """Weight blocks in the order the lowering addresses them: (out block, tap, step).

    ``weight`` is (K, C, k, k) for conv, (C, 1, k, k) for depthwise, unused for pools.
    """
    return pack_windowed(layer, weight, lanes)[0]


def pack_windowed(layer: WindowedLayer, weight: np.ndarray | None, lanes: int) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`pack_windowed_weights`, and for a sparse layer the metadata entries of its blocks
    (``(blocks, L*L/4)`` bytes; zero for its dense steps), else ``None``."""
    k = layer.kernel
    cout_blocks = ceil_div(layer.out_channels, lanes)
    per_block = weight_blocks_for(layer, lanes)
    blocks = np.zeros((cout_blocks * per_block, lanes, lanes), dtype=np.int8)
    if layer.kind is LayerKind.CONV:
        cin_blocks = ceil_div(layer.in_channels, lanes)
        padded = np.zeros((cout_blocks * lanes, cin_blocks * lanes, k, k), dtype=np.int8)
        padded[:layer.out_channels, :layer.in_channels] = weight
        # [ob, oc, ib, ic, ky, kx] -> [ob, ky, kx, ib, ic (row), oc (col)]
        view = padded.reshape(cout_blocks, lanes, cin_blocks, lanes, k, k).transpose(0, 4, 5, 2, 3, 1)
        if layer.sparsity is not Sparsity.DENSE:
            return _pack_sparse(layer, view, lanes)
        lists = layer.block_lists(lanes)
        if lists is not None:     # only the input blocks each output block reads
            view = np.stack([view[j][:, :, list(lists[j])] for j in range(cout_blocks)])
        blocks[:] = view.reshape(-1, lanes, lanes)
    elif layer.kind is LayerKind.DEPTHWISE:
        taps = np.zeros((cout_blocks * lanes, per_block * lanes), dtype=np.int8)
        taps[:layer.out_channels, :k * k] = weight.reshape(layer.out_channels, k * k)
        # [ob, oc, b, row] -> [ob, b, row, oc]
        blocks[:] = taps.reshape(cout_blocks, lanes, per_block, lanes).transpose(0, 2, 3, 1).reshape(-1, lanes, lanes)
    elif layer.kind is LayerKind.AVGPOOL:
        blocks[:] = 1
    return blocks, None


def _pack_sparse(layer: WindowedLayer, view: np.ndarray, lanes: int) -> tuple[np.ndarray, np.ndarray]:
    """The compressed blocks and metadata of a sparse convolution; ``view`` is
    ``[out block, ky, kx, in block, in lane, out lane]``."""
    cout_blocks, k = view.shape[0], layer.kernel
    values, metas = [], []
    zero_meta = np.zeros(lanes * lanes // 4, np.uint8)
    for j in range(cout_blocks):
        for ky in range(k):
            for kx in range(k):
                for step in layer.steps(j, lanes):
                    window = view[j, ky, kx, step.block:step.block + step.window].reshape(-1, lanes)
                    if step.window == 1:
                        values.append(window)
                        metas.append(zero_meta)
                    else:
                        block, index = compress(window, layer.sparsity)
                        values.append(block)
                        metas.append(meta_entry(index))
    return np.stack(values).astype(np.int8), np.stack(metas)


def detect_sparsity(weight: np.ndarray, in_channels: int, lanes: int, patterns: tuple[str, ...]) -> Sparsity:
    """The sparsest of ``patterns`` (HwConfig.sparse_patterns) that the ``(K, C, k, k)`` int8 weight
    satisfies along its input channels and that has a whole window of input blocks, else DENSE."""
    span = ceil_div(in_channels, lanes)
    for sparsity in sorted((Sparsity.from_label(p) for p in patterns), key=lambda s: -s.window):
        if sparsity.window <= span and _satisfies(weight, sparsity):
            return sparsity
    return Sparsity.DENSE


#: id(weight) -> (a weak reference to it, {pattern: satisfied}): compiling, planning and the tuner's
#: workload each detect the patterns of the same weights.
_SATISFIED: dict[int, tuple[weakref.ref, dict[Sparsity, bool]]] = {}


def _satisfies(weight: np.ndarray, sparsity: Sparsity) -> bool:
    """:func:`~...hw.sparse.satisfies` along input channels, remembered per weight array."""
    key = id(weight)
    entry = _SATISFIED.get(key)
    if entry is None or entry[0]() is not weight:
        entry = _SATISFIED[key] = (weakref.ref(weight, lambda _: _SATISFIED.pop(key, None)), {})
    if sparsity not in entry[1]:
        entry[1][sparsity] = satisfies(by_input_channel(weight, sparsity.pattern[1]), sparsity)
    return entry[1][sparsity]


def step_instructions(steps: tuple[Step, ...], layer: WindowedLayer, *, w0: int, act0: int, in_plane: int,
                      single_pixel: bool, rows: int = 1, out_width: int = 1, in_width: int = 1) -> list[dict]:
    """The MATMUL fields of one convolution tap over ``steps`` (weight blocks ``w0`` on, the input
    slot's tap origin ``act0``, channel blocks ``in_plane`` lines apart). Over a tile, one MATMUL per
    step sweeps its ``rows x out_width`` pixels; for a single pixel (fully connected) the steps of one
    window size at a constant stride fold into one MATMUL's loop (accumulating into one entry)."""
    def sparse_fields(step):
        if step.window == 1:
            return {}
        return {"sparse": layer.sparsity, "act_sg": in_plane}

    if not single_pixel:
        s = layer.stride
        return [dict(w_addr=w0 + n, act_addr=act0 + step.block * in_plane, n1=rows, n0=out_width,
                     act_s1=s * in_width, act_s0=s, acc_s1=out_width, acc_s0=1, **sparse_fields(step))
                for n, step in enumerate(steps)]
    if all(step.window == 1 for step in steps):
        blocks = tuple(step.block for step in steps)
        if contiguous(blocks):
            return [dict(w_addr=w0, w_s0=1, act_addr=act0 + blocks[0] * in_plane, act_s0=in_plane, n1=1,
                         n0=len(blocks), acc_s0=0, acc_s1=0)]
        return [dict(w_addr=w0 + n, act_addr=act0 + b * in_plane, n1=1, n0=1, acc_s0=0, acc_s1=0)
                for n, b in enumerate(blocks)]
    runs: list[list[int]] = []      # indices of steps of one window size at a constant stride
    for n, step in enumerate(steps):
        last = steps[runs[-1][-1]] if runs else None
        if last is not None and last.window == step.window and step.block - last.block == step.window:
            runs[-1].append(n)
        else:
            runs.append([n])
    instructions = []
    for run in runs:
        first = steps[run[0]]
        instructions.append(dict(w_addr=w0 + run[0], w_s0=1, act_addr=act0 + first.block * in_plane,
                                 act_s0=first.window * in_plane, n1=1, n0=len(run), acc_s0=0, acc_s1=0,
                                 **sparse_fields(first)))
    return instructions


def weight_loads(hw: HwConfig, layer: WindowedLayer, *, weight_line: int, meta_line: int | None, first: int,
                 count: int, sram_block: int, taps: int = 1, dram_tap_stride: int = 0,
                 sram_tap_stride: int = 0) -> list[dict]:
    """The LOAD fields of weight blocks ``[first, first + count)`` of ``layer`` (from its DRAM weights at
    ``weight_line``) into the weight scratchpad from block ``sram_block`` (with ``taps``, that many such
    runs, ``dram_tap_stride`` / ``sram_tap_stride`` blocks apart): for a sparse layer their metadata
    first (from ``meta_line``), so that the weights' completion covers both."""
    loads = []

    def load(lines, dram_line, **extra):
        far = {"dram_s2": dram_tap_stride * lines, "sram_s2": sram_tap_stride * lines} if taps > 1 else {}
        loads.append(dict(buffer=Buffer.WEIGHT, dram_addr=dram_line + first * lines, sram_addr=sram_block * lines,
                          n2=taps, n1=count, n0=lines, dram_s1=lines, sram_s1=lines, **far, **extra))

    if layer.sparsity is not Sparsity.DENSE:
        if meta_line is None:
            raise CompileError("a sparse layer needs the DRAM line of its weights' metadata")
        load(hw.meta_lines_per_block, meta_line, meta=1)
    load(hw.lanes, weight_line)
    return loads


def load_weight_blocks(stream: StreamBuilder, hw: HwConfig, layer: WindowedLayer, *, wait: int = 0,
                       signal: int = 0, **where) -> None:
    """Emit :func:`weight_loads`: the first LOAD waits on ``wait``, the last signals ``signal``."""
    loads = weight_loads(hw, layer, **where)
    for index, fields in enumerate(loads):
        stream.emit(Opcode.LOAD, wait=wait if index == 0 else 0, signal=signal if index == len(loads) - 1 else 0,
                    **fields)


def params_for(bias: np.ndarray, multiplier: np.ndarray, channels: int, lanes: int) -> np.ndarray:
    """(2 * out blocks, L) uint32 words: per block a bias entry then a multiplier entry."""
    blocks = ceil_div(channels, lanes)
    b = np.zeros(blocks * lanes, dtype=np.int32)
    mult = np.zeros(blocks * lanes, dtype=np.float32)
    b[:channels] = bias
    mult[:channels] = multiplier
    entries = np.empty((blocks, 2, lanes), dtype=np.uint32)
    entries[:, 0] = b.reshape(blocks, lanes).view(np.uint32)
    entries[:, 1] = mult.reshape(blocks, lanes).view(np.uint32)
    return entries.reshape(2 * blocks, lanes)


def contiguous(blocks: tuple[int, ...]) -> bool:
    """Whether ``blocks`` are consecutive (one strided loop reads them)."""
    return all(b - a == 1 for a, b in zip(blocks, blocks[1:], strict=False))


def split_folded_first(fields: dict) -> list[dict]:
    """A MATMUL whose loop accumulates into one entry (``acc_s0 == 0``, fully connected layers,
    global pooling) and that must overwrite first: its first iteration is split off, then the
    rest of its row and the remaining rows accumulate."""
    if fields.get("acc_s0", 1) != 0 or fields["n1"] * fields["n0"] == 1:
        return [fields]
    act, w = fields["act_addr"], fields["w_addr"]
    parts = [dict(fields, n1=1, n0=1)]
    if fields["n0"] > 1:
        parts.append(dict(fields, n1=1, n0=fields["n0"] - 1, act_addr=act + fields.get("act_s0", 0),
                          w_addr=w + fields.get("w_s0", 0)))
    if fields["n1"] > 1:
        parts.append(dict(fields, n1=fields["n1"] - 1, act_addr=act + fields.get("act_s1", 0),
                          w_addr=w + fields.get("w_s1", 0)))
    return parts



@dataclass
class AddLayer:
    """QLinearAdd of two ``(C, H, W)`` tensors."""
    channels: int
    height: int
    width: int
    signed: bool
    clamp_lo: int
    clamp_hi: int
    #: The output bytes go through lookup table 0.
    table: bool = False


def lookup_fields(table: bool, slot: int = 0) -> dict:
    """The REQUANT/ADD fields of a look-up in table ``slot`` (none without a table)."""
    return {"lut": 1, "lut_table": slot} if table else {}


def load_table(hw: HwConfig, stream: StreamBuilder, table_line: int | None, slot: int = 0, **sync) -> None:
    """Load the lookup table at DRAM line ``table_line`` into table ``slot``. Like the parameters, it needs
    no semaphore of its own: the DMA completes in order, and the PPU instruction that looks it up waits
    for a later load of the same DMA queue."""
    if table_line is None:
        raise CompileError("a layer with a lookup table needs the table's DRAM line")
    if slot >= hw.lut_tables:
        raise CompileError(f"lookup table {slot} does not exist: the HwConfig has lut_tables = {hw.lut_tables}")
    per_table = hw.lut_lines_per_table
    stream.emit(Opcode.LOAD, buffer=Buffer.LUT, dram_addr=table_line, sram_addr=slot * per_table, n2=1, n1=1,
                n0=per_table, **sync)


def load_whole_constants(stream: StreamBuilder, loads: list[dict]) -> None:
    """The LOADs ``loads`` into the whole weight and parameter scratchpads: the DMA takes both ``W_FREE``
    credits (both slots) first, the last load signals ``W_FULL`` once. Whoever reads them last gives the two
    credits back (a fusion group, a channel scale, a large global pool: their constants are loaded once)."""
    stream.sync(Unit.DMA, wait=W_FREE)
    for index, fields in enumerate(loads):
        stream.emit(Opcode.LOAD, wait=W_FREE if index == 0 else 0, signal=W_FULL if index == len(loads) - 1 else 0,
                    **fields)


def input_block_lists(mask: np.ndarray, lanes: int) -> tuple[tuple[int, ...], ...]:
    """Per output-channel block, the input-channel blocks holding a nonzero weight of the ``(K, C)``
    boolean ``mask``, all padded to the longest list's length (with the nearest unused blocks, whose
    all-zero weights change nothing), in increasing order."""
    out_channels, in_channels = mask.shape
    cout_blocks, cin_blocks = ceil_div(out_channels, lanes), ceil_div(in_channels, lanes)
    padded = np.zeros((cout_blocks * lanes, cin_blocks * lanes), bool)
    padded[:out_channels, :in_channels] = mask
    used = padded.reshape(cout_blocks, lanes, cin_blocks, lanes).any(axis=(1, 3))
    span = max(1, int(used.sum(axis=1).max()))
    lists = []
    for j in range(cout_blocks):
        chosen = [int(b) for b in np.flatnonzero(used[j])]
        spare = sorted((b for b in range(cin_blocks) if b not in chosen),
                       key=lambda b: min((abs(b - c) for c in chosen), default=b))
        lists.append(tuple(sorted(chosen + spare[:span - len(chosen)])))
    return tuple(lists)


def weight_mask(node: Node, in_channels: int) -> np.ndarray | None:
    """The ``(K, C)`` mask of the weights a block-sparse CONV may hold (the block diagonal of a
    grouped convolution, the ones of a channel selection), or ``None`` for a dense one."""
    attrs = node.attrs
    if node.op is not Op.CONV or (attrs.groups == 1 and not attrs.selection):
        return None
    if attrs.selection:
        return np.any(attrs.weight != 0, axis=(2, 3))
    out_channels = attrs.weight.shape[0]
    group_in, group_out = in_channels // attrs.groups, out_channels // attrs.groups
    return (np.arange(out_channels)[:, None] // group_out) == (np.arange(in_channels)[None, :] // group_in)


def layer_of(graph: Graph, node: Node) -> WindowedLayer:
    """The windowed layer a CONV/FC/DEPTHWISE/MAXPOOL/AVGPOOL node of ``graph`` computes."""
    x, y = graph.tensors[node.inputs[0]], computed(graph, node)
    lo, hi = node.attrs.clamp
    return WindowedLayer(WINDOWED_KINDS[node.op], x.shape[0], x.shape[1], x.shape[2], y.shape[0],
                         node.attrs.kernel, node.attrs.stride, node.attrs.pad, x.signed, x.zero_point,
                         y.signed, y.zero_point, lo, hi, bool(node.attrs.ceil_mode),
                         weight_mask(node, x.shape[0]), node.attrs.groups, node.attrs.table is not None,
                         node.attrs.sparsity)
