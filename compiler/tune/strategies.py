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

Without a fitted rule and cost model, :func:`plan_default` is the plan ``dlfusion compile``
uses: every layer alone on the choice with the lowest roofline estimate of its static counts.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import CompileError
from ..lower.common import Split
from ..plan import Group, Plan
from .costmodel import CostModel
from .errors import TuneError
from .features import Candidate, Workload
from .oracle import DEFAULT_MAX_GROUP, best_plan
from .rule import Rule, features_of

__all__ = ["STRATEGIES", "SEARCH_STRATEGIES", "Choice", "rule_choices", "plan_none", "plan_cores_only",
           "plan_fusion_only", "plan_dlfusion", "fusion_search", "roofline_cycles", "plan_default", "plan_estimate"]

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


# -- the plan without tuning -------------------------------------------------------------------

def roofline_cycles(features, hw) -> tuple[float, str]:
    """A group's roofline estimate from its static counts, and its bound (``"compute"`` or ``"dma"``).

    ``max(pe_cycles, (load_lines + store_lines) * line_bytes / dram_bytes_per_cycle)``: the busiest core's
    PE cycles against the DMA traffic of all cores through the one DRAM port. It ignores latency, the
    PPU, instruction fetch and the overlap the double buffering leaves out, so it ranks choices rather
    than predicting cycles.
    """
    dma = (features.load_lines + features.store_lines) * hw.line_bytes / hw.dram_bytes_per_cycle
    return (float(features.pe_cycles), "compute") if features.pe_cycles >= dma else (dma, "dma")


def plan_default(workload: Workload, cores: int | None = None) -> tuple[Plan, list[dict]]:
    """The plan without tuning: every layer its own group, on the (cores, split) among one core, ``cores``
    cores by rows and ``cores`` cores by channels with the lowest :func:`roofline_cycles` (ties go to
    fewer cores, then rows), so more cores are chosen only where they are estimated to pay.

    Returns
    -------
    plan : Plan
    layers : list of dict
        Per layer: the choice, its bound and the estimate of every candidate (``"4 channels"``: cycles),
        and the reason in words.
    """
    graph, hw = workload.graph, workload.hw
    cores = hw.cores if cores is None else cores
    candidates = [(1, Split.ROWS)] + ([(cores, Split.ROWS), (cores, Split.CHANNELS)] if cores > 1 else [])
    groups, layers = [], []
    for name in workload.names:
        estimates, bounds, refused = {}, {}, {}
        for count, split in candidates:
            label = f"{count} {split}"
            try:
                estimates[label], bounds[label] = roofline_cycles(workload.features((name,), count, split), hw)
            except (TuneError, CompileError) as error:
                refused[label] = str(error)
        if not estimates:
            raise CompileError(f"layer {name!r} cannot be lowered on {candidates}: {refused}")
        best = min(estimates, key=estimates.get)      # the first of equal estimates: fewer cores, then rows
        count, split = next((c, s) for c, s in candidates if f"{c} {s}" == best)
        groups.append(Group([name], count, split))
        others = ", ".join(f"{label} {cycles:,.0f}" for label, cycles in estimates.items() if label != best)
        layers.append({"node": name, "cores": count, "split": str(split), "bound": bounds[best],
                       "estimates": {label: round(cycles) for label, cycles in estimates.items()},
                       **({"refused": refused} if refused else {}),
                       "why": f"{best}: {estimates[best]:,.0f} cycles ({bounds[best]}-bound roofline)"
                              + (f" vs {others}" if others else "")})
    plan = Plan(graph.name, hw.hash, groups)
    plan.validate(graph, hw)
    return plan, layers


def plan_estimate(workload: Workload, plan: Plan) -> float:
    """The sum of the groups' :func:`roofline_cycles`."""
    return sum(roofline_cycles(workload.features(tuple(g.nodes), g.cores, g.split), workload.hw)[0]
               for g in plan.groups)
