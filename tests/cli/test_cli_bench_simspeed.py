"""``dlfusion bench simspeed``: the bare MAC array reference builds, runs and really accumulates (a 1 x 4 x 4
array, built once in the build root and reused), and the report's JSON (the whole-program runs stubbed: each
takes minutes on the RTL)."""

import json

import pytest

import dlfusion.simspeed
from dlfusion.cli import main
from dlfusion.hw.config import HwConfig
from dlfusion.hw.mac_reference import mac_array_verilog

TINY = HwConfig(cores=1, pe_rows=4, pe_cols=4, dram_bytes_per_cycle=4)
PROGRAM_KEYS = {"model", "size", "plan", "cycles", "wall_seconds", "cycles_per_second", "ratio_to_reference"}


@pytest.fixture(scope="module")
def tiny_reference():
    return dlfusion.simspeed.build_reference(TINY)


def test_verilog_has_one_lfsr_per_lane():
    verilog = mac_array_verilog(HwConfig(cores=2, pe_rows=4, pe_cols=4, dram_bytes_per_cycle=4))
    assert "localparam CORES = 2;" in verilog and "reg signed [31:0] acc [0:CORES*ROWS*COLS-1];" in verilog
    assert sum(line.strip().startswith("act_lfsr[") and " = 16'h" in line for line in verilog.splitlines()) == 2 * 4
    assert sum(line.strip().startswith("weight_lfsr[") and " = 16'h" in line for line in verilog.splitlines()) == 2 * 4


def test_accumulators_change_with_the_cycle_count(tiny_reference):
    checksum_500, _ = dlfusion.simspeed.run_reference(tiny_reference, 500)
    checksum_501, _ = dlfusion.simspeed.run_reference(tiny_reference, 501)
    assert checksum_500 != checksum_501
    assert dlfusion.simspeed.run_reference(tiny_reference, 500)[0] == checksum_500     # deterministic


def test_reference_only_json(tiny_reference, tmp_path, capsys):
    hw_path = tmp_path / "tiny.toml"
    hw_path.write_text(TINY.to_toml())
    assert main(["bench", "simspeed", "--hw", str(hw_path), "--reference-only", "--reference-cycles", "1000",
                 "--out", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    reference = report["reference"]
    assert (reference["cores"], reference["pe_rows"], reference["pe_cols"], reference["cycles"]) == (1, 4, 4, 1000)
    assert reference["cycles_per_second"] > 0
    assert reference["executable"] == str(tiny_reference.executable)
    assert report["programs"] == [] and report["build_seconds"] is None
    assert json.loads((tmp_path / "simspeed" / "simspeed.json").read_text()) == report


def test_programs_are_ratios_to_the_reference(monkeypatch, tmp_path, capsys):
    runs = []

    def program_speed(model, size, options, out_dir, hw_path, label):
        runs.append((model, size, options, hw_path))
        return {"model": model, "size": size, "plan": f"{label} (default)", "plan_source": "default",
                "cycles": 1000, "wall_seconds": 0.5, "cycles_per_second": 2000.0, "binary": "x.dlfb"}
    monkeypatch.setattr(dlfusion.simspeed, "program_speed", program_speed)
    monkeypatch.setattr(dlfusion.simspeed, "reference_speed", lambda hw, cycles: {
        "cores": hw.cores, "pe_rows": hw.pe_rows, "pe_cols": hw.pe_cols, "macs": hw.macs_per_cycle * hw.cores,
        "cycles": 10_000, "wall_seconds": 0.01, "cycles_per_second": 1e6, "checksum": "00000000",
        "build_seconds": None, "executable": "mac_bench"})
    monkeypatch.setattr(dlfusion.simspeed, "_accelerator_build_seconds", lambda hw: 99.5)
    assert main(["bench", "simspeed", "--out", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert runs == [("resnet18", 64, ("--cores", "1", "--fusion", "none"), None), ("resnet18", 64, (), None),
                    ("mobilenet_v2", 224, (), None)]
    assert report["reference"]["cycles_per_second"] == 1e6 and report["build_seconds"] == 99.5
    assert [set(row) >= PROGRAM_KEYS for row in report["programs"]] == [True] * 3
    assert [row["ratio_to_reference"] for row in report["programs"]] == [0.002] * 3

    assert main(["bench", "simspeed", "--out", str(tmp_path)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[2] == "| bare MAC array (4 x 16 x 16 int8 MACs) | 10,000 | 0.01 | 1,000,000 | 1 |"
    assert table[3] == "| resnet18 64 px, 1 core, no fusion (default) | 1,000 | 0.50 | 2,000 | 0.0020 |"
    assert "accelerator model build: 99.5 s" in table


def test_reference_cycles_must_be_positive(capsys):
    assert main(["bench", "simspeed", "--reference-only", "--reference-cycles", "0"]) == 2
    assert "--reference-cycles must be at least 1, not 0" in capsys.readouterr().err
