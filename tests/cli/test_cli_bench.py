"""``dlfusion bench foundation|scaling|zoo``: arguments reach the library, its tables reach stdout
(the benchmarks themselves are stubbed: each takes minutes on the RTL; ``bench tune`` runs for real in
tests/tune/test_tune_cli.py)."""

from pathlib import Path

import pytest

import dlfusion.bench
from dlfusion.cli import main
from dlfusion.hw.config import HwConfig

FOUNDATION = {"rtl_cycles": 1000, "ideal_cycles": 900, "utilization": 0.9, "rtl_equals_golden": True,
              "matches_reference": True, "cycles_per_second": None, "golden_estimate_cycles": 990,
              "golden_estimate_error": -0.01}
ROW = {"layer": "fc_1024_1000", "split": "rows", "cores": 2, "cycles": 5000, "speedup": 1.9, "utilization": 0.8,
       "dram_bytes": 2_000_000, "dma_stall": 12}


@pytest.mark.parametrize("matches, status", [(True, 0), (False, 4)])
def test_foundation(monkeypatch, capsys, tmp_path, matches, status):
    calls = []

    def foundation(hw, out_dir):
        calls.append((hw, out_dir))
        return dict(FOUNDATION, matches_reference=matches)
    monkeypatch.setattr(dlfusion.bench, "foundation", foundation)
    assert main(["bench", "foundation", "--out", str(tmp_path)]) == status
    assert calls == [(HwConfig(), Path(tmp_path))]
    out = capsys.readouterr().out
    assert out.startswith(f"RTL cycles 1,000 (ideal 900), utilization 0.900, RTL == golden: True, == numpy: {matches}")


def test_scaling(monkeypatch, capsys, tmp_path):
    calls = []

    def scaling(hw, out_dir, core_counts):
        calls.append(core_counts)
        return {"rows": [ROW]}
    monkeypatch.setattr(dlfusion.bench, "scaling", scaling)
    assert main(["bench", "scaling", "--max-cores", "16", "--out", str(tmp_path)]) == 0
    assert calls == [(1, 2, 4, 8, 16)]
    assert capsys.readouterr().out.splitlines()[-1] == "| fc_1024_1000 | rows | 2 | 5,000 | 1.90 | 0.800 | 2.00 | 12 |"


def test_zoo_options(monkeypatch, capsys, tmp_path):
    calls = []

    def zoo_bench(hw, out_dir, models, executor, progress):
        calls.append((models, type(executor).__name__, progress))
        return {"rows": []}
    monkeypatch.setattr(dlfusion.bench, "zoo_bench", zoo_bench)
    assert main(["bench", "zoo", "--models", "tiny_cnn", "--workers", "1", "--out", str(tmp_path), "-q"]) == 0
    assert calls == [(["tiny_cnn"], "LocalExecutor", False)]
    assert capsys.readouterr().out.startswith("| model | input | plan |")


def test_a_benchmark_is_required(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench"])
    assert exit_info.value.code == 2
    assert "foundation" in capsys.readouterr().err
