"""Characterization on the RTL: the small grid on a 4-core 4x4-PE model (the one the multicore RTL
tests build), its CSV, plots, fitted rule, accuracy figures, cache reuse and bad input."""

import csv
import dataclasses
import json

import numpy as np
import pytest

from dlfusion.cli import main
from dlfusion.compiler.tune import TuneError
from dlfusion.compiler.tune.cache import MeasurementCache
from dlfusion.compiler.tune.characterize import (
    CSV_COLUMNS,
    GRIDS,
    CharacterizationError,
    Grid,
    LayerSpec,
    OutputMismatch,
    characterize,
    read_samples,
    run_layer,
)
from dlfusion.compiler.tune.executor import LocalExecutor
from dlfusion.compiler.tune.rule import load_rule, rule_path
from dlfusion.hw.config import HwConfig

pytestmark = pytest.mark.rtl

# tests/sim/test_rtl_multicore.py's configuration: its Verilator model is shared through build/rtl.
QUAD = HwConfig(cores=4, pe_rows=4, pe_cols=4, act_lines=2048, weight_blocks=1024, acc_entries=256,
                param_entries=64, dram_bytes=1 << 20, dram_bytes_per_cycle=4, dram_latency=12,
                watchdog_cycles=4000)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("characterize")
    paths = {"out": root / "out", "cache": root / "cache", "rules": root / "rules"}
    with LocalExecutor(workers=2) as executor:
        summary = characterize(QUAD, grid="small", out_dir=paths["out"], executor=executor,
                               cache=MeasurementCache(paths["cache"]), rule_dir=paths["rules"])
    return summary, paths


def _rows(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_small_grid_dataset(study):
    summary, paths = study
    specs = GRIDS["small"].candidates(QUAD)
    core_counts = GRIDS["small"].core_counts(QUAD)
    assert core_counts == [1, 2, 4]
    assert summary["layers"] == len(specs) and summary["skipped"] == []
    # One run per layer and core count and split, except one core: one program for both splits.
    assert summary["runs"] == len(specs) * (1 + 2 * (len(core_counts) - 1))
    assert summary["measured"] + summary["cached"] == summary["runs"]
    rows = _rows(paths["out"] / "characterization.csv")
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == summary["rows"] == len(specs) * len(core_counts) * 2
    keys = {(r["layer"], int(r["cores"]), r["split"]) for r in rows}
    assert keys == {(s.name, c, split) for s in specs for c in core_counts for split in ("rows", "channels")}
    assert {r["kind"] for r in rows} == {"conv", "depthwise", "fc"} and {r["k"] for r in rows} == {"1", "3"}
    macs = sorted({int(r["macs"]) for r in rows})
    assert macs[-1] / macs[0] > 1000                          # a wide range of operation counts
    assert len({int(r["cout"]) for r in rows}) >= 3           # and of channel sizes
    for r in rows:
        assert int(r["macs"]) == LayerSpec(r["kind"], int(r["k"]), int(r["cin"]), int(r["cout"]), int(r["h"]),
                                           int(r["w"]), int(r["stride"])).macs
        assert int(r["cycles"]) > 0 and 1 <= int(r["cores_used"]) <= int(r["cores"])
        assert float(r["utilization"]) == pytest.approx(
            int(r["macs"]) / (QUAD.macs_per_cycle * int(r["cores_used"]) * int(r["cycles"])), rel=1e-3)
    by_layer = {}
    for r in rows:
        by_layer.setdefault(r["layer"], []).append(r)
    for layer_rows in by_layer.values():
        one_core = {int(r["cycles"]) for r in layer_rows if r["cores"] == "1"}
        assert len(one_core) == 1                              # both splits of one core: the same run
        best = min(int(r["cycles"]) for r in layer_rows)
        assert {r["best"] for r in layer_rows if int(r["cycles"]) == best} == {"1"}
    # More cores must win somewhere and lose somewhere: otherwise there is nothing to learn.
    assert any(r["best"] == "1" and int(r["cores"]) > 1 for r in rows)
    assert any(r["best"] == "1" and r["cores"] == "1" and
               all(int(o["cycles"]) > int(r["cycles"]) for o in by_layer[r["layer"]] if int(o["cores_used"]) > 1)
               for r in rows)
    for plot in summary["plots"]:
        with open(plot, "rb") as file:
            assert file.read(8) == b"\x89PNG\r\n\x1a\n"


def test_rule_accuracy_is_what_it_reports(study):
    summary, paths = study
    rule = load_rule(QUAD, paths["rules"])
    assert rule_path(QUAD, paths["out"]).read_text() == rule_path(QUAD, paths["rules"]).read_text()
    assert rule.metadata["grid"] == "small" and rule.metadata["core_counts"] == [1, 2, 4]
    samples = read_samples(paths["out"] / "characterization.csv")
    assert len(samples) == summary["layers"]
    chosen = [s.cycles[rule.choose(s.features)] for s in samples]
    best = [min(s.cycles.values()) for s in samples]
    optimal = np.mean([c == b for c, b in zip(chosen, best, strict=True)])
    regret = np.mean([c / b - 1 for c, b in zip(chosen, best, strict=True)])
    assert summary["accuracy"]["all"]["optimal_fraction"] == pytest.approx(optimal)
    assert summary["accuracy"]["all"]["mean_regret"] == pytest.approx(regret)
    assert rule.accuracy == summary["accuracy"]
    assert optimal >= 0.8                      # it picks the measured best on most of its data
    assert summary["accuracy"]["all"]["mean_regret"] < summary["accuracy"]["all"]["fixed_mean_regret"]
    for kind in ("conv1x1", "conv", "depthwise", "fc"):
        assert summary["accuracy"][kind]["layers"] > 0


def test_a_restarted_run_reuses_the_cache(study, tmp_path):
    summary, paths = study
    cache = MeasurementCache(paths["cache"])
    entries = sorted(paths["cache"].glob("*/*.json"))
    assert len(entries) == summary["runs"]
    for entry in entries[:3]:                  # as if interrupted before these three finished
        entry.unlink()
    with LocalExecutor(workers=2) as executor:
        again = characterize(QUAD, grid="small", out_dir=tmp_path / "out", executor=executor, cache=cache,
                             rule_dir=tmp_path / "rules")
    assert (again["measured"], again["cached"]) == (3, summary["runs"] - 3)
    # The RTL is deterministic: the same dataset and the same rule.
    assert (tmp_path / "out" / "characterization.csv").read_bytes() == \
        (paths["out"] / "characterization.csv").read_bytes()
    assert again["accuracy"] == summary["accuracy"]
    # A cached result whose output no longer matches the reference fails the study (exit 4).
    data = json.loads(entries[5].read_text())
    data["result"]["output_sha256"]["y"] = "0" * 64
    entries[5].write_text(json.dumps(data))
    with pytest.raises(CharacterizationError, match="OutputMismatch") as failure:
        characterize(QUAD, grid="small", out_dir=tmp_path / "bad", executor=LocalExecutor(1), cache=cache,
                     rule_dir=tmp_path / "rules")
    assert failure.value.exit_status == 4
    entries[5].unlink()


def test_cli_json_from_the_cache(study, tmp_path, capsys):
    summary, paths = study
    toml = tmp_path / "quad.toml"
    toml.write_text(QUAD.to_toml())
    status = main(["characterize", "--hw", str(toml), "--out", str(tmp_path / "out"), "--cache",
                   str(paths["cache"]), "--rule-dir", str(tmp_path / "rules"), "--workers", "1", "--json"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert captured.err == ""                   # --json: no progress output
    payload = json.loads(captured.out)
    assert payload["hw_hash"] == QUAD.hash and payload["runs"] == summary["runs"]
    assert payload["cached"] >= summary["runs"] - 1
    assert payload["rule"] == str(rule_path(QUAD, tmp_path / "rules"))


def test_the_rtl_job_checks_outputs():
    case = LayerSpec("conv", 3, 4, 4, 4, 4).build(QUAD, 2, "channels")
    task = {"hw": QUAD.to_dict(), "binary": case.binary.to_bytes(), "inputs": case.inputs,
            "expected": case.expected, "static": {"macs": case.macs}}
    result = run_layer(task)
    assert result["cycles"] > 0 and result["macs"] == case.macs and len(result["counters"]) == QUAD.cores
    wrong = dict(task, expected={"y": case.expected["y"] ^ 1})
    with pytest.raises(OutputMismatch, match=r"output 'y' differs from the numpy reference in 64 of 64 elements"):
        run_layer(wrong)


def test_bad_input(tmp_path, capsys):
    with pytest.raises(TuneError, match=r"unknown grid 'huge'; accepted: small, full"):
        characterize(QUAD, grid="huge", out_dir=tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["characterize", "--grid", "huge"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'huge'" in capsys.readouterr().err
    assert main(["characterize", "--hw", str(tmp_path / "missing.toml")]) == 2
    assert "missing.toml' does not exist" in capsys.readouterr().err
    assert main(["characterize", "--executor", "local", "--address", "head:6379", "--out", str(tmp_path)]) == 2
    assert "is for the ray executor" in capsys.readouterr().err
    # A grid none of whose layers fit the configuration is an error, not an empty study.
    tiny = dataclasses.replace(QUAD, dram_bytes=4096)
    huge = Grid("huge", spatial=(16,), channels=(16,), fc_in=(), fc_out=(), max_cycles=10 ** 9)
    with pytest.raises(TuneError, match="no layer of the 'huge' grid fits"):
        characterize(tiny, grid=huge, out_dir=tmp_path)
