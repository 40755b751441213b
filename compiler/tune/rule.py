"""The decision rule: per layer, the core count and split axis, fitted to RTL measurements.

DLFusion characterises a layer by its operation count and channel size and
learns from synthesized layers how those relate to the best core count. Here
the rule is, per kind of layer (``conv1x1``, ``conv`` for larger kernels,
``depthwise``, ``fc``, and ``any`` for the other ops), a small decision tree
over a few log-scaled features of the layer (:data:`FEATURES`). Every leaf
names a choice ``(cores, split)``; every threshold and every leaf is fitted to
the characterization data (:mod:`.characterize`), nothing is hand-picked:

* a leaf's choice is the one with the least total relative cycle regret
  (``cycles(choice) / cycles(best choice) - 1``) over the layers in it, ties to
  fewer cores;
* a node is split on the feature and threshold (a midpoint between two observed
  values) that reduce that regret most, greedily, while it strictly decreases,
  down to :data:`MAX_DEPTH` levels.

:func:`fit_rule` also reports the rule's accuracy on the data it was fitted to
(the fraction of layers where its choice is optimal, the mean and total cycle
regret) and, by leave-one-out refitting, on layers it has not seen. The fitted
rule is stored per HwConfig (``rule-<hw.hash>.json``); :func:`load_rule` finds
it for the strategy, which calls :meth:`Rule.choose` with
:func:`features_of` of each layer of a compiler graph.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...hw.binary import atomic_write, read_json
from ...hw.config import HwConfig
from .cache import default_build_dir
from .errors import TuneError

__all__ = ["RULE_FORMAT", "FEATURES", "KINDS", "FALLBACK_KIND", "MAX_DEPTH", "Sample", "Rule", "layer_features",
           "features_of", "rule_kind", "numeric_features", "fit_rule", "evaluate", "rule_path", "default_rule_dir",
           "load_rule"]

RULE_FORMAT = "dlfusion-rule/1"

#: Numeric features the trees split on, computed by :func:`numeric_features`.
FEATURES = (
    "log2_macs",                     # operation count
    "log2_in_channels",
    "log2_out_channels",             # channel size: what a split by output channels divides
    "log2_out_rows",                 # what a split by output rows divides
    "log2_activation_bytes",         # input + output: loaded by every core of a channel split
    "log2_weight_bytes",             # loaded by every core of a row split
    "log2_weights_per_activation",
)
#: Layer kinds with a tree of their own; other ops use the ``any`` tree, fitted to all layers.
KINDS = ("conv1x1", "conv", "depthwise", "fc")
FALLBACK_KIND = "any"
#: Depth of each tree: at most 2**MAX_DEPTH leaves, each a short rule a person can read.
MAX_DEPTH = 3
#: Regret differences below this are ties (float summation noise).
_TOLERANCE = 1e-9

Choice = tuple[int, str]


# -- features -------------------------------------------------------------------------------------

def layer_features(kind: str, *, kernel: int, stride: int, in_channels: int, out_channels: int, in_height: int,
                   in_width: int, out_height: int, out_width: int, macs: int, density: float = 1.0) -> dict:
    """The raw features of one layer (``kind``: ``conv``, ``depthwise``, ``fc``, ``add``, ``maxpool``,
    ``avgpool``, ``concat``, as :class:`~dlfusion.compiler.ir.Op` values). A fully connected layer
    is ``fc`` with its flattened fan-in as ``in_channels`` on a 1x1 input. ``density``: N/M of the
    N:M pattern a sparse conv/fc runs with (1 dense; only then is it in the dict, so dense layers'
    features read as before sparsity)."""
    features = {"kind": kind, "kernel": int(kernel), "stride": int(stride), "in_channels": int(in_channels),
                "out_channels": int(out_channels), "in_height": int(in_height), "in_width": int(in_width),
                "out_height": int(out_height), "out_width": int(out_width), "macs": int(macs)}
    if density != 1.0:
        features["density"] = float(density)
    return features


def features_of(graph, node) -> dict:
    """The features of a node of a compiler graph (:mod:`dlfusion.compiler.ir`), for :meth:`Rule.choose`."""
    cin, h, w = graph.tensors[node.inputs[0]].shape
    cout, oh, ow = graph.tensors[node.output].shape
    kind = node.op.value
    kernel = int(node.attrs.kernel)
    stride = int(node.attrs.stride)
    if kind == "fc":  # a classifier on a (C, H, W) input is a C*H*W -> K product
        cin, h, w, kernel = cin * h * w, 1, 1, 1
    pattern = node.attrs.sparsity.pattern
    return layer_features(kind, kernel=kernel, stride=stride, in_channels=cin, out_channels=cout, in_height=h,
                          in_width=w, out_height=oh, out_width=ow, macs=node.macs,
                          density=1.0 if pattern is None else pattern[0] / pattern[1])


def rule_kind(features: dict) -> str:
    """Which tree decides for a layer: one of :data:`KINDS` or :data:`FALLBACK_KIND`."""
    kind = features["kind"]
    if kind == "conv":
        return "conv1x1" if features["kernel"] == 1 else "conv"
    return kind if kind in KINDS else FALLBACK_KIND


def _log2(value) -> float:
    return math.log2(max(1, value))


def numeric_features(features: dict) -> dict[str, float]:
    """The :data:`FEATURES` of a layer's raw features."""
    f = features
    kind = f["kind"]
    # A sparse layer does the PE work of density x its MACs and loads density x 5/4 of its weight bytes
    # (values and 2-bit indices): it is characterized, and chosen for, as that dense layer.
    density = f.get("density", 1.0)
    if kind in ("conv", "fc"):
        weights = f["out_channels"] * f["in_channels"] * f["kernel"] ** 2 * (density * 1.25 if density < 1 else 1)
    elif kind == "depthwise":
        weights = f["out_channels"] * f["kernel"] ** 2
    else:
        weights = 0
    activations = f["in_channels"] * f["in_height"] * f["in_width"] + f["out_channels"] * f["out_height"] * f[
        "out_width"]
    return {"log2_macs": _log2(f["macs"] * density), "log2_in_channels": _log2(f["in_channels"]),
            "log2_out_channels": _log2(f["out_channels"]), "log2_out_rows": _log2(f["out_height"]),
            "log2_activation_bytes": _log2(activations), "log2_weight_bytes": _log2(weights),
            "log2_weights_per_activation": _log2(weights) - _log2(activations)}


# -- fitting ------------------------------------------------------------------------------------

@dataclass
class Sample:
    """One characterized layer: its features and the RTL cycles of every choice measured.

    Attributes
    ----------
    name : str
    features : dict
        Raw features (:func:`layer_features`).
    cycles : dict of (int, str) to int
        RTL cycles per ``(cores, split)``; one core is ``(1, "rows")``.
    """
    name: str
    features: dict
    cycles: dict[Choice, int]
    numeric: dict[str, float] = field(init=False)

    def __post_init__(self):
        self.numeric = numeric_features(self.features)

    @property
    def best_cycles(self) -> int:
        return min(self.cycles.values())

    def regret(self, choice: Choice) -> float:
        """``cycles(choice) / cycles(best) - 1``."""
        return self.cycles[choice] / self.best_cycles - 1.0


def _choice_order(choice: Choice):
    return (choice[0], choice[1] != "rows")


def _regrets(samples: Sequence[Sample], choices: Sequence[Choice]) -> np.ndarray:
    """``(len(samples), len(choices))`` relative regrets."""
    return np.array([[s.regret(c) for c in choices] for s in samples], np.float64).reshape(len(samples),
                                                                                          len(choices))


def _leaf(samples: Sequence[Sample], choices: Sequence[Choice]) -> tuple[Choice, float]:
    """The choice with the least total regret over ``samples`` (the first such: fewest cores)."""
    costs = _regrets(samples, choices).sum(axis=0)
    best = int(np.argmin(costs))
    return choices[best], float(costs[best])


def _grow(samples: list[Sample], choices: Sequence[Choice], depth: int) -> dict:
    regrets = _regrets(samples, choices)
    costs = regrets.sum(axis=0)
    leaf = int(np.argmin(costs))
    cost = float(costs[leaf])
    node = {"choice": list(choices[leaf]), "layers": len(samples), "regret": round(cost / len(samples), 6)}
    if depth >= MAX_DEPTH or len(samples) < 2 or cost <= _TOLERANCE:
        return node
    best = None
    for feature in FEATURES:
        values = np.array([s.numeric[feature] for s in samples])
        order = np.argsort(values, kind="stable")
        below_costs = np.cumsum(regrets[order], axis=0)       # row i: the first i + 1 samples
        split_costs = below_costs.min(axis=1) + (costs - below_costs).min(axis=1)
        sorted_values = values[order]
        for i in range(len(samples) - 1):
            if sorted_values[i] == sorted_values[i + 1]:
                continue                                       # no threshold between equal values
            if best is None or split_costs[i] < best[0] - _TOLERANCE:
                best = (float(split_costs[i]), feature, float(sorted_values[i] + sorted_values[i + 1]) / 2)
    if best is None or best[0] >= cost - _TOLERANCE:
        return node
    _, feature, threshold = best
    below = [s for s in samples if s.numeric[feature] < threshold]
    above = [s for s in samples if s.numeric[feature] >= threshold]
    return {"feature": feature, "threshold": threshold,
            "below": _grow(below, choices, depth + 1), "above": _grow(above, choices, depth + 1)}


def _walk(tree: dict, numeric: dict[str, float]) -> Choice:
    while "choice" not in tree:
        tree = tree["below"] if numeric[tree["feature"]] < tree["threshold"] else tree["above"]
    cores, split = tree["choice"]
    return int(cores), str(split)


def _common_choices(samples: Sequence[Sample]) -> list[Choice]:
    common = set(samples[0].cycles)
    for sample in samples[1:]:
        common &= set(sample.cycles)
    if not common:
        raise TuneError("the characterized layers share no measured (cores, split) choice")
    return sorted(common, key=_choice_order)


def evaluate(rule: Rule, samples: Sequence[Sample]) -> dict:
    """How good ``rule``'s choices are on ``samples``.

    Returns
    -------
    dict
        ``layers``; ``optimal_fraction``: layers whose chosen cycles equal the best
        measured; ``mean_regret``, ``max_regret``: of ``cycles(chosen) / cycles(best) - 1``;
        ``total_regret``: summed chosen cycles over summed best cycles, minus 1.
    """
    regrets = []
    chosen_total = best_total = optimal = 0
    for sample in samples:
        choice = rule.choose(sample.features)
        cycles = sample.cycles[choice]
        regrets.append(cycles / sample.best_cycles - 1.0)
        optimal += cycles == sample.best_cycles
        chosen_total += cycles
        best_total += sample.best_cycles
    n = len(samples)
    return {"layers": n, "optimal_fraction": optimal / n if n else None,
            "mean_regret": sum(regrets) / n if n else None, "max_regret": max(regrets) if n else None,
            "total_regret": chosen_total / best_total - 1.0 if n else None}


def _fit_trees(samples: Sequence[Sample]) -> dict[str, dict]:
    choices = _common_choices(samples)
    trees = {}
    for kind in KINDS:
        group = [s for s in samples if rule_kind(s.features) == kind]
        if group:
            trees[kind] = _grow(group, choices, 0)
    trees[FALLBACK_KIND] = _grow(list(samples), choices, 0)
    return trees


def fit_rule(samples: Sequence[Sample], hw: HwConfig, *, metadata: dict | None = None) -> Rule:
    """Fit the trees to characterized layers and measure how well they choose.

    Parameters
    ----------
    samples : sequence of Sample
        Every layer measured at the same set of choices.
    hw : HwConfig
        The configuration they were measured on.
    metadata : dict, optional
        Recorded in the rule (the grid, the dataset).

    Returns
    -------
    Rule
        With ``accuracy``: per kind and ``all``, :func:`evaluate` on the fitting
        data plus ``loo_optimal_fraction`` and ``loo_mean_regret`` (each layer
        chosen by a rule fitted without it) and ``best_fixed_choice`` with its
        ``fixed_mean_regret`` (the one choice that would do best for every layer
        of the kind: what the fitted rule improves on).
    """
    samples = list(samples)
    if not samples:
        raise TuneError("no characterized layers to fit a rule to")
    choices = _common_choices(samples)
    rule = Rule(hw.hash, _fit_trees(samples), choices=choices, metadata=dict(metadata or {}, hw=hw.to_dict()))
    groups = {kind: [s for s in samples if rule_kind(s.features) == kind] for kind in KINDS}
    groups = {kind: group for kind, group in groups.items() if group}
    groups["all"] = samples
    loo = {}
    for index, sample in enumerate(samples):
        rest = samples[:index] + samples[index + 1:]
        loo[sample.name] = Rule(hw.hash, _fit_trees(rest), choices=choices).choose(sample.features) if rest else None
    accuracy = {}
    for kind, group in groups.items():
        figures = evaluate(rule, group)
        held_out = [(s, loo[s.name]) for s in group if loo[s.name] is not None]
        if held_out:
            figures["loo_optimal_fraction"] = sum(s.cycles[c] == s.best_cycles for s, c in held_out) / len(held_out)
            figures["loo_mean_regret"] = sum(s.regret(c) for s, c in held_out) / len(held_out)
        fixed, cost = _leaf(group, choices)
        figures["best_fixed_choice"] = list(fixed)
        figures["fixed_mean_regret"] = cost / len(group)
        accuracy[kind] = figures
    rule.accuracy = accuracy
    return rule


# -- the rule ------------------------------------------------------------------------------------

@dataclass
class Rule:
    """A fitted decision rule for one HwConfig.

    Attributes
    ----------
    hw_hash : str
    trees : dict of str to dict
        Per kind (:data:`KINDS` and :data:`FALLBACK_KIND`): ``{"feature", "threshold",
        "below", "above"}`` nodes (``below`` when the feature is less than the
        threshold) down to ``{"choice": [cores, split], ...}`` leaves.
    choices : list of (int, str)
        The choices the rule was fitted over.
    accuracy : dict
        See :func:`fit_rule`.
    metadata : dict
        The HwConfig (``hw``), the grid, the dataset, when it was made.
    """
    hw_hash: str
    trees: dict[str, dict]
    choices: list[Choice] = field(default_factory=list)
    accuracy: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)

    def choose(self, features: dict) -> Choice:
        """``(cores, split)`` for a layer with these raw features (:func:`features_of`,
        :func:`layer_features`)."""
        kind = rule_kind(features)
        tree = self.trees.get(kind) or self.trees[FALLBACK_KIND]
        return _walk(tree, numeric_features(features))

    def explain(self) -> str:
        """The trees as indented text, thresholds in their natural units."""
        lines = []

        def show(node, indent):
            pad = "  " * indent
            if "choice" in node:
                cores, split = node["choice"]
                lines.append(f"{pad}-> {cores} core(s), split by {split}  ({node['layers']} layer(s), "
                             f"mean regret {100 * node['regret']:.1f}%)")
                return
            name = node["feature"]
            if name == "log2_weights_per_activation":
                value = f"{2 ** node['threshold']:.3g}"
            else:
                value = f"{2 ** node['threshold']:,.0f}"
            label = name.removeprefix("log2_")
            lines.append(f"{pad}if {label} < {value}:")
            show(node["below"], indent + 1)
            lines.append(f"{pad}else:")
            show(node["above"], indent + 1)

        for kind, tree in self.trees.items():
            lines.append(f"{kind}:")
            show(tree, 1)
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"format": RULE_FORMAT, "hw_hash": self.hw_hash, "features": list(FEATURES),
                "max_depth": MAX_DEPTH, "choices": [list(c) for c in self.choices], "trees": self.trees,
                "accuracy": self.accuracy, "metadata": self.metadata}

    @classmethod
    def from_json(cls, data: dict, *, source: str = "rule") -> Rule:
        if not isinstance(data, dict) or data.get("format") != RULE_FORMAT:
            raise TuneError(f"{source}: not a {RULE_FORMAT} decision rule")
        if list(data.get("features", [])) != list(FEATURES):
            raise TuneError(f"{source}: made with other features ({data.get('features')}); "
                            "characterize again to refit it")
        return cls(data["hw_hash"], data["trees"], [(int(c), str(s)) for c, s in data.get("choices", [])],
                   data.get("accuracy", {}), data.get("metadata", {}))

    def write(self, path: str | Path) -> None:
        atomic_write(path, json.dumps(dict(self.to_json(), written=time.strftime("%Y-%m-%dT%H:%M:%S")),
                                      indent=1))

    @classmethod
    def read(cls, path: str | Path) -> Rule:
        data = read_json(path, "decision rule", TuneError)
        return cls.from_json(data, source=str(path))


def default_rule_dir() -> Path:
    """``<build>/tune``: where ``dlfusion characterize`` stores each HwConfig's rule for the tuner."""
    return default_build_dir() / "tune"


def rule_path(hw: HwConfig, directory: str | Path | None = None) -> Path:
    """``<directory>/rule-<hw.hash>.json`` (default directory :func:`default_rule_dir`)."""
    return (Path(directory) if directory is not None else default_rule_dir()) / f"rule-{hw.hash}.json"


def load_rule(hw: HwConfig, directory: str | Path | None = None) -> Rule:
    """The decision rule fitted for ``hw``.

    Raises
    ------
    TuneError
        There is none (the message names the command that makes it), or it is for
        another HwConfig.
    """
    path = rule_path(hw, directory)
    if not path.exists():
        raise TuneError(f"no decision rule for HwConfig {hw.hash} ({hw.describe()}) at {path}; "
                        "make it with: dlfusion characterize --hw <this config's TOML>")
    rule = Rule.read(path)
    if rule.hw_hash != hw.hash:
        raise TuneError(f"{path} was fitted for HwConfig {rule.hw_hash}, not {hw.hash}")
    return rule
