"""One error base: every class of error ends ``dlfusion`` with one line ``dlfusion: error: <message>``
on stderr and the error's exit status (2 bad input, 3 accelerator, 4 mismatch); Ctrl-C exits 130
without a traceback; a failed command leaves no half-written output."""

import json
import os

import numpy as np
import pytest

import dlfusion.cli.verilog
from dlfusion.cli import main
from dlfusion.compiler import layers
from dlfusion.compiler.errors import CompileError
from dlfusion.compiler.ir import IRError
from dlfusion.compiler.tune import TuneError
from dlfusion.compiler.tune.characterize import CharacterizationError, OutputMismatch
from dlfusion.compiler.tune.planrun import MeasurementFailed
from dlfusion.hw.binary import BinaryError
from dlfusion.hw.config import HwConfig, HwConfigError
from dlfusion.hw.errors import AcceleratorFault, DlfusionError, InputError, MismatchError


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(err: str, message: str) -> None:
    assert err.startswith("dlfusion: error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("error, status", [
    (InputError("bad"), 2), (HwConfigError("bad"), 2), (BinaryError("bad"), 2), (CompileError("bad"), 2),
    (IRError("bad"), 2), (TuneError("bad"), 2),
    (AcceleratorFault("bad"), 3), (MeasurementFailed("bad"), 3), (MeasurementFailed("bad", 4), 4),
    (CharacterizationError("bad", ["bad"], 3), 3), (CharacterizationError("bad", ["bad"], 4), 4),
    (MismatchError("bad"), 4), (OutputMismatch("bad"), 4),
])
def test_every_dlfusion_error_gives_its_status(monkeypatch, capsys, tmp_path, error, status):
    assert isinstance(error, DlfusionError)

    def fail(args):
        raise error
    monkeypatch.setattr(dlfusion.cli.verilog, "cmd_verilog", fail)
    code, out, err = run_cli(capsys, "verilog", "-o", str(tmp_path / "a.v"))
    assert code == status == error.exit_status
    assert out == ""
    assert_one_line_error(err, "dlfusion: error: bad")


def test_an_interrupt_exits_130_in_one_line_and_leaves_no_file(monkeypatch, capsys, tmp_path):
    # Interrupted while the output is being written: neither it nor its temporary file remains.
    import dlfusion.hw.top

    def interrupted(src, dst):
        raise KeyboardInterrupt
    monkeypatch.setattr(dlfusion.hw.top, "generate_verilog", lambda hw, **options: "module dlfusion_accel;\n")
    monkeypatch.setattr(os, "replace", interrupted)
    code, _, err = run_cli(capsys, "verilog", "-o", str(tmp_path / "out" / "accel.v"))
    assert code == 130
    assert err == "dlfusion: interrupted\n"
    assert list((tmp_path / "out").iterdir()) == []


def test_a_bad_hw_file(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("pe_rows = 12\n")
    for argv in (["verilog", "-o", str(tmp_path / "a.v")], ["layer", "conv"], ["characterize"],
                 ["compile", "tiny_cnn", "-o", str(tmp_path / "a.dlfb")], ["bench", "foundation"]):
        code, _, err = run_cli(capsys, *argv, "--hw", str(bad))
        assert code == 2, argv
        assert_one_line_error(err, "pe_rows must be one of 4, 8, 16, 32, not 12")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml"]


def test_an_unknown_model(tmp_path, capsys):
    for argv, message in [(["compile", "lenet", "-o", str(tmp_path / "a.dlfb")], "'lenet': give a quantized .onnx "
                           "file or a zoo model (tiny_cnn, "),
                          (["export", "lenet", "-o", str(tmp_path / "a.onnx")], "unknown model 'lenet'; models: "),
                          (["tune", "lenet", "--strategy", "none"], "unknown model 'lenet'; give a zoo model"),
                          (["bench", "zoo", "--models", "lenet", "--out", str(tmp_path / "bench")],
                           "unknown zoo benchmark model(s) 'lenet'; accepted: tiny_cnn, ")]:
        code, _, err = run_cli(capsys, *argv)
        assert code == 2, argv
        assert_one_line_error(err, message)
    assert list(tmp_path.iterdir()) == []


def test_a_bad_plan_file(tmp_path, capsys):
    out = tmp_path / "model.dlfb"
    common = ["compile", "tiny_cnn", "--input-size", "16", "-o", str(out), "--plan"]
    for text, message in [('{"format": 1', "not valid JSON"), ('{"format": "other"}', "not a dlfusion plan"),
                          (None, "does not exist")]:
        plan = tmp_path / "plan.json"
        plan.unlink(missing_ok=True)
        if text is not None:
            plan.write_text(text)
        code, _, err = run_cli(capsys, *common, str(plan), "--quiet")
        assert code == 2
        assert_one_line_error(err, message)
        assert not out.exists()


def test_a_wrong_input_shape(tmp_path, capsys):
    case = layers.build_conv(HwConfig(), h=5, w=5, cin=4, cout=4)
    binary = tmp_path / "conv.dlfb"
    case.binary.write(binary)
    np.save(tmp_path / "x.npy", np.zeros((3, 3, 4), np.int8))
    code, out, err = run_cli(capsys, "run", str(binary), "--input", f"x={tmp_path / 'x.npy'}",
                             "--output", str(tmp_path / "y.npy"))
    assert code == 2 and out == ""
    assert_one_line_error(err, "input 'x' must have shape (4, 5, 5), not (3, 3, 4)")
    assert not (tmp_path / "y.npy").exists()


def test_a_wrong_float_input_shape(tmp_path, capsys):
    binary = tmp_path / "tiny.dlfb"
    assert run_cli(capsys, "compile", "tiny_cnn", "--input-size", "16", "-o", str(binary))[0] == 0
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 7, 7), np.float32))
    code, _, err = run_cli(capsys, "run", str(binary), "--input", str(tmp_path / "x.npy"))
    assert code == 2
    assert_one_line_error(err, "a float array of shape [1, 3, 7, 7]; this model takes [1, 3, 16, 16]")


def test_ir_and_tune_errors(tmp_path, capsys):
    # An unreadable ONNX file: the frontend's IRError, through the tuner (TuneError) and the compiler.
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    code, _, err = run_cli(capsys, "tune", str(broken), "--strategy", "none")
    assert code == 2
    assert_one_line_error(err, "broken.onnx: not a readable ONNX model")
    code, _, err = run_cli(capsys, "compile", str(broken), "-o", str(tmp_path / "b.dlfb"))
    assert code == 2
    assert_one_line_error(err, "broken.onnx: not a readable ONNX model")
    # Tuner input errors that used to be caught command by command.
    code, _, err = run_cli(capsys, "tune", "tiny_cnn", "--strategy", "none", "--executor", "local", "--address", "x")
    assert code == 2
    assert_one_line_error(err, "--address 'x' is for the ray executor")
    code, _, err = run_cli(capsys, "bench", "tune", "--models", "tiny_cnn", "--max-group", "0")
    assert code == 2
    assert_one_line_error(err, "--max-group must be at least 1, not 0")
    code, _, err = run_cli(capsys, "bench", "tune", "--rule-dir", str(tmp_path / "no-rules"),
                           "--report", str(tmp_path / "report"))
    assert code == 2
    assert_one_line_error(err, "no decision rule for HwConfig")
    assert not (tmp_path / "report").exists()


def test_an_accelerator_error_is_status_3_after_the_report(tmp_path, capsys, monkeypatch):
    # A run the accelerator stops: the JSON report on stdout, then the one-line error; no output file.
    import dlfusion.cli.run
    from dlfusion.hw.isa import ErrorCode
    from dlfusion.sim.result import ErrorInfo
    case = layers.build_conv(HwConfig(), h=5, w=5, cin=4, cout=4)
    binary = tmp_path / "conv.dlfb"
    case.binary.write(binary)
    np.save(tmp_path / "x.npy", case.inputs["x"])
    run_backend = dlfusion.cli.run.run_backend

    def stopped(*args, **kwargs):
        result = run_backend(*args, **kwargs)
        result.error, result.outputs = ErrorInfo(ErrorCode.WATCHDOG, 0, 3), {}
        return result
    monkeypatch.setattr(dlfusion.cli.run, "run_backend", stopped)
    code, out, err = run_cli(capsys, "run", str(binary), "--input", str(tmp_path / "x.npy"), "--json",
                             "--output", str(tmp_path / "y.npy"))
    assert code == 3
    assert json.loads(out)["error"] == {"code": "WATCHDOG", "core": 0, "pc": 3}
    assert_one_line_error(err, "the accelerator stopped: WATCHDOG on core 0 at instruction 3")
    assert not (tmp_path / "y.npy").exists()
