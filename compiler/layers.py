"""Single layers with seeded random data: build the binary and the numpy reference.

Used by ``dlfusion layer ...``, the tests and the benchmarks. Each builder
returns a :class:`LayerCase`: the binary, its input arrays and the expected
outputs computed by :mod:`.reference`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..hw.asm import DramAllocator, StreamBuilder, assemble, pack_params, pack_weight_blocks
from ..hw.binary import Binary, Segment, Tensor
from ..hw.config import HwConfig
from ..hw.isa import Opcode, Sparsity
from . import reference
from .errors import CompileError
from .lower.common import AddLayer, WindowedLayer, detect_sparsity, pack_windowed, params_for
from .lower.elementwise import lower_add
from .lower.group import core_parts
from .lower.windowed import lower_windowed
from .passes.sparsity import SparseExec
from .plan import SPLITS, Split
from .prune import parse_pattern, prune_weight

__all__ = ["LayerCase", "split_streams", "build_windowed", "build_conv", "build_fc",
           "build_dwconv", "build_pool", "build_add",
           "LAYER_KINDS"]


@dataclass
class LayerCase:
    binary: Binary
    inputs: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]
    macs: int
    description: dict = field(default_factory=dict)


def split_streams(hw: HwConfig, cores: int, split: Split | str, rows: int, blocks: int,
                  emit) -> list[StreamBuilder]:
    """One stream per core that gets work: ``emit(stream, rows=(r0, r1), blocks=(b0, b1))``
    lowers its part. Every stream ends with a barrier across the participating cores
    (the end of the group) and END."""
    if not 1 <= cores <= hw.cores:
        raise CompileError(f"cores must be between 1 and the configured {hw.cores}, not {cores}")
    if split not in SPLITS:
        raise CompileError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    parts = core_parts(Split(split), cores, rows, blocks)
    streams = []
    tiling = None
    for core, (row_range, block_range) in enumerate(parts):
        stream = StreamBuilder(core)
        part_tiling = emit(stream, rows=row_range, blocks=block_range)
        tiling = tiling or part_tiling
        streams.append(stream)
    mask = (1 << len(streams)) - 1
    for stream in streams:
        stream.emit(Opcode.BARRIER, core_mask=mask)
        stream.end()
    return streams, tiling


def _dtype(signed: bool):
    return np.int8 if signed else np.uint8


def _random_activations(rng, shape, signed):
    lo, hi = (-128, 128) if signed else (0, 256)
    return rng.integers(lo, hi, size=shape).astype(_dtype(signed))


def _zero_point(rng, signed):
    return int(rng.integers(-20, 21)) if signed else int(rng.integers(100, 156))


def _multiplier(rng, channels, fan_in):
    # Scale so that outputs spread over the int8 range without saturating everywhere.
    base = 48.0 / (max(1.0, np.sqrt(fan_in)) * 74.0 * 74.0)
    return (base * rng.uniform(0.5, 2.0, size=channels)).astype(np.float32)


def build_windowed(hw: HwConfig, kind: str, *, channels: int, height: int, width: int, out_channels: int | None = None,
                   kernel: int = 3, stride: int = 1, pad: int | None = None, seed: int = 0, in_signed: bool = True,
                   out_signed: bool = True, relu: bool = False, cores: int = 1, split: str = "rows",
                   prune: str | None = None, sparse_exec: str = "auto") -> LayerCase:
    """A random conv / depthwise / maxpool / avgpool layer on a ``channels x height x width`` input,
    split over ``cores`` cores by output ``rows`` or output ``channels``.

    ``prune`` (``"2:4"``, ``"1:4"``) prunes a convolution's seeded weights by magnitude along input
    channels (a depthwise layer has one input channel per filter: it stays dense); ``sparse_exec``
    (auto, on, off) says whether a convolution whose weights follow a pattern of ``hw`` runs sparse."""
    pruning = parse_pattern(prune) if prune is not None else None
    mode = SparseExec.parse(sparse_exec)
    rng = np.random.default_rng(seed)
    out_channels = channels if out_channels is None else out_channels
    pad = kernel // 2 if pad is None else pad
    in_dtype, out_dtype = _dtype(in_signed), _dtype(out_signed)
    x = _random_activations(rng, (channels, height, width), in_signed)
    in_zp = _zero_point(rng, in_signed)
    if kind == "maxpool":
        out_signed, out_dtype = in_signed, in_dtype
        out_zp = in_zp
    else:
        out_zp = _zero_point(rng, out_signed)
    lo, hi = reference.qrange(out_dtype)
    if relu:
        lo = max(lo, out_zp)
    layer = WindowedLayer(kind, channels, height, width, out_channels, kernel, stride, pad, in_signed, in_zp,
                          out_signed, out_zp, lo, hi)
    layer.check()
    weight = bias = None
    if kind == "conv":
        weight = rng.integers(-127, 128, size=(out_channels, channels, kernel, kernel)).astype(np.int8)
        if pruning is not None:
            weight = prune_weight(weight, pruning)
        if mode is not SparseExec.OFF:
            layer.sparsity = detect_sparsity(weight, channels, hw.lanes, hw.sparse_patterns)
        bias = rng.integers(-3000, 3000, size=out_channels).astype(np.int32)
        multiplier = _multiplier(rng, out_channels, channels * kernel * kernel)
        expected = reference.conv2d(x, in_zp, weight, bias, stride, pad, multiplier, out_zp, out_dtype, (lo, hi))
    elif kind == "depthwise":
        weight = rng.integers(-127, 128, size=(channels, 1, kernel, kernel)).astype(np.int8)
        bias = rng.integers(-3000, 3000, size=channels).astype(np.int32)
        multiplier = _multiplier(rng, channels, kernel * kernel)
        expected = reference.depthwise_conv2d(x, in_zp, weight, bias, stride, pad, multiplier, out_zp, out_dtype,
                                              (lo, hi))
    elif kind == "avgpool":
        bias = np.zeros(channels, np.int32)
        scale_ratio = rng.uniform(0.7, 1.4)
        multiplier = np.full(channels, np.float32(scale_ratio / (kernel * kernel)), np.float32)
        expected = reference.avg_pool(x, in_zp, kernel, stride, pad, multiplier[0], out_zp, out_dtype)
    elif kind == "maxpool":
        bias = np.zeros(channels, np.int32)
        multiplier = np.ones(channels, np.float32)
        expected = reference.max_pool(x, kernel, stride, pad)
    else:
        raise CompileError(f"unknown layer kind {kind!r}; accepted: conv, depthwise, maxpool, avgpool")
    if mode is SparseExec.ON and layer.sparsity is Sparsity.DENSE:
        why = ("a depthwise or pooling layer always runs dense" if kind != "conv" else
               f"its weights follow none of the HwConfig's patterns ({', '.join(hw.sparse_patterns) or 'none'}) "
               f"along its {channels} input channels in whole windows of input blocks")
        raise CompileError(f"--sparse-exec on: the {kind} layer cannot run sparse: {why}")

    lanes = hw.lanes
    dram = DramAllocator(hw)
    blocks, meta = pack_windowed(layer, weight, lanes)
    params = params_for(bias, multiplier, out_channels, lanes)
    in_tensor = Tensor("x", 0, (channels, height, width), np.dtype(in_dtype).name)
    out_tensor = Tensor("y", 0, (out_channels, layer.out_height, layer.out_width), np.dtype(out_dtype).name)
    in_tensor.dram_line = dram.allocate(in_tensor.lines(lanes), "input")
    out_tensor.dram_line = dram.allocate(out_tensor.lines(lanes), "output")
    weight_line = dram.allocate(len(blocks) * lanes, "weights")
    param_line = dram.allocate(params.shape[0] * hw.param_lines_per_entry, "parameters")
    segments = [Segment("weights", weight_line, pack_weight_blocks(blocks)),
                Segment("params", param_line, pack_params(params))]
    meta_line = None
    if meta is not None:
        meta_line = dram.allocate(len(meta) * hw.meta_lines_per_block, "metadata")
        segments.append(Segment("metadata", meta_line, meta.tobytes()))

    def emit(stream, rows, blocks):
        return lower_windowed(hw, layer, stream, in_line=in_tensor.dram_line, out_line=out_tensor.dram_line,
                              weight_line=weight_line, param_line=param_line, meta_line=meta_line, rows=rows,
                              blocks=blocks)

    streams, tiling = split_streams(hw, cores, split, layer.out_height, -(-out_channels // lanes), emit)
    description = {"layer": kind, "channels": channels, "height": height, "width": width,
                   "out_channels": out_channels, "kernel": kernel, "stride": stride, "pad": pad,
                   "out_height": layer.out_height, "out_width": layer.out_width, "seed": seed,
                   "cores": len(streams), "cores_requested": cores, "split": split, **tiling,
                   "sparsity": layer.sparsity.label, "pruned": pruning.label if pruning is not None else None,
                   "weight_bytes": len(blocks) * lanes * lanes + (0 if meta is None else meta.size)}
    if weight is not None:
        description["weight_density"] = round(float(np.count_nonzero(weight)) / weight.size, 4)
    binary = assemble(hw, streams, segments, dram, [in_tensor], [out_tensor],
                      {"layer": description, "macs": layer.macs})
    return LayerCase(binary, {"x": x}, {"y": expected}, layer.macs, description)


def build_conv(hw, *, h, w, cin, cout, k=3, stride=1, pad=None, seed=0, **kwargs):
    return build_windowed(hw, "conv", channels=cin, height=h, width=w, out_channels=cout, kernel=k,
                          stride=stride, pad=pad, seed=seed, **kwargs)


def build_dwconv(hw, *, h, w, c, k=3, stride=1, pad=None, seed=0, **kwargs):
    return build_windowed(hw, "depthwise", channels=c, height=h, width=w, kernel=k, stride=stride, pad=pad,
                          seed=seed, **kwargs)


def build_fc(hw, *, cin, cout, seed=0, **kwargs):
    """A fully connected layer: a 1x1 convolution on a 1x1 image (x: (cin, 1, 1))."""
    case = build_windowed(hw, "conv", channels=cin, height=1, width=1, out_channels=cout, kernel=1, stride=1,
                          pad=0, seed=seed, **kwargs)
    case.description["layer"] = "fc"
    case.binary.metadata["layer"]["layer"] = "fc"
    return case


def build_pool(hw, *, h, w, c, k=2, stride=2, pad=0, mode="max", seed=0, **kwargs):
    if mode not in ("max", "avg"):
        raise CompileError(f"pool mode must be 'max' or 'avg', not {mode!r}")
    return build_windowed(hw, f"{mode}pool", channels=c, height=h, width=w, kernel=k, stride=stride, pad=pad,
                          seed=seed, **kwargs)


def build_add(hw: HwConfig, *, h, w, c, seed=0, signed=True, cores=1, split="rows") -> LayerCase:
    rng = np.random.default_rng(seed)
    dtype = _dtype(signed)
    a = _random_activations(rng, (c, h, w), signed)
    b = _random_activations(rng, (c, h, w), signed)
    scales = rng.uniform(0.005, 0.05, size=3).astype(np.float32)
    zps = [_zero_point(rng, signed) for _ in range(3)]
    expected = reference.qlinear_add(a, scales[0], zps[0], b, scales[1], zps[1], scales[2], zps[2], dtype)
    ra, rb, fixed = reference.qlinear_add_params(scales[0], zps[0], scales[1], zps[1], scales[2], zps[2])
    lanes = hw.lanes
    params = np.empty((3, lanes), np.uint32)
    for row, value in enumerate((ra, rb, fixed)):
        params[row] = np.full(lanes, value, np.float32).view(np.uint32)
    lo, hi = reference.qrange(dtype)
    dram = DramAllocator(hw)
    tensors = [Tensor(name, 0, (c, h, w), np.dtype(dtype).name) for name in ("a", "b", "y")]
    for tensor in tensors:
        tensor.dram_line = dram.allocate(tensor.lines(lanes), tensor.name)
    param_line = dram.allocate(3 * hw.param_lines_per_entry, "parameters")
    layer = AddLayer(c, h, w, signed, lo, hi)

    def emit(stream, rows, blocks):
        return lower_add(hw, layer, stream, a_line=tensors[0].dram_line, b_line=tensors[1].dram_line,
                         out_line=tensors[2].dram_line, param_line=param_line, rows=rows, blocks=blocks)

    streams, tiling = split_streams(hw, cores, split, h, -(-c // lanes), emit)
    description = {"layer": "add", "channels": c, "height": h, "width": w, "seed": seed,
                   "cores": len(streams), "cores_requested": cores, "split": split, **tiling}
    binary = assemble(hw, streams, [Segment("params", param_line, pack_params(params))], dram,
                      tensors[:2], tensors[2:], {"layer": description, "macs": 0})
    return LayerCase(binary, {"a": a, "b": b}, {"y": expected}, 0, description)


LAYER_KINDS = ("conv", "fc", "dwconv", "pool", "add")
