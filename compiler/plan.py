"""Plans: how a graph's nodes are grouped, and on how many cores each group runs.

A *plan* partitions the graph's nodes into fusion groups (contiguous in
topological order), each with a core count and a :class:`Split` axis. Its JSON
form:

.. code-block:: json

    {"format": "dlfusion-plan/1", "model": "tiny_cnn", "hw": "<HwConfig hash>",
     "groups": [{"nodes": ["conv1"], "cores": 4, "split": "rows"}, ...]}

A group of one node uses the layer lowering (weight streaming, split by rows or
output channels); a group of several nodes is lowered depth-first
(:mod:`.lower.fused`: intermediates on chip, split by rows). :func:`make_plan`
makes the standard plans (:class:`Fusion`), :func:`random_plan` random valid
ones for tests.
"""

from __future__ import annotations

import contextlib
import enum
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..hw.binary import atomic_write, read_json
from ..hw.config import HwConfig
from .errors import CompileError
from .ir import Graph
from .lower.common import Split
from .lower.fused import FusedGroup
from .passes.sparsity import choose_sparsity

__all__ = ["Split", "Fusion", "SPLITS", "FUSIONS", "Group", "Plan", "PLAN_FORMAT", "MAX_GROUP_NODES", "make_plan",
           "random_plan", "group_fits", "group_label"]

SPLITS = tuple(split.value for split in Split)
PLAN_FORMAT = "dlfusion-plan/1"


@dataclass
class Group:
    """One fusion group: contiguous nodes in topological order, run on ``cores`` cores split by ``split``.

    ``split`` is a :class:`Split`; a valid string (``"rows"``, ``"channels"``) is converted,
    anything else is left for :meth:`Plan.validate` to report.
    """
    nodes: list[str]
    cores: int = 1
    split: Split = Split.ROWS

    def __post_init__(self):
        if not isinstance(self.split, Split):
            with contextlib.suppress(ValueError):
                self.split = Split(self.split)


@dataclass
class Plan:
    model: str
    hw: str
    groups: list[Group] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"format": PLAN_FORMAT, "model": self.model, "hw": self.hw,
                "groups": [{"nodes": g.nodes, "cores": g.cores, "split": str(g.split)} for g in self.groups]}

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
        data = read_json(path, "plan file", CompileError)
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
            if not isinstance(group.split, Split):
                raise CompileError(f"plan group {index}: split must be one of {', '.join(SPLITS)}, "
                                   f"not {group.split!r}")
            if len(group.nodes) > 1:
                if group.split is not Split.ROWS and group.cores > 1:
                    raise CompileError(f"plan group {index} ({', '.join(group.nodes)}): a fusion group of several "
                                       "layers is split across cores by rows only, not by channels")
                FusedGroup(graph, hw, group.nodes, label=group_label(index, group))   # checks the structure


class Fusion(enum.StrEnum):
    """The standard plans of :func:`make_plan`."""
    NONE = "none"     #: every layer its own group
    MAX = "max"       #: the longest runs that fuse and fit


FUSIONS = tuple(fusion.value for fusion in Fusion)
#: Longest fusion group ``make_plan(fusion="max")`` tries.
MAX_GROUP_NODES = 16


def group_label(index: int, group: Group) -> str:
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


def make_plan(graph: Graph, hw: HwConfig, *, fusion: Fusion | str = Fusion.NONE, cores: int = 1,
              split: Split | str = Split.ROWS, sparse_exec: str = "auto") -> Plan:
    """The obvious plans on ``cores`` cores: every layer its own group (``fusion="none"``), or
    (``fusion="max"``) from the first node on, the longest run of nodes that fuses and fits
    on chip, then the same from the next node. Fused groups are split by rows, so a fused
    group whose output has fewer rows than ``cores`` (past a global pooling) would leave
    cores idle: ``max`` does not fuse into such a group. What fits depends on which layers run
    sparse (``sparse_exec``, as the plan will be compiled with)."""
    if fusion not in FUSIONS:
        raise CompileError(f"unknown fusion {fusion!r}; accepted: {', '.join(FUSIONS)}")
    choose_sparsity(graph, hw, sparse_exec)
    names = [node.name for node in graph.nodes]
    groups = []
    if fusion == Fusion.NONE:
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
            groups.append(Group(names[start:end], cores, split if end - start == 1 else Split.ROWS))
            start = end
    plan = Plan(graph.name, hw.hash, groups)
    plan.validate(graph, hw)
    return plan


def random_plan(graph: Graph, hw: HwConfig, seed: int, *, max_group: int = 6, sparse_exec: str = "auto") -> Plan:
    """A random valid plan: groups of up to ``max_group`` nodes that fuse and fit, random core
    counts, random split axes for single-node groups (fused groups split by rows)."""
    choose_sparsity(graph, hw, sparse_exec)
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
        split = Split(str(rng.choice(SPLITS))) if end - start == 1 else Split.ROWS
        groups.append(Group(names[start:end], cores, split))
        start = end
    plan = Plan(graph.name, hw.hash, groups)
    plan.validate(graph, hw)
    return plan
