"""The tuning strategies that run no simulation: each returns a plan in the compiler's format.

``none``
    every layer its own group on one core: the paper's "no optimization" baseline.
``cores-only``
    every layer its own group, on the core count and split axis the fitted rule
    (:mod:`.rule`) chooses from the layer's features: the core-count knob alone.
``fusion-only``
    one core; fusion groups where the cost model says fusing pays: the fusion knob alone.
``dlfusion``
    both knobs jointly. Each layer gets the rule's ``(cores, split)``. Contiguous
    runs of up to ``max_group`` layers that fuse and fit on chip become candidate
    groups; a fusion group is split by rows, so its core count is settled jointly
    for its layers by the cost model (the cheapest prediction over the core counts
    ``{1, 2, 4, ..., cores}``), whatever the rule chose for them alone; a dynamic
    program over node positions then keeps a fusion group exactly where its
    predicted cycles are below those of the layers it replaces (each on its rule
    choice). ``compatible_only`` restricts the candidates to runs whose layers the
    rule already puts on one core or splits by rows (measured to lose several per
    cent on networks whose late layers the rule splits by channels: see the README).

The oracle (:mod:`.oracle`) is the fifth strategy; it measures on the RTL.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..plan import Group, Plan
from .costmodel import CostModel
from .errors import TuneError
from .features import Candidate, Workload
from .oracle import DEFAULT_MAX_GROUP, best_plan
from .rule import Rule, features_of

__all__ = ["STRATEGIES", "SEARCH_STRATEGIES", "Choice", "rule_choices", "plan_none", "plan_cores_only",
           "plan_fusion_only", "plan_dlfusion", "fusion_search"]

#: Every strategy ``dlfusion tune`` accepts (``all`` runs each).
STRATEGIES = ("none", "cores-only", "fusion-only", "dlfusion", "oracle")
#: The strategies of this module (no simulation).
SEARCH_STRATEGIES = STRATEGIES[:4]

Choice = tuple[int, str]


def rule_choices(workload: Workload, rule: Rule) -> list[Choice]:
    """The rule's ``(cores, split)`` for every node, in graph order (one core is split by rows)."""
    choices = []
    for node in workload.graph.nodes:
        cores, split = rule.choose(features_of(workload.graph, node))
        if not 1 <= cores <= workload.hw.cores:
            raise TuneError(f"the rule chose {cores} cores for {node.name}; this HwConfig has {workload.hw.cores}")
        choices.append((cores, "rows" if cores == 1 else split))
    return choices


def plan_none(workload: Workload) -> Plan:
    """Every layer alone on one core."""
    return Plan(workload.graph.name, workload.hw.hash, [Group([name], 1, "rows") for name in workload.names])


def plan_cores_only(workload: Workload, rule: Rule) -> Plan:
    """Every layer alone, on the rule's choice."""
    groups = [Group([name], cores, split)
              for name, (cores, split) in zip(workload.names, rule_choices(workload, rule), strict=True)]
    return Plan(workload.graph.name, workload.hw.hash, groups)


@dataclass
class SearchInfo:
    """What a cost-model search considered (for reports)."""
    candidates: int
    fused_candidates: int
    predicted_cycles: float


def fusion_search(workload: Workload, cost_model: CostModel, choices: list[Choice], core_counts: list[int],
                  max_group: int = DEFAULT_MAX_GROUP, *, compatible_only: bool = False) -> tuple[Plan, SearchInfo]:
    """Single layers on their ``choices``; fused runs on the predicted-best of ``core_counts``; the
    cheapest combination by the cost model (see the module docstring).

    Parameters
    ----------
    workload : Workload
    cost_model : CostModel
    choices : list of (cores, split)
        Per node, its choice when it runs alone.
    core_counts : list of int
        Core counts a fusion group may use.
    max_group : int
        Longest fusion group considered.
    compatible_only : bool
        Fuse only runs of layers whose own choice is one core or a split by rows.
    """
    hw = workload.hw
    names = workload.names
    costs: dict[Candidate, float] = {}
    for name, (cores, split) in zip(names, choices, strict=True):
        costs[((name,), cores, split)] = cost_model.predict(workload.features((name,), cores, split), hw)
    compatible = [not compatible_only or cores == 1 or split == "rows" for cores, split in choices]
    fused = 0
    for start in range(len(names)):
        for length in range(2, max_group + 1):
            if start + length > len(names) or not all(compatible[start:start + length]):
                break
            nodes = workload.run(start, length)
            best = None
            for cores in core_counts:
                if workload.fits(nodes, cores) is not None:
                    continue
                predicted = cost_model.predict(workload.features(nodes, cores, "rows"), hw)
                if best is None or predicted < best[0]:
                    best = (predicted, cores)
            if best is not None:
                costs[(nodes, best[1], "rows")] = best[0]
                fused += 1
    plan, predicted = best_plan(workload, costs)
    return plan, SearchInfo(len(costs), fused, predicted)


def plan_fusion_only(workload: Workload, cost_model: CostModel, max_group: int = DEFAULT_MAX_GROUP) -> Plan:
    """One core; fusion groups where the cost model predicts they pay."""
    plan, _ = fusion_search(workload, cost_model, [(1, "rows")] * len(workload.names), [1], max_group)
    return plan


def plan_dlfusion(workload: Workload, rule: Rule, cost_model: CostModel, max_group: int = DEFAULT_MAX_GROUP, *,
                  compatible_only: bool = False) -> tuple[Plan, SearchInfo]:
    """The joint strategy (see the module docstring)."""
    return fusion_search(workload, cost_model, rule_choices(workload, rule), workload.core_counts(), max_group,
                         compatible_only=compatible_only)
