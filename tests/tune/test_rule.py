"""The decision rule: fitting on known structure, accuracy figures, features of IR nodes, storage."""

import json

import numpy as np
import pytest

from dlfusion.compiler.ir import Graph, Node, Op, Tensor
from dlfusion.compiler.tune import TuneError
from dlfusion.compiler.tune.characterize import LayerSpec
from dlfusion.compiler.tune.rule import (
    FALLBACK_KIND,
    Rule,
    Sample,
    evaluate,
    features_of,
    fit_rule,
    load_rule,
    numeric_features,
    rule_kind,
    rule_path,
)
from dlfusion.hw.config import HwConfig

HW = HwConfig()
CHOICES = [(1, "rows"), (2, "rows"), (2, "channels"), (4, "rows"), (4, "channels")]


def _synthetic(spec: LayerSpec, rng) -> Sample:
    """Cycles with a known best choice: 1 core below 2**20 MACs; above it 4 cores, split by channels
    when the layer has at least 64 output channels, else by rows."""
    macs = spec.macs
    if macs < 2 ** 20:
        best = (1, "rows")
    else:
        best = (4, "channels") if spec.cout >= 64 else (4, "rows")
    cycles = {c: int(macs / 100 * (1 + rng.uniform(0.1, 1.0))) + 500 for c in CHOICES}
    cycles[best] = macs // 100 + 100
    return Sample(spec.name, spec.features(), cycles)


def _samples(seed=0):
    rng = np.random.default_rng(seed)
    specs = [LayerSpec("conv", 3, c, c, s, s) for s in (4, 8, 16, 32, 56) for c in (16, 32, 64, 128)]
    return [_synthetic(spec, rng) for spec in specs]


def test_fit_recovers_a_known_rule_and_reports_its_accuracy():
    samples = _samples()
    rule = fit_rule(samples, HW, metadata={"grid": "synthetic"})
    assert rule.accuracy["conv"]["optimal_fraction"] == 1.0
    assert rule.accuracy["conv"]["mean_regret"] == 0.0
    assert rule.accuracy["conv"]["layers"] == len(samples)
    # Held out: layers the rule never saw are still chosen well on this clean structure.
    assert rule.accuracy["conv"]["loo_optimal_fraction"] >= 0.9
    # The fixed-choice baseline is what a rule without features would lose.
    assert rule.accuracy["conv"]["fixed_mean_regret"] > 0.05
    for spec, expected in ((LayerSpec("conv", 3, 16, 16, 4, 4), (1, "rows")),
                           (LayerSpec("conv", 3, 256, 256, 28, 28), (4, "channels")),
                           (LayerSpec("conv", 3, 32, 32, 64, 64), (4, "rows"))):
        assert rule.choose(spec.features()) == expected
    assert "conv:" in rule.explain() and "macs <" in rule.explain()


def test_accuracy_figures_equal_a_recomputation():
    samples = _samples(seed=3)
    # Perturb: some layers prefer 2 cores, which the tree cannot all separate at depth 3.
    rng = np.random.default_rng(7)
    for sample in samples[::3]:
        sample.cycles[(2, "rows")] = min(sample.cycles.values()) - int(rng.integers(1, 50))
    rule = fit_rule(samples, HW)
    chosen = [s.cycles[rule.choose(s.features)] for s in samples]
    best = [min(s.cycles.values()) for s in samples]
    figures = rule.accuracy["all"]
    assert figures["optimal_fraction"] == pytest.approx(np.mean([c == b for c, b in zip(chosen, best, strict=True)]))
    assert figures["mean_regret"] == pytest.approx(np.mean([c / b - 1 for c, b in zip(chosen, best, strict=True)]))
    assert figures["total_regret"] == pytest.approx(sum(chosen) / sum(best) - 1)
    assert evaluate(rule, samples) == {k: figures[k] for k in
                                       ("layers", "optimal_fraction", "mean_regret", "max_regret", "total_regret")}


def test_rule_round_trips_and_is_found_per_hw(tmp_path):
    samples = _samples()
    rule = fit_rule(samples, HW)
    rule.write(rule_path(HW, tmp_path))
    loaded = load_rule(HW, tmp_path)
    assert loaded.trees == json.loads(json.dumps(rule.trees))
    assert all(loaded.choose(s.features) == rule.choose(s.features) for s in samples)
    other = HwConfig(cores=2)
    with pytest.raises(TuneError, match=rf"no decision rule for HwConfig {other.hash} .*dlfusion characterize"):
        load_rule(other, tmp_path)
    rule_path(other, tmp_path).write_text(rule_path(HW, tmp_path).read_text())
    with pytest.raises(TuneError, match=f"fitted for HwConfig {HW.hash}, not {other.hash}"):
        load_rule(other, tmp_path)
    rule_path(other, tmp_path).write_text("{}")
    with pytest.raises(TuneError, match="not a dlfusion-rule/1 decision rule"):
        load_rule(other, tmp_path)


def _tensor(name, shape):
    return Tensor(name, shape, "int8", 0.05, 0)


def test_features_of_ir_nodes_match_the_characterized_layers():
    tensors = {"x": _tensor("x", (32, 14, 14)), "c": _tensor("c", (64, 7, 7)), "d": _tensor("d", (64, 7, 7)),
               "a": _tensor("a", (64, 7, 7)), "f": _tensor("f", (10, 1, 1))}
    conv = Node("conv", Op.CONV, ["x"], "c", dict(kernel=3, stride=2, pad=1, macs=64 * 7 * 7 * 32 * 9))
    dw = Node("dw", Op.DEPTHWISE, ["c"], "d", dict(kernel=3, stride=1, pad=1, macs=64 * 7 * 7 * 9))
    add = Node("add", Op.ADD, ["c", "d"], "a", {})
    fc = Node("fc", Op.FC, ["a"], "f", dict(kernel=7, stride=1, pad=0, macs=10 * 64 * 49))
    graph = Graph("g", tensors, [conv, dw, add, fc], "x", "f")

    assert features_of(graph, conv) == LayerSpec("conv", 3, 32, 64, 14, 14, stride=2).features()
    assert features_of(graph, dw) == LayerSpec("depthwise", 3, 64, 64, 7, 7).features()
    # A classifier on a 7x7x64 input is the 3136 -> 10 layer the characterization synthesizes.
    assert features_of(graph, fc) == LayerSpec("fc", 1, 64 * 49, 10, 1, 1).features()
    assert [rule_kind(features_of(graph, n)) for n in graph.nodes] == ["conv", "depthwise", FALLBACK_KIND, "fc"]
    assert rule_kind(LayerSpec("conv", 1, 8, 8, 4, 4).features()) == "conv1x1"
    numeric = numeric_features(features_of(graph, add))
    assert numeric["log2_macs"] == 0 and numeric["log2_weight_bytes"] == 0

    rule = fit_rule(_samples(), HW)
    cores, split = rule.choose(features_of(graph, add))       # other ops use the "any" tree
    assert (cores, split) in CHOICES


def test_fit_needs_data():
    with pytest.raises(TuneError, match="no characterized layers"):
        fit_rule([], HW)
    a = Sample("a", LayerSpec("conv", 3, 8, 8, 4, 4).features(), {(1, "rows"): 10})
    b = Sample("b", LayerSpec("conv", 3, 8, 8, 8, 8).features(), {(2, "rows"): 10})
    with pytest.raises(TuneError, match="share no measured"):
        fit_rule([a, b], HW)


def test_rule_reads_reject_other_features(tmp_path):
    rule = fit_rule(_samples(), HW)
    data = rule.to_json()
    data["features"] = ["log2_macs"]
    with pytest.raises(TuneError, match="made with other features"):
        Rule.from_json(data)
