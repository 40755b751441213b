"""Whole-graph compilation: plan -> per-core streams, DRAM layout, binary.

A *plan* partitions the graph's nodes into fusion groups (contiguous in
topological order), each with a core count and a split axis. Its JSON form:

.. code-block:: json

    {"format": "dlfusion-plan/1", "model": "tiny_cnn", "hw": "<HwConfig hash>",
     "groups": [{"nodes": ["conv1"], "cores": 4, "split": "rows"}, ...]}

Every group ends with a barrier across all the cores of the program, so a
group's outputs are in DRAM before the next group reads them. Tensors live in
DRAM in the channel-blocked layout; a tensor's space is reused once its last
consumer's group has finished. A group of one node uses the layer lowering of
:mod:`.lower` (weight streaming, split by rows or output channels); a group of
several nodes is lowered depth-first by :mod:`.fuse` (intermediates on chip,
split by rows).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..hw.config import HwConfig
from ..hw.isa import Opcode
from ..sim.binary import Binary, Segment, atomic_write
from ..sim.binary import Tensor as DramTensor
from .fuse import FusedGroup
from .ir import Graph, Node, Op, check
from .layers import SPLITS, partition
from .lower import (
    AddLayer,
    WindowedLayer,
    initial_credits,
    lower_add,
    lower_windowed,
    pack_windowed_weights,
    params_for,
)
from .program import CompileError, DramAllocator, StreamBuilder, assemble, pack_params, pack_weight_blocks
from .reference import qlinear_add_params

__all__ = ["Group", "Plan", "PLAN_FORMAT", "FUSIONS", "make_plan", "random_plan", "group_fits", "compile_graph"]

PLAN_FORMAT = "dlfusion-plan/1"


@dataclass
class Group:
    nodes: list[str]
    cores: int = 1
    split: str = "rows"


@dataclass
class Plan:
    model: str
    hw: str
    groups: list[Group] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"format": PLAN_FORMAT, "model": self.model, "hw": self.hw,
                "groups": [{"nodes": g.nodes, "cores": g.cores, "split": g.split} for g in self.groups]}

    def write(self, path: str | Path) -> None:
        atomic_write(path, json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def from_json(cls, data: dict, *, source: str = "plan") -> Plan:
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise CompileError(f"{source}: not a dlfusion plan (format must be {PLAN_FORMAT!r})")
        try:
            groups = [Group(list(g["nodes"]), int(g.get("cores", 1)), str(g.get("split", "rows")))
                      for g in data["groups"]]
            return cls(str(data.get("model", "")), str(data.get("hw", "")), groups)
        except (KeyError, TypeError, ValueError) as error:
            raise CompileError(f"{source}: malformed plan ({type(error).__name__}: {error})") from None

    @classmethod
    def read(cls, path: str | Path) -> Plan:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise CompileError(f"plan file {str(path)!r} does not exist") from None
        except json.JSONDecodeError as error:
            raise CompileError(f"{path}: not valid JSON ({error})") from None
        return cls.from_json(data, source=str(path))

    def validate(self, graph: Graph, hw: HwConfig) -> None:
        order = [node.name for node in graph.nodes]
        flat = [name for group in self.groups for name in group.nodes]
        if flat != order:
            missing = sorted(set(order) - set(flat))
            unknown = sorted(set(flat) - set(order))
            raise CompileError(f"plan groups must cover the graph's nodes once, in order "
                               f"(missing {missing[:5]}, unknown {unknown[:5]})")
        for index, group in enumerate(self.groups):
            if not group.nodes:
                raise CompileError(f"plan group {index} is empty")
            if not 1 <= group.cores <= hw.cores:
                raise CompileError(f"plan group {index}: cores must be between 1 and {hw.cores}, not {group.cores}")
            if group.split not in SPLITS:
                raise CompileError(f"plan group {index}: split must be one of {SPLITS}, not {group.split!r}")
            if len(group.nodes) > 1:
                if group.split != "rows" and group.cores > 1:
                    raise CompileError(f"plan group {index} ({', '.join(group.nodes)}): a fusion group of several "
                                       "layers is split across cores by rows only, not by channels")
                FusedGroup(graph, hw, group.nodes, label=_label(index, group))   # checks the structure


FUSIONS = ("none", "max")
#: Longest fusion group ``make_plan(fusion="max")`` tries.
MAX_GROUP_NODES = 16


def _label(index: int, group: Group) -> str:
    return f"group {index} ({', '.join(group.nodes)})"


def group_fits(graph: Graph, hw: HwConfig, names: list[str], cores: int) -> str | None:
    """``None`` if ``names`` can run as one fusion group on ``cores`` cores (split by rows),
    else why not (the structural or capacity error)."""
    if len(names) == 1:
        return None
    try:
        FusedGroup(graph, hw, names).layout(cores)
    except CompileError as error:
        return str(error)
    return None


def make_plan(graph: Graph, hw: HwConfig, *, fusion: str = "none", cores: int = 1, split: str = "rows") -> Plan:
    """The obvious plans on ``cores`` cores: every layer its own group (``fusion="none"``), or
    (``fusion="max"``) from the first node on, the longest run of nodes that fuses and fits
    on chip, then the same from the next node. Fused groups are split by rows, so a fused
    group whose output has fewer rows than ``cores`` (past a global pooling) would leave
    cores idle: ``max`` does not fuse into such a group."""
    if fusion not in FUSIONS:
        raise CompileError(f"unknown fusion {fusion!r}; accepted: {', '.join(FUSIONS)}")
    names = [node.name for node in graph.nodes]
    groups = []
    if fusion == "none":
        groups = [Group([name], cores, split) for name in names]
    else:
        start = 0
        while start < len(names):
            end = start + 1
            for candidate in range(min(len(names), start + MAX_GROUP_NODES), start + 1, -1):
                rows = graph.tensors[graph.nodes[candidate - 1].output].shape[1]
                if rows >= cores and group_fits(graph, hw, names[start:candidate], cores) is None:
                    end = candidate
                    break
            groups.append(Group(names[start:end], cores, split if end - start == 1 else "rows"))
            start = end
    plan = Plan(graph.name, hw.hash, groups)
    plan.validate(graph, hw)
    return plan


def random_plan(graph: Graph, hw: HwConfig, seed: int, *, max_group: int = 6) -> Plan:
    """A random valid plan: groups of up to ``max_group`` nodes that fuse and fit, random core
    counts, random split axes for single-node groups (fused groups split by rows)."""
    rng = np.random.default_rng(seed)
    names = [node.name for node in graph.nodes]
    groups = []
    start = 0
    while start < len(names):
        cores = int(rng.integers(1, hw.cores + 1))
        end = start + 1
        for candidate in range(min(len(names), start + int(rng.integers(1, max_group + 1))), start + 1, -1):
            if group_fits(graph, hw, names[start:candidate], cores) is None:
                end = candidate
                break
        split = str(rng.choice(SPLITS)) if end - start == 1 else "rows"
        groups.append(Group(names[start:end], cores, split))
        start = end
    plan = Plan(graph.name, hw.hash, groups)
    plan.validate(graph, hw)
    return plan


class _DramPool:
    """First-fit allocation of DRAM lines with reuse of freed ranges."""

    def __init__(self, hw: HwConfig, start: int):
        self.hw = hw
        self.free = [(start, hw.dram_lines)]
        self.high_water = start

    def allocate(self, lines: int, what: str) -> int:
        lines = max(1, lines)
        for index, (begin, end) in enumerate(self.free):
            if end - begin >= lines:
                self.free[index] = (begin + lines, end)
                self.high_water = max(self.high_water, begin + lines)
                return begin
        raise CompileError(f"DRAM is full: {what} needs {lines} lines; DRAM has {self.hw.dram_lines} lines "
                           f"({self.hw.dram_bytes} bytes)")

    def release(self, begin: int, lines: int) -> None:
        self.free.append((begin, begin + max(1, lines)))
        self.free.sort()
        merged = []
        for b, e in self.free:
            if merged and merged[-1][1] >= b:
                merged[-1] = (merged[-1][0], max(merged[-1][1], e))
            else:
                merged.append((b, e))
        self.free = merged


def _blocks(channels: int, lanes: int) -> int:
    return -(-channels // lanes)


def _windowed_layer(graph: Graph, node: Node) -> WindowedLayer:
    x, y = graph.tensors[node.inputs[0]], graph.tensors[node.output]
    kind = {Op.CONV: "conv", Op.FC: "conv", Op.DEPTHWISE: "depthwise", Op.MAXPOOL: "maxpool",
            Op.AVGPOOL: "avgpool"}[node.op]
    lo, hi = node.attrs["clamp"]
    return WindowedLayer(kind, x.shape[0], x.shape[1], x.shape[2], y.shape[0], node.attrs["kernel"],
                         node.attrs["stride"], node.attrs["pad"], x.signed, x.zero_point, y.signed, y.zero_point,
                         lo, hi, bool(node.attrs.get("ceil_mode", False)))


def compile_graph(graph: Graph, hw: HwConfig, plan: Plan, *, check_ir: bool = True) -> Binary:
    """Lower ``graph`` with ``plan`` to a binary for ``hw``."""
    if check_ir:
        check(graph)
    plan.validate(graph, hw)
    lanes = hw.lanes
    program_cores = max(group.cores for group in plan.groups)
    nodes = {node.name: node for node in graph.nodes}

    # -- constants: weights and parameters, placed first -------------------------------------
    segments: list[Segment] = []
    cursor = 0
    constants: dict[str, dict] = {}
    for node in graph.nodes:
        entry = {}
        if node.op in (Op.CONV, Op.FC, Op.DEPTHWISE, Op.MAXPOOL, Op.AVGPOOL):
            layer = _windowed_layer(graph, node)
            out_channels = graph.tensors[node.output].shape[0]
            blocks = pack_windowed_weights(layer, node.attrs.get("weight"), lanes)
            if node.op in (Op.MAXPOOL,):
                bias, multiplier = np.zeros(out_channels, np.int32), np.ones(out_channels, np.float32)
            elif node.op is Op.AVGPOOL:
                bias = np.zeros(out_channels, np.int32)
                multiplier = np.full(out_channels, node.attrs["multiplier"], np.float32)
            else:
                bias, multiplier = node.attrs["bias"], node.attrs["multiplier"]
            params = params_for(bias, multiplier, out_channels, lanes)
            if len(blocks):
                entry["weight_line"] = cursor
                segments.append(Segment(f"weights:{node.name}", cursor, pack_weight_blocks(blocks)))
                cursor += len(blocks) * lanes
            else:
                entry["weight_line"] = 0
            entry["param_line"] = cursor
            segments.append(Segment(f"params:{node.name}", cursor, pack_params(params)))
            cursor += params.shape[0] * hw.param_lines_per_entry
        elif node.op is Op.ADD:
            out = graph.tensors[node.output]
            ra, rb, fixed = qlinear_add_params(node.attrs["a_scale"], node.attrs["a_zp"], node.attrs["b_scale"],
                                               node.attrs["b_zp"], out.scale, out.zero_point)
            params = np.stack([np.full(lanes, v, np.float32).view(np.uint32) for v in (ra, rb, fixed)])
            entry["param_line"] = cursor
            segments.append(Segment(f"params:{node.name}", cursor, pack_params(params)))
            cursor += 3 * hw.param_lines_per_entry
        constants[node.name] = entry
    if cursor > hw.dram_lines:
        raise CompileError(f"the model's weights need {cursor} DRAM lines; DRAM has {hw.dram_lines}")

    # -- activations: allocated at their producer, freed after their last consumer ---------
    pool = _DramPool(hw, cursor)
    group_of = {name: index for index, group in enumerate(plan.groups) for name in group.nodes}
    last_use = {graph.input: 0}
    for node in graph.nodes:
        for name in node.inputs:
            last_use[name] = max(last_use.get(name, 0), group_of[node.name])
    last_use[graph.output] = len(plan.groups)
    # A concat's inputs are written straight into its output (channel blocks must align).
    concat_parent: dict[str, tuple[str, int]] = {}
    for node in graph.nodes:
        if node.op is Op.CONCAT:
            offset = 0
            for index, name in enumerate(node.inputs):
                channels = graph.tensors[name].shape[0]
                if index < len(node.inputs) - 1 and channels % lanes:
                    raise CompileError(f"{node.name}: concat input {name!r} has {channels} channels, not a "
                                       f"multiple of the {lanes} lanes")
                concat_parent[name] = (node.output, offset)
                offset += channels // lanes
    lines_of = {}

    def tensor_lines(name):
        c, h, w = graph.tensors[name].shape
        return _blocks(c, lanes) * h * w

    address: dict[str, int] = {}

    def place(name):
        if name in address:
            return address[name]
        if name in concat_parent:
            parent, block_offset = concat_parent[name]
            _, h, w = graph.tensors[parent].shape
            address[name] = place(parent) + block_offset * h * w
            return address[name]
        lines_of[name] = tensor_lines(name)
        address[name] = pool.allocate(lines_of[name], f"tensor {name!r}")
        return address[name]

    place(graph.input)
    streams = [StreamBuilder(core) for core in range(program_cores)]
    for stream in streams:
        initial_credits(stream)
    group_info = []
    for index, group in enumerate(plan.groups):
        node = nodes[group.nodes[0]]
        out = place(nodes[group.nodes[-1]].output)
        x = graph.tensors[node.inputs[0]]
        tiling = {}
        if len(group.nodes) > 1:
            fused = FusedGroup(graph, hw, group.nodes, label=_label(index, group))
            layout = fused.layout(group.cores)
            for name in fused.inputs:
                place(name)
            tiling = fused.emit(streams, layout, address=place, constants=constants)
        elif node.op is Op.CONCAT:
            pass  # the producers already wrote into the concat's channel blocks
        elif node.op is Op.ADD:
            layer = AddLayer(x.shape[0], x.shape[1], x.shape[2], x.signed, *node.attrs["clamp"])
            parts = _parts(group, x.shape[1], _blocks(x.shape[0], lanes))
            for core, (rows, blocks) in enumerate(parts):
                lower_add(hw, layer, streams[core], a_line=place(node.inputs[0]), b_line=place(node.inputs[1]),
                          out_line=out, param_line=constants[node.name]["param_line"], rows=rows, blocks=blocks,
                          credits=False)
        else:
            layer = _windowed_layer(graph, node)
            parts = _parts(group, layer.out_height, _blocks(layer.out_channels, lanes))
            for core, (rows, blocks) in enumerate(parts):
                try:
                    lower_windowed(hw, layer, streams[core], in_line=place(node.inputs[0]), out_line=out,
                                   weight_line=constants[node.name]["weight_line"],
                                   param_line=constants[node.name]["param_line"], rows=rows, blocks=blocks,
                                   credits=False)
                except CompileError as error:
                    raise CompileError(f"group {index} ({node.name}): {error}") from None
        mask = (1 << program_cores) - 1
        for stream in streams:
            stream.emit(Opcode.BARRIER, core_mask=mask)
        group_info.append({"index": index, "nodes": group.nodes, "cores": group.cores, "split": group.split,
                           "macs": sum(nodes[n].macs for n in group.nodes), **tiling,
                           "barrier_index": [len(s.words) - 1 for s in streams]})
        for name in list(address):
            if last_use.get(name, -1) <= index and name in lines_of:
                pool.release(address[name], lines_of.pop(name))
    for stream in streams:
        stream.end()

    x, y = graph.tensors[graph.input], graph.tensors[graph.output]
    inputs = [DramTensor("input", address[graph.input], x.shape, x.dtype)]
    outputs = [DramTensor("output", address[graph.output], y.shape, y.dtype)]

    metadata = {"model": graph.name, "macs": graph.macs, "plan": plan.to_json(), "groups": group_info,
                "input_quant": graph.input_quant, "output_dequant": graph.output_dequant,
                "output_scale": y.scale, "output_zero_point": y.zero_point}
    # assemble() places the code after everything else.
    return assemble(hw, streams, segments, DramAllocator(hw, start=pool.high_water), inputs, outputs, metadata)


def _parts(group: Group, rows: int, blocks: int) -> list:
    if group.split == "rows":
        return [((r0, r1), None) for r0, r1 in partition(rows, group.cores)]
    return [(None, (b0, b1)) for b0, b1 in partition(blocks, group.cores)]

