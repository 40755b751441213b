"""The dlfusion command line: JSON reports, files, and clear errors on bad input."""

import json

import numpy as np
import pytest

from dlfusion.cli import main
from dlfusion.compiler import layers
from dlfusion.hw.binary import FORMAT_VERSION
from dlfusion.hw.config import HwConfig


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_layer_json_report(capsys):
    code, out, _ = run_cli(capsys, "layer", "conv", "--h", "9", "--w", "7", "--cin", "20", "--cout", "18",
                           "--k", "3", "--stride", "2", "--backend", "golden", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["matches_reference"] is True
    case = layers.build_conv(HwConfig(), h=9, w=7, cin=20, cout=18, k=3, stride=2)
    assert report["macs"] == case.macs == 18 * 5 * 4 * 20 * 9
    assert report["cores"] == 1
    assert report["utilization"] == pytest.approx(report["macs"] / (256 * report["cycles"]))
    assert len(report["output_sha256"]) == 64
    assert set(report["counters"][0]) >= {"instructions", "dma_busy", "pe_busy", "ppu_busy", "dma_stall"}


@pytest.mark.parametrize("kind,extra", [("fc", ["--cin", "100", "--cout", "30"]),
                                        ("dwconv", ["--cin", "20", "--k", "5"]),
                                        ("pool", ["--cin", "20", "--k", "2", "--stride", "2", "--mode", "avg"]),
                                        ("add", ["--cin", "20"])])
def test_other_layer_kinds(capsys, kind, extra):
    code, out, _ = run_cli(capsys, "layer", kind, *extra, "--json")
    assert code == 0 and json.loads(out)["matches_reference"] is True


def test_bad_layer_parameters(capsys):
    code, _, err = run_cli(capsys, "layer", "conv", "--k", "99", "--pad", "0")
    assert code == 2
    assert "kernel must be between 1 and 64, not 99" in err
    assert "Traceback" not in err


def test_run_binary_and_write_output(tmp_path, capsys):
    case = layers.build_dwconv(HwConfig(), h=8, w=8, c=24, k=3, seed=3)
    binary = tmp_path / "dw.dlfb"
    case.binary.write(binary)
    np.save(tmp_path / "x.npy", case.inputs["x"])
    code, out, _ = run_cli(capsys, "run", str(binary), "--backend", "golden", "--input", f"x={tmp_path / 'x.npy'}",
                           "--output", str(tmp_path / "y.npy"), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["cycles"] > 0
    assert "groups" not in report       # a single layer has no fusion groups
    assert report["dram_write_lines"] == case.expected["y"].size // 24 * 2   # 2 blocks of 16 channels per pixel
    assert np.array_equal(np.load(tmp_path / "y.npy"), case.expected["y"])


def test_run_missing_input_is_named(tmp_path, capsys):
    case = layers.build_add(HwConfig(), h=3, w=3, c=4)
    binary = tmp_path / "add.dlfb"
    case.binary.write(binary)
    code, _, err = run_cli(capsys, "run", str(binary))
    assert code == 2
    assert "missing input(s) ['a', 'b']" in err


def test_malformed_binaries_are_rejected(tmp_path, capsys):
    good = layers.build_conv(HwConfig(), h=5, w=5, cin=4, cout=4).binary.to_bytes()
    cases = {
        "missing.dlfb": (None, "does not exist"),
        "garbage.dlfb": (b"hello world", "not a dlfusion binary"),
        "version.dlfb": (good[:4] + (FORMAT_VERSION + 1).to_bytes(4, "little") + good[8:],
                         f"format version {FORMAT_VERSION + 1}"),
        "truncated.dlfb": (good[:-100], "truncated"),
        "header.dlfb": (good[:12] + b"X" + good[13:], "malformed header"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / name
        if data is not None:
            path.write_bytes(data)
        code, _, err = run_cli(capsys, "run", str(path), "--input", "x=unused.npy")
        assert code == 2, name
        assert message in err, (name, err)


def test_binary_for_another_config_is_rejected(tmp_path, capsys):
    case = layers.build_conv(HwConfig(), h=5, w=5, cin=4, cout=4)
    binary = tmp_path / "conv.dlfb"
    case.binary.write(binary)
    other = tmp_path / "other.toml"
    other.write_text("dram_latency = 60\n")
    code, _, err = run_cli(capsys, "run", str(binary), "--hw", str(other), "--input", "x=unused.npy")
    assert code == 2
    assert "dram_latency: binary 40 vs accelerator 60" in err


def test_bad_hw_file(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("pe_rows = 12\n")
    out = tmp_path / "accel.v"
    code, _, err = run_cli(capsys, "verilog", "--hw", str(bad), "-o", str(out))
    assert code == 2
    assert "pe_rows must be one of 4, 8, 16, 32, not 12" in err
    assert not out.exists()
    bad.write_text("cores = 2\nbanana = 3\n")
    code, _, err = run_cli(capsys, "verilog", "--hw", str(bad), "-o", str(out))
    assert code == 2 and "unknown hardware parameter(s) banana" in err and "accepted:" in err
    bad.write_text("cores = [\n")
    code, _, err = run_cli(capsys, "verilog", "--hw", str(bad), "-o", str(out))
    assert code == 2 and "not valid TOML" in err


def test_verilog_is_written(tmp_path, capsys):
    small = tmp_path / "small.toml"
    small.write_text("pe_rows = 4\npe_cols = 4\ndram_bytes_per_cycle = 4\nact_lines = 256\nweight_blocks = 16\n"
                     "acc_entries = 64\nparam_entries = 16\ndram_bytes = 65536\n")
    out = tmp_path / "accel.v"
    code, _, _ = run_cli(capsys, "verilog", "--hw", str(small), "-o", str(out))
    assert code == 0
    text = out.read_text()
    assert "module dlfusion_accel" in text and "mem__rdata" in text


@pytest.mark.parametrize("split", ["rows", "channels"])
def test_layer_split_over_cores(capsys, split):
    code, out, _ = run_cli(capsys, "layer", "conv", "--h", "12", "--w", "12", "--cin", "32", "--cout", "48",
                           "--cores", "3", "--split", split, "--json")
    assert code == 0
    report = json.loads(out)
    assert report["cores"] == 3 and report["layer"]["split"] == split
    assert report["matches_reference"] is True
    assert sum(1 for c in report["counters"] if c["instructions"] > 0) == 3


def test_too_many_cores_is_a_clear_error(capsys):
    code, _, err = run_cli(capsys, "layer", "conv", "--cores", "5")
    assert code == 2 and "cores must be between 1 and the configured 4, not 5" in err


def test_models_lists_the_zoo(capsys):
    code, out, _ = run_cli(capsys, "models", "--json")
    assert code == 0
    names = [m["name"] for m in json.loads(out)["models"]]
    assert names == ["tiny_cnn", "resnet18", "resnet50", "mobilenet_v2", "vgg16", "squeezenet1_1", "regnet_x_400mf",
                     "shufflenet_v2_x1_0", "mnasnet1_0", "efficientnet_b0", "mobilenet_v3_small",
                     "mobilenet_v3_large", "yolo_tiny"]


def test_export_rejects_a_too_small_input(tmp_path, capsys):
    out = tmp_path / "r18.onnx"
    code, _, err = run_cli(capsys, "export", "resnet18", "--input-size", "10", "-o", str(out))
    assert code == 2 and "input_size 10 is below the minimum 32" in err
    assert not out.exists()


def test_compile_zoo_model_and_run_float_input(tmp_path, capsys):
    binary = tmp_path / "tiny.dlfb"
    code, out, _ = run_cli(capsys, "compile", "tiny_cnn", "--input-size", "16", "--cores", "2", "-o", str(binary),
                           "--json")
    assert code == 0
    summary = json.loads(out)
    plan = json.loads((tmp_path / "tiny.plan.json").read_text())
    assert plan["format"] == "dlfusion-plan/1" and len(plan["groups"]) == summary["groups"] == summary["layers"]
    assert all(group["cores"] == 2 for group in plan["groups"])
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32))
    code, out, _ = run_cli(capsys, "run", str(binary), "--input", str(tmp_path / "x.npy"), "--output",
                           str(tmp_path / "y.npy"), "--json")
    assert code == 0
    assert np.load(tmp_path / "y.npy").shape == (1, 10)      # as onnxruntime returns it
    report = json.loads(out)
    groups = report["groups"]
    assert [g["nodes"] for g in groups] == [g["nodes"] for g in plan["groups"]]
    assert all(g["cycles"] > 0 and g["dram_bytes"] > 0 and g["cores"] == 2 for g in groups)
    # the groups tile the run up to the last barrier; END follows (2 cycles in the golden model)
    assert sum(g["cycles"] for g in groups) == groups[-1]["end_cycle"] == report["cycles"] - 2
    code, out, _ = run_cli(capsys, "run", str(binary), "--input", str(tmp_path / "x.npy"))
    lines = out.splitlines()
    assert code == 0 and lines[1].split() == ["group", "nodes", "cores", "split", "cycles", "utilization",
                                              "DRAM", "bytes"]
    assert len(lines) == 2 + len(groups)
    assert lines[2].split()[0] == "0" and groups[0]["nodes"][0][:25] in lines[2]   # long node lists are cut
    # Compiling again with the written plan gives the same binary.
    again = tmp_path / "again.dlfb"
    code, _, _ = run_cli(capsys, "compile", "tiny_cnn", "--input-size", "16",
                         "--plan", str(tmp_path / "tiny.plan.json"), "-o", str(again))
    assert code == 0 and again.read_bytes() == binary.read_bytes()
