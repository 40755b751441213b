"""`dlfusion export --format qoperator|qdq` of the new zoo models, then `compile` and `run --output`: the
output file equals onnxruntime's output on the exported file (name, shape, dtype and values)."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from dlfusion.cli import main
from dlfusion.compiler.frontend.onnx import model_format


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("name, fmt", [("regnet_x_400mf", "qoperator"), ("shufflenet_v2_x1_0", "qdq"),
                                       ("mnasnet1_0", "qdq")])
def test_export_compile_and_run_output_equal_onnxruntime(tmp_path, capsys, name, fmt):
    model = tmp_path / f"{name}.onnx"
    code, _, err = run_cli(capsys, "export", name, "--input-size", "32", "--format", fmt, "-o", str(model))
    assert code == 0, err
    assert model_format(onnx.load(str(model)).graph) == {"qoperator": "QOperator", "qdq": "QDQ"}[fmt]
    binary = tmp_path / f"{name}.dlfb"
    code, _, err = run_cli(capsys, "compile", str(model), "--cores", "4", "--fusion", "max", "-o", str(binary),
                           "--json")
    assert code == 0, err
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code, out, err = run_cli(capsys, "run", str(binary), "--input", str(tmp_path / "x.npy"), "--output",
                             str(tmp_path / "y.npy"), "--json")
    assert code == 0, err
    json.loads(out)
    proto = onnx.load(str(model))
    proto.ir_version = min(proto.ir_version, 9)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {"input": x})
    got = np.load(tmp_path / "y.npy")
    assert (got.shape, got.dtype) == (expected.shape, expected.dtype) == ((1, 1000), np.float32)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("fmt, container", [("qoperator", "dir"), ("qdq", "npz")])
def test_a_detector_writes_each_of_its_outputs_as_onnxruntime_returns_them(tmp_path, capsys, fmt, container):
    """yolo_tiny has three outputs (stride 8, 16, 32 maps): `run --output DIR` writes one NAME.npy per output,
    `--output FILE.npz` one archive keyed by the output names; each equals onnxruntime's output."""
    model = tmp_path / "yolo.onnx"
    code, _, err = run_cli(capsys, "export", "yolo_tiny", "--input-size", "32", "--format", fmt, "-o", str(model))
    assert code == 0, err
    binary = tmp_path / "yolo.dlfb"
    code, _, err = run_cli(capsys, "compile", str(model), "-o", str(binary))
    assert code == 0, err
    x = np.random.default_rng(2).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    target = tmp_path / ("out" if container == "dir" else "out.npz")
    code, _, err = run_cli(capsys, "run", str(binary), "--input", str(tmp_path / "x.npy"), "--output", str(target))
    assert code == 0, err
    proto = onnx.load(str(model))
    proto.ir_version = min(proto.ir_version, 9)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert names == ["output", "output1", "output2"]
    expected = dict(zip(names, session.run(None, {"input": x}), strict=True))
    got = {name: np.load(target / f"{name}.npy") for name in names} if container == "dir" else dict(np.load(target))
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert (got[name].shape, got[name].dtype) == (value.shape, np.float32)
        np.testing.assert_array_equal(got[name], value)
    assert [expected[name].shape[2] for name in names] == [4, 2, 1]
