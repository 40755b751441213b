"""``dlfusion tune``: the documented JSON keys, plan files and report, the headline figures' relations,
resuming from the cache, and bad input (one-line errors, exit status 2, nothing written)."""

import json

import pytest

from dlfusion.cli import main
from dlfusion.compiler.plan import Plan
from dlfusion.compiler.tune.oracle import ADDITIVITY_TOLERANCE
from dlfusion.compiler.tune.rule import Rule, rule_path
from dlfusion.compiler.tune.strategies import STRATEGIES
from dlfusion.hw.config import HwConfig

QUAD = HwConfig(cores=4, pe_rows=4, pe_cols=4, act_lines=2048, weight_blocks=1024, acc_entries=256,
                param_entries=64, dram_bytes=1 << 20, dram_bytes_per_cycle=4, dram_latency=12,
                watchdog_cycles=4000)
RULE = Rule(QUAD.hash, {"any": {
    "feature": "log2_macs", "threshold": 14.0,
    "below": {"choice": [1, "rows"], "layers": 1, "regret": 0.0},
    "above": {"choice": [4, "channels"], "layers": 1, "regret": 0.0}}})
ENTRY_KEYS = {"cycles", "speedup", "search_seconds", "plan", "plan_file", "groups", "fused_groups", "cores_used",
              "oracle_fraction", "rtl_seconds", "cached", "group_cycles"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    toml = root / "quad.toml"
    toml.write_text(QUAD.to_toml())
    RULE.write(rule_path(QUAD, root / "rules"))
    return root, ["--hw", str(toml), "--rule-dir", str(root / "rules"), "--cache", str(root / "cache"),
                  "--workers", "2"]


@pytest.fixture(scope="module")
def tuned(setup):
    root, common = setup
    capture = pytest.MonkeyPatch()
    import io
    import sys
    out = io.StringIO()
    capture.setattr(sys, "stdout", out)
    try:
        status = main(["tune", "tiny_cnn", "--input-size", "8", "--strategy", "all", "--report", str(root / "report"),
                       "--json", *common])
    finally:
        capture.undo()
    assert status == 0
    return root, common, json.loads(out.getvalue())


@pytest.mark.rtl
def test_json_has_the_documented_keys(tuned):
    root, _, payload = tuned
    assert {"cycles", "baseline_cycles", "speedup", "search_seconds", "plan", "plan_file", "strategy", "strategies",
            "oracle", "cost_model", "model", "input_size", "hw_hash", "macs", "layers"} <= set(payload)
    assert payload["strategy"] == "dlfusion" and set(payload["strategies"]) == set(STRATEGIES)
    baseline = payload["baseline_cycles"]
    oracle = payload["strategies"]["oracle"]["cycles"]
    assert baseline == payload["strategies"]["none"]["cycles"]
    for name, entry in payload["strategies"].items():
        assert ENTRY_KEYS <= set(entry), name
        assert entry["speedup"] == pytest.approx(baseline / entry["cycles"])
        assert entry["oracle_fraction"] == pytest.approx(oracle / entry["cycles"])
        plan = Plan.read(entry["plan_file"])
        assert plan.to_json() == entry["plan"]
        assert len(entry["group_cycles"]) == entry["groups"] == len(plan.groups)
    chosen = payload["strategies"]["dlfusion"]
    assert (payload["cycles"], payload["speedup"], payload["plan"]) == (chosen["cycles"], chosen["speedup"],
                                                                        chosen["plan"])
    # The oracle measured its tiling plans: its search costs their recorded seconds, dlfusion simulated nothing.
    # (How much cheaper dlfusion's search is, is a benchmark figure, `dlfusion bench tune`, not a wall-clock
    # assertion here.)
    assert payload["oracle"]["measurements"] > 0
    assert payload["strategies"]["oracle"]["search_seconds"] > payload["strategies"]["dlfusion"]["search_seconds"]
    assert payload["oracle"]["additive"] and abs(payload["oracle"]["additivity_error"]) <= ADDITIVITY_TOLERANCE
    # No plan on the RTL beats the roofline; the ceiling is the baseline over it.
    bound = payload["roofline"]
    assert bound["ceiling_speedup"] == pytest.approx(baseline / bound["cycles"])
    assert max(entry["speedup"] for entry in payload["strategies"].values()) <= bound["ceiling_speedup"]
    model = payload["cost_model"]
    assert model["sources"] == ["tiny_cnn@8"] and not model["held_out"]
    assert model["error_on_this_model"]["groups"] == payload["oracle"]["measurements"]
    for name in ("report/tune-report.md", "report/tune-report.json", "report/cycles-tiny_cnn-8.png",
                 "report/plans-tiny_cnn-8.png"):
        assert (root / name).stat().st_size > 0, name
    report = json.loads((root / "report/tune-report.json").read_text())
    assert report["models"]["tiny_cnn@8"]["strategies"]["oracle"]["cycles"] == oracle
    markdown = (root / "report/tune-report.md").read_text()
    assert f"{oracle:,}" in markdown and "![plans](plans-tiny_cnn-8.png)" in markdown
    assert f"{bound['ceiling_speedup']:.2f} ({bound['bound']})" in markdown


@pytest.mark.rtl
def test_a_single_strategy_from_the_cache(tuned, capsys):
    root, common, first = tuned
    status = main(["tune", "tiny_cnn", "--input-size", "8", "--strategy", "cores-only", "-o",
                   str(root / "cores.plan.json"), "--json", *common])
    assert status == 0
    payload = json.loads(capsys.readouterr().out)
    entry = payload["strategies"]["cores-only"]
    assert entry["cached"] and payload["cycles"] == first["strategies"]["cores-only"]["cycles"]
    assert set(payload["strategies"]) == {"none", "cores-only"} and "oracle_fraction" not in entry
    assert json.loads((root / "cores.plan.json").read_text()) == payload["plan"] == entry["plan"]
    # With a cost model now stored, dlfusion needs no oracle; the text output is the comparison table.
    status = main(["tune", "tiny_cnn", "--input-size", "8", *common, "-o", str(root / "d.plan.json")])
    out = capsys.readouterr().out
    assert status == 0 and "dlfusion" in out and "RTL cycles" in out


def _bad(capsys, argv, match, root, common):
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    status = main(["tune", *argv, *common, "--report", str(root / "bad-report"), "-o", str(root / "bad.json")])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("dlfusion: error: ") and err.count("\n") == 1 and match in err, err
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_bad_input(setup, capsys, tmp_path):
    root, common = setup
    # --strategy none: without the rtl fixture's run there is no cost model yet, and dlfusion needs one.
    _bad(capsys, ["lenet", "--strategy", "none"], "unknown model 'lenet'", root, common)
    _bad(capsys, ["tiny_cnn", "--strategy", "greedy"], "unknown strategy 'greedy'; accepted: none, cores-only",
         root, common)
    _bad(capsys, ["resnet18", "--input-size", "16", "--strategy", "none"], "resnet18: input size 16 is below the "
         "minimum 32", root, common)
    _bad(capsys, ["tiny_cnn", "--max-group", "0"], "--max-group must be at least 1", root, common)
    empty = [*common]
    empty[empty.index("--rule-dir") + 1] = str(tmp_path / "nothing")
    _bad(capsys, ["tiny_cnn", "--strategy", "cores-only"], "make it with: dlfusion characterize", root, empty)
    RULE.write(rule_path(QUAD, tmp_path / "rule-only"))
    empty[empty.index("--rule-dir") + 1] = str(tmp_path / "rule-only")
    _bad(capsys, ["tiny_cnn", "--strategy", "dlfusion"], "no cost model for HwConfig", root, empty)
    missing = [*common]
    missing[missing.index("--hw") + 1] = str(tmp_path / "missing.toml")
    _bad(capsys, ["tiny_cnn", "--strategy", "none"], "missing.toml' does not exist", root, missing)


@pytest.mark.rtl
def test_the_bench_fits_its_cost_model_to_its_models_only(tuned, capsys):
    from dlfusion.compiler.tune.costmodel import CostModel, cost_model_path, samples_dir
    root, common, first = tuned
    # Another model's measurements in the shared rule directory must not reach the bench's cost model.
    shared = samples_dir(QUAD, root / "rules")
    data = json.loads((shared / "tiny_cnn@8.json").read_text())
    data["source"] = "other@1"
    (shared / "other@1.json").write_text(json.dumps(data))
    status = main(["bench", "tune", "--models", "tiny_cnn", "--input-size", "8", "--report", str(root / "bench"),
                   *common])
    out = capsys.readouterr().out
    assert status == 0
    model = CostModel.read(cost_model_path(QUAD, root / "bench" / "rules"))
    assert model.sources == ["tiny_cnn@8"]
    report = json.loads((root / "bench" / "tune-report.json").read_text())
    (row,) = report["summary"]
    # Same RTL measurements as the tune command: the oracle and the baseline come from the cache.
    assert row["oracle_cycles"] == first["strategies"]["oracle"]["cycles"]
    assert row["baseline_cycles"] == first["baseline_cycles"]
    assert row["dlfusion_oracle_fraction"] == pytest.approx(row["oracle_cycles"] / row["dlfusion_cycles"])
    assert row["oracle_speedup"] <= row["ceiling_speedup"]
    assert f"{row['baseline_cycles']:,}" in out and "report:" in out
