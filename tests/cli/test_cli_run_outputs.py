"""``dlfusion run`` as a user of onnxruntime expects it: the model's float input in, the model's outputs
out (name, dtype, shape and values as onnxruntime returns them), ``--raw`` for the accelerator's
tensors, ``.npy``/``.npz``/directory outputs, one-line errors on a wrong input; and ``make sim``."""

import hashlib
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from onnx import TensorProto, helper

from dlfusion.cli import main
from dlfusion.cli.options import UsageError
from dlfusion.cli.run import output_files, quantize_input
from dlfusion.compiler.frontend import zoo
from dlfusion.hw.binary import Binary

ROOT = Path(__file__).resolve().parents[2]
SIZE = 32


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(err: str, message: str) -> None:
    assert err.startswith("dlfusion: error: ") and err.count("\n") == 1, err
    assert message in err, err


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """tiny_cnn at 32 px: the ONNX file, its binary (max fusion, all cores), an input and onnxruntime's outputs."""
    root = tmp_path_factory.mktemp("tiny")
    model = zoo.export_quantized("tiny_cnn", SIZE, root / "tiny.onnx")
    binary = root / "tiny.dlfb"
    assert main(["compile", str(model), "--fusion", "max", "-o", str(binary), "--quiet"]) == 0
    x = np.random.default_rng(7).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32) * 2
    np.save(root / "x.npy", x)
    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    expected = dict(zip([o.name for o in session.get_outputs()],
                        session.run(None, {session.get_inputs()[0].name: x}), strict=True))
    return {"root": root, "model": model, "binary": binary, "x": root / "x.npy", "expected": expected,
            "input_name": session.get_inputs()[0].name}


def test_output_is_what_onnxruntime_returns(tiny, tmp_path, capsys):
    y = tmp_path / "y.npy"
    code, out, err = run_cli(capsys, "run", str(tiny["binary"]), "--input", str(tiny["x"]), "--output", str(y),
                             "--json")
    assert code == 0, err
    (name, expected), = tiny["expected"].items()
    got = np.load(y)
    assert got.dtype == expected.dtype == np.float32
    assert got.shape == expected.shape == (1, 10)
    assert np.array_equal(got, expected)
    written, = json.loads(out)["written"]
    assert written == {"name": name, "dtype": "float32", "shape": [1, 10], "file": str(y),
                       "sha256": hashlib.sha256(expected.tobytes()).hexdigest()}
    # The model input can be named.
    code, _, err = run_cli(capsys, "run", str(tiny["binary"]), "--input", f"{tiny['input_name']}={tiny['x']}",
                           "--output", str(tmp_path / "named.npy"))
    assert code == 0, err
    assert np.array_equal(np.load(tmp_path / "named.npy"), expected)


def test_raw_takes_and_gives_the_accelerator_tensors(tiny, tmp_path, capsys):
    binary = Binary.read(tiny["binary"])
    quant, dequant = binary.metadata["input_quant"], binary.metadata["output_dequant"]
    raw_x = quantize_input(np.load(tiny["x"]), quant).reshape(binary.inputs[0].shape)
    np.save(tmp_path / "raw_x.npy", raw_x)
    code, out, err = run_cli(capsys, "run", str(tiny["binary"]), "--raw", "--input", str(tmp_path / "raw_x.npy"),
                             "--output", str(tmp_path / "raw_y.npy"), "--json")
    assert code == 0, err
    raw_y = np.load(tmp_path / "raw_y.npy")
    assert raw_y.dtype == np.uint8 and raw_y.shape == (10, 1, 1)
    assert json.loads(out)["written"][0]["name"] == binary.outputs[0].name
    (expected,) = tiny["expected"].values()
    dequantized = (raw_y.astype(np.int32) - dequant["zero_point"]).astype(np.float32) * np.float32(dequant["scale"])
    assert np.array_equal(dequantized.reshape(1, 10), expected)


def test_npz_and_directory_outputs(tiny, tmp_path, capsys):
    (name, expected), = tiny["expected"].items()
    archive = tmp_path / "y.npz"
    code, _, err = run_cli(capsys, "run", str(tiny["binary"]), "--input", str(tiny["x"]), "--output", str(archive))
    assert code == 0, err
    with np.load(archive) as data:
        assert list(data) == [name] and np.array_equal(data[name], expected)
    directory = tmp_path / "outputs"
    code, out, err = run_cli(capsys, "run", str(tiny["binary"]), "--input", str(tiny["x"]), "--output",
                             str(directory))
    assert code == 0, err
    assert [p.name for p in directory.iterdir()] == [f"{name}.npy"]
    assert np.array_equal(np.load(directory / f"{name}.npy"), expected)
    assert f"output {name!r}: float32 (1, 10) -> {directory / name}.npy" in out


def test_output_paths_for_several_outputs(tmp_path):
    with pytest.raises(UsageError, match=r"this binary has 2 outputs \['a', 'b'\]; give a directory"):
        output_files(tmp_path / "y.npy", ["a", "b"])
    files = output_files(tmp_path / "out", ["boxes/0", "boxes:0", "..scores", "boxes_0"])
    assert [p.name for p in files.values()] == ["boxes_0.npy", "boxes_0_2.npy", "scores.npy", "boxes_0_3.npy"]
    assert output_files(tmp_path / "y.npz", ["a", "b"]) == tmp_path / "y.npz"
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="is a file; give FILE.npy"):
        output_files(tmp_path / "file", ["a"])


@pytest.mark.parametrize("array, raw, message", [
    (np.zeros((1, 3, 16, 16), np.float32), False,
     "a float array of shape [1, 3, 16, 16]; this model takes [1, 3, 32, 32] (float32, its ONNX input"),
    (np.zeros((1, 3, 32, 32), np.float64), False,
     "a float64 array of shape [1, 3, 32, 32]; this model takes float32 of shape [1, 3, 32, 32] (its ONNX input "
     "'input'), or with --raw the accelerator's uint8 tensor of shape (3, 32, 32)"),
    (np.zeros((3, 32, 32), np.uint8), False, "a uint8 array of shape [3, 32, 32]; this model takes float32"),
    (np.zeros((1, 3, 32, 32), np.float32), True,
     "input 'input' must have shape (3, 32, 32), not (1, 3, 32, 32) (the accelerator's quantized tensor, uint8)"),
    (np.zeros((3, 32, 32), np.float32), True,
     "input 'input' must have dtype uint8, not float32 (the accelerator's quantized tensor of shape (3, 32, 32))"),
    (np.full((1, 3, 32, 32), np.nan, np.float32), False, "the float input contains NaN"),
])
def test_a_wrong_input_is_a_one_line_error(tiny, tmp_path, capsys, array, raw, message):
    np.save(tmp_path / "bad.npy", array)
    code, out, err = run_cli(capsys, "run", str(tiny["binary"]), *(["--raw"] if raw else []), "--input",
                             str(tmp_path / "bad.npy"), "--output", str(tmp_path / "y.npy"))
    assert code == 2 and out == ""
    assert_one_line_error(err, message)
    assert not (tmp_path / "y.npy").exists()


def test_missing_and_unknown_inputs(tiny, tmp_path, capsys):
    code, _, err = run_cli(capsys, "run", str(tiny["binary"]))
    assert code == 2
    assert_one_line_error(err, "missing input(s) ['input']; pass --input NAME=FILE.npy")
    code, _, err = run_cli(capsys, "run", str(tiny["binary"]), "--input", f"image={tiny['x']}")
    assert code == 2
    assert_one_line_error(err, "no input 'image'; this binary takes ['input']")


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_quantization_is_onnxruntimes(dtype):
    scale, zero = np.float32(0.05), dtype(3 if dtype == np.uint8 else -3)
    halves = (np.arange(-300, 300, dtype=np.float32) + np.float32(0.5)) * scale
    x = np.concatenate([halves, np.float32([0, -0.0, 1e9, -1e9, np.inf, -np.inf, 0.025, -0.025, 0.075])])
    x = x.reshape(1, 1, 1, -1)
    element = TensorProto.UINT8 if dtype == np.uint8 else TensorProto.INT8
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["y"])], "q",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", element, list(x.shape))],
        [helper.make_tensor("scale", TensorProto.FLOAT, [], [float(scale)]),
         helper.make_tensor("zero", element, [], [int(zero)])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected, = session.run(None, {"x": x})
    quant = {"scale": float(scale), "zero_point": int(zero), "dtype": np.dtype(dtype).name}
    got = quantize_input(x, quant)
    assert got.dtype == expected.dtype and np.array_equal(got, expected)


def _make(*arguments: str) -> subprocess.CompletedProcess:
    # A stamp newer than pyproject.toml: the target's install step is up to date.
    stamp = Path(os.environ.get("TMPDIR", "/tmp")) / f"dlfusion-test-stamp-{os.getpid()}"
    stamp.touch()
    try:
        return subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "sim", f"STAMP={stamp}",
                               *arguments], capture_output=True, text=True, timeout=120)
    finally:
        stamp.unlink()


def test_make_sim_usage_and_missing_input(tiny):
    result = _make()
    assert result.returncode == 2
    assert "usage: make sim BIN=model.dlfb [INPUT=x.npy] [OUTPUT=y.npy] [HW=config.toml] [WAVES=1]" in result.stderr
    # A binary that takes an input, without INPUT: the command line's one-line error, before any RTL build.
    result = _make(f"BIN={tiny['binary']}")
    assert result.returncode != 0
    assert "dlfusion: error: missing input(s) ['input']" in result.stderr


def test_make_sim_passes_input_output_and_waves():
    result = _make("-n", "BIN=m.dlfb", "INPUT=a=a.npy b=b.npy", "OUTPUT=y.npz", "WAVES=1")
    assert result.returncode == 0, result.stderr
    command = " ".join(result.stdout.replace("\\\n", " ").split())
    assert "dlfusion run m.dlfb --backend rtl --input a=a.npy --input b=b.npy --output y.npz --waves --json" in command
