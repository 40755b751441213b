"""Which plan ``dlfusion compile`` uses without ``--plan``, and the JSON that says why: the tuned
``dlfusion`` plan where the rule directory has a rule and a cost model, else the default plan (per
layer the cheapest of one core and all cores by rows or channels, by a roofline of its static counts);
``--fusion``/``--cores``/``--split`` keep the obvious plans, ``--plan`` a file."""

import json

import pytest

from dlfusion.cli import main
from dlfusion.compiler.lower.common import Split
from dlfusion.compiler.tune.costmodel import TERMS, CostModel, cost_model_path
from dlfusion.compiler.tune.features import Workload
from dlfusion.compiler.tune.rule import FALLBACK_KIND, Rule, rule_path
from dlfusion.compiler.tune.strategies import plan_default, plan_dlfusion, roofline_cycles
from dlfusion.compiler.tune.tune import load_model
from dlfusion.hw.config import HwConfig

SIZE = 16
#: A rule and coefficients of the order of fitted ones, as tests/fingerprints.py fixes them.
TREE = {"feature": "log2_macs", "threshold": 14.0, "below": {"choice": [1, "rows"]},
        "above": {"choice": [4, "channels"]}}
COEFFICIENTS = dict(zip(TERMS, (1.0, 0.25, 0.1, 1.0, 1.0, 2.0, 150.0), strict=True))


def compile_json(capsys, tmp_path, *options):
    code = main(["compile", "tiny_cnn", "--input-size", str(SIZE), "-o", str(tmp_path / "tiny.dlfb"), "--json",
                 *options])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out), json.loads((tmp_path / "tiny.plan.json").read_text())


@pytest.fixture(scope="module")
def graph():
    return load_model("tiny_cnn", SIZE)[0]


def test_without_a_rule_the_default_plan(graph, tmp_path, capsys):
    summary, plan = compile_json(capsys, tmp_path, "--rule-dir", str(tmp_path / "empty"))
    assert summary["plan_source"] == "default"
    assert "no decision rule for HwConfig" in summary["why"] and "roofline" in summary["why"]
    assert [g["nodes"] for g in plan["groups"]] == [[node.name] for node in graph.nodes]
    assert summary["layers"] == len(graph.nodes)
    layers = summary["layer_choices"]
    assert [(layer["node"], layer["cores"], layer["split"]) for layer in layers] == \
        [(g["nodes"][0], g["cores"], g["split"]) for g in plan["groups"]]
    for layer in layers:
        chosen = f"{layer['cores']} {layer['split']}"
        assert set(layer["estimates"]) == {"1 rows", "4 rows", "4 channels"}
        assert layer["estimates"][chosen] == min(layer["estimates"].values())
        assert layer["why"].startswith(f"{chosen}: ") and layer["bound"] in ("compute", "dma")
    # The estimate of the whole plan is no more than every layer on one core.
    assert summary["roofline_cycles"] <= sum(layer["estimates"]["1 rows"] for layer in layers)


def test_default_plan_takes_the_cheapest_roofline(graph):
    hw = HwConfig()
    workload = Workload(graph, hw)
    plan, layers = plan_default(workload, 2)
    for group, layer in zip(plan.groups, layers, strict=True):
        options = {(1, Split.ROWS), (2, Split.ROWS), (2, Split.CHANNELS)}
        best = min(roofline_cycles(workload.features(tuple(group.nodes), c, s), hw)[0] for c, s in options)
        assert roofline_cycles(workload.features(tuple(group.nodes), group.cores, group.split), hw)[0] == best
        assert set(layer["estimates"]) == {"1 rows", "2 rows", "2 channels"}
    one_core, _ = plan_default(workload, 1)
    assert all(group.cores == 1 for group in one_core.groups)


def test_with_a_rule_and_a_cost_model_the_tuned_plan(graph, tmp_path, capsys):
    hw = HwConfig()
    rules = tmp_path / "rules"
    rules.mkdir()
    rule, cost_model = Rule(hw.hash, {FALLBACK_KIND: TREE}), CostModel(hw.hash, dict(COEFFICIENTS))
    rule.write(rule_path(hw, rules))
    cost_model.write(cost_model_path(hw, rules))
    summary, plan = compile_json(capsys, tmp_path, "--rule-dir", str(rules))
    assert summary["plan_source"] == "dlfusion"
    assert summary["rule"] == str(rule_path(hw, rules)) and summary["cost_model"] == str(cost_model_path(hw, rules))
    expected, search = plan_dlfusion(Workload(graph, hw), rule, cost_model)
    assert plan["groups"] == expected.to_json()["groups"]
    assert summary["predicted_cycles"] == round(search.predicted_cycles)


def test_a_rule_without_a_cost_model_warns_and_uses_the_default(tmp_path, capsys):
    hw = HwConfig()
    rules = tmp_path / "rules"
    rules.mkdir()
    Rule(hw.hash, {FALLBACK_KIND: TREE}).write(rule_path(hw, rules))
    code = main(["compile", "tiny_cnn", "--input-size", str(SIZE), "-o", str(tmp_path / "tiny.dlfb"),
                 "--rule-dir", str(rules)])
    captured = capsys.readouterr()
    assert code == 0
    assert "(plan " in captured.out and ": default)" in captured.out
    assert "dlfusion: warning: not using the tuned plan: no cost model for HwConfig" in captured.err


def test_explicit_options_and_files_keep_their_meaning(tmp_path, capsys):
    summary, plan = compile_json(capsys, tmp_path, "--fusion", "max", "--rule-dir", str(tmp_path / "empty"))
    assert summary["plan_source"] == "fusion=max cores=4 split=rows"
    assert all(g["cores"] == 4 for g in plan["groups"]) and summary["groups"] < summary["layers"]
    assert {"roofline_cycles", "roofline_cycles_one_core"} <= set(summary)
    assert ("warning" in summary) == (summary["roofline_cycles"] > summary["roofline_cycles_one_core"])
    summary, plan = compile_json(capsys, tmp_path, "--cores", "1")
    assert summary["plan_source"] == "fusion=none cores=1 split=rows" and "warning" not in summary
    (tmp_path / "saved.plan.json").write_text(json.dumps(plan))
    summary, again = compile_json(capsys, tmp_path, "--plan", str(tmp_path / "saved.plan.json"))
    assert summary["plan_source"] == "file" and summary["plan_file"] == str(tmp_path / "saved.plan.json")
    assert again == plan
