"""`dlfusion compile`: fusion plans, float models quantized on the fly, clear errors."""

import json

import numpy as np
from onnx import TensorProto, helper, numpy_helper, save

from dlfusion.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _float_model(path, size=12):
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.3).astype(np.float32), n)
             for n, s in (("w1", (16, 3, 3, 3)), ("b1", (16,)), ("w2", (16, 16, 3, 3)), ("b2", (16,)))]
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             helper.make_node("Add", ["r1", "c2"], ["output"])]
    graph = helper.make_graph(nodes, "float", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                             [1, 3, size, size])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 16, size, size])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    save(model, str(path))


def test_max_fusion_plan_fuses_and_runs(tmp_path, capsys):
    binary = tmp_path / "tiny.dlfb"
    code, out, err = run_cli(capsys, "compile", "tiny_cnn", "--input-size", "16", "--fusion", "max", "-o",
                             str(binary), "--json")
    assert code == 0, err
    summary = json.loads(out)
    plan = json.loads((tmp_path / "tiny.plan.json").read_text())
    assert summary["groups"] == len(plan["groups"]) < summary["layers"]
    assert max(len(g["nodes"]) for g in plan["groups"]) > 1
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32))
    code, out, _ = run_cli(capsys, "run", str(binary), "--input", str(tmp_path / "x.npy"), "--output",
                           str(tmp_path / "fused.npy"), "--json")
    assert code == 0
    plain = tmp_path / "plain.dlfb"
    assert run_cli(capsys, "compile", "tiny_cnn", "--input-size", "16", "-o", str(plain))[0] == 0
    assert run_cli(capsys, "run", str(plain), "--input", str(tmp_path / "x.npy"), "--output",
                   str(tmp_path / "plain.npy"))[0] == 0
    assert np.array_equal(np.load(tmp_path / "fused.npy"), np.load(tmp_path / "plain.npy"))


def test_float_model_needs_calibration_and_is_quantized_with_it(tmp_path, capsys):
    model = tmp_path / "float.onnx"
    _float_model(model)
    out = tmp_path / "m.dlfb"
    code, _, err = run_cli(capsys, "compile", str(model), "-o", str(out))
    assert code == 2 and "is a float model" in err and "--calibration random" in err
    assert not out.exists()
    code, _, err = run_cli(capsys, "compile", str(model), "--calibration", str(tmp_path / "nowhere"), "-o", str(out))
    assert code == 2 and "nowhere" in err and "does not exist" in err and not out.exists()
    code, stdout, err = run_cli(capsys, "compile", str(model), "--calibration", "random", "--fusion", "max",
                                "-o", str(out), "--json")
    assert code == 0, err
    assert json.loads(stdout)["groups"] == 1 and out.exists()


def test_group_that_does_not_fit_is_a_clear_error(tmp_path, capsys):
    hw = tmp_path / "tiny.toml"
    hw.write_text("act_lines = 512\n")
    plan = {"format": "dlfusion-plan/1", "model": "tiny_cnn", "hw": "",
            "groups": [{"nodes": None, "cores": 1, "split": "rows"}]}
    assert run_cli(capsys, "compile", "tiny_cnn", "--input-size", "16", "-o", str(tmp_path / "a.dlfb"))[0] == 0
    names = [n for g in json.loads((tmp_path / "a.plan.json").read_text())["groups"] for n in g["nodes"]]
    plan["groups"][0]["nodes"] = names
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    out = tmp_path / "b.dlfb"
    code, _, err = run_cli(capsys, "compile", "tiny_cnn", "--input-size", "16", "--hw", str(hw), "--plan",
                           str(tmp_path / "plan.json"), "-o", str(out))
    assert code != 0 and "group 0 (" in err and "does not fit on chip" in err and "short by" in err
    assert not out.exists()
