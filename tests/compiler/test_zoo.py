"""The model zoo: published layer shapes, float export, onnxruntime QOperator quantization, determinism.

Small input sizes keep the file fast; every model is exported and quantized once per session (fixture
``zoo_artifacts``) and the tests share the files.
"""

import collections
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from dlfusion.compiler.frontend import zoo
from dlfusion.compiler.frontend.quantize import CalibrationError, quantize_model

SIZES = {"tiny_cnn": 32, "resnet18": 64, "resnet50": 64, "mobilenet_v2": 64, "vgg16": 32, "squeezenet1_1": 64,
         "regnet_x_400mf": 32, "shufflenet_v2_x1_0": 32, "mnasnet1_0": 32}
NAMES = list(SIZES)
#: The models made of the QOperator ops of ALLOWED_OPS only (the newer ones keep float islands: Slice,
#: ReduceMean between DequantizeLinear and QuantizeLinear; tests/compiler/test_zoo_new_models.py runs them).
QOPERATOR_NAMES = NAMES[:6]

# (convs, depthwise convs, fully connected layers, parameters incl. BatchNorm) of the published networks
# (torchvision's counts; VGG-16's at 224x224, where its first fc sees the 7x7x512 map)
PUBLISHED = {
    "resnet18": (20, 0, 1, 11_689_512),
    "resnet50": (53, 0, 1, 25_557_032),
    "mobilenet_v2": (52, 17, 1, 3_504_872),
    "vgg16": (13, 0, 3, 138_357_544),
    "squeezenet1_1": (26, 0, 0, 1_235_496),
    "regnet_x_400mf": (71, 0, 1, 5_495_976),
    "shufflenet_v2_x1_0": (56, 19, 1, 2_278_604),
    "mnasnet1_0": (52, 17, 1, 4_383_312),
    "efficientnet_b0": (81, 16, 1, 5_288_548),
    "mobilenet_v3_small": (52, 11, 2, 2_542_856),
    "mobilenet_v3_large": (62, 15, 2, 5_483_032),
    "yolo_tiny": (51, 0, 0, 3_072_911),      # not published: YOLOv8n's widths and depths, a coupled head
}

MS = "com.microsoft"
ALLOWED_OPS = {("", "QuantizeLinear"), ("", "DequantizeLinear"), ("", "QLinearConv"), ("", "QLinearMatMul"),
               (MS, "QGemm"), (MS, "QLinearAdd"), (MS, "QLinearGlobalAveragePool"), (MS, "QLinearAveragePool"),
               ("", "MaxPool"), ("", "Flatten"), ("", "Reshape"), ("", "Concat"), (MS, "QLinearConcat"),
               ("", "Relu"), ("", "Clip")}

# What onnxruntime 1.31 makes of the zoo (QOperator, per-channel, uint8 activations): one QuantizeLinear at
# the input, one DequantizeLinear at the output, every Relu / Clip(0, 6) folded into its producer.
EXPECTED_OPS = {
    "tiny_cnn": {("", "QLinearConv"): 4, (MS, "QLinearAdd"): 1, ("", "MaxPool"): 1,
                 (MS, "QLinearGlobalAveragePool"): 1, ("", "Flatten"): 1, (MS, "QGemm"): 1},
    "resnet18": {("", "QLinearConv"): 20, (MS, "QLinearAdd"): 8, ("", "MaxPool"): 1,
                 (MS, "QLinearGlobalAveragePool"): 1, ("", "Flatten"): 1, (MS, "QGemm"): 1},
    "resnet50": {("", "QLinearConv"): 53, (MS, "QLinearAdd"): 16, ("", "MaxPool"): 1,
                 (MS, "QLinearGlobalAveragePool"): 1, ("", "Flatten"): 1, (MS, "QGemm"): 1},
    "mobilenet_v2": {("", "QLinearConv"): 52, (MS, "QLinearAdd"): 10, (MS, "QLinearGlobalAveragePool"): 1,
                     ("", "Flatten"): 1, (MS, "QGemm"): 1},
    "vgg16": {("", "QLinearConv"): 13, ("", "MaxPool"): 5, ("", "Flatten"): 1, (MS, "QGemm"): 3},
    "squeezenet1_1": {("", "QLinearConv"): 26, ("", "MaxPool"): 3, (MS, "QLinearConcat"): 8,
                      (MS, "QLinearGlobalAveragePool"): 1, ("", "Flatten"): 1},
}
for _ops in EXPECTED_OPS.values():
    _ops.update({("", "QuantizeLinear"): 1, ("", "DequantizeLinear"): 1})


def session(path):
    return ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])


def image(size, seed=123):
    return np.random.default_rng(seed).standard_normal((1, 3, size, size), dtype=np.float32)


@pytest.fixture(scope="module")
def zoo_artifacts(tmp_path_factory):
    """name -> (float ONNX path, quantized ONNX path), made on first use."""
    root = tmp_path_factory.mktemp("zoo")
    made = {}

    def get(name):
        if name not in made:
            fpath = zoo.export_float_onnx(name, SIZES[name], root / f"{name}_float.onnx")
            qpath = quantize_model(fpath, root / f"{name}_int8.onnx")
            made[name] = (fpath, qpath)
        return made[name]

    return get


def test_models_table():
    assert set(zoo.MODELS) == set(SIZES) | set(PUBLISHED)
    for name, spec in zoo.MODELS.items():
        assert spec.name == name and spec.description
        assert spec.default_size == {"tiny_cnn": 32, "yolo_tiny": 128}.get(name, 224)
        assert spec.num_classes == {"tiny_cnn": 10, "yolo_tiny": 80}.get(name, 1000)
        assert spec.min_size <= SIZES.get(name, 32)


@pytest.mark.parametrize("name", NAMES)
def test_min_size_is_accepted_and_below_it_refused(name):
    # min_size is what build_float_model promises to take: the network runs there to its
    # classifier output, and one pixel less is the one-line ZooError.
    spec = zoo.MODELS[name]
    model = zoo.build_float_model(name, spec.min_size)
    with torch.no_grad():
        logits = model(torch.zeros(1, 3, spec.min_size, spec.min_size))
    assert tuple(logits.shape) == (1, spec.num_classes)
    assert torch.isfinite(logits).all()
    with pytest.raises(zoo.ZooError, match=f"input_size {spec.min_size - 1} is below the minimum {spec.min_size}"):
        zoo.build_float_model(name, spec.min_size - 1)


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_layer_shapes(name):
    convs, depthwise, fcs, params = PUBLISHED[name]
    size = 224 if name == "vgg16" else SIZES.get(name, 32)  # the other counts do not depend on the resolution
    model = zoo.build_float_model(name, size)
    assert zoo.count_layers(model) == {"conv": convs, "depthwise": depthwise, "fc": fcs}
    n = zoo.count_params(model)
    assert abs(n - params) <= 0.01 * params, (n, params)
    assert n == params  # in fact exact
    fused = zoo.fuse_batchnorm(model)
    n_bn = sum(m.num_features for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert zoo.count_params(fused) == params - n_bn  # (gamma, beta) per channel become one conv bias
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())


def test_architecture_details():
    r18, r50 = zoo.build_float_model("resnet18", 32), zoo.build_float_model("resnet50", 32)
    assert r18.stem.conv.kernel_size == (7, 7) and r18.stem.conv.stride == (2, 2) and r18.fc.in_features == 512
    assert [len(s) for s in (r50.layer1, r50.layer2, r50.layer3, r50.layer4)] == [3, 4, 6, 3]
    assert r50.layer2[0].conv2.conv.stride == (2, 2) and r50.fc.in_features == 2048  # v1.5: stride on the 3x3
    mb = zoo.build_float_model("mobilenet_v2", 32)
    blocks = [m for m in mb.modules() if isinstance(m, zoo.InvertedResidual)]
    assert len(blocks) == 17 and sum(b.use_residual for b in blocks) == 10
    assert sum(isinstance(m, torch.nn.ReLU6) for m in mb.modules()) == 35
    sq = zoo.build_float_model("squeezenet1_1", 32)
    assert sum(isinstance(m, zoo.Fire) for m in sq.modules()) == 8
    tiny = zoo.build_float_model("tiny_cnn", 32)
    assert zoo.count_layers(tiny) == {"conv": 4, "depthwise": 0, "fc": 1}


def test_vgg_classifier_follows_resolution():
    assert zoo.build_float_model("vgg16", 32).classifier[0].in_features == 512
    assert zoo.build_float_model("vgg16", 64).classifier[0].in_features == 512 * 4


@pytest.mark.parametrize("name", NAMES)
def test_sizes_and_errors(name):
    spec = zoo.MODELS[name]
    model = zoo.build_float_model(name, spec.min_size)
    with torch.no_grad():
        assert model(torch.zeros(1, 3, spec.min_size, spec.min_size)).shape == (1, spec.num_classes)
    with pytest.raises(ValueError, match="minimum"):
        zoo.build_float_model(name, spec.min_size - 1)


def test_unknown_model():
    with pytest.raises(ValueError, match="unknown model"):
        zoo.build_float_model("alexnet", 224)


def test_weights_are_seeded_and_resolution_independent():
    state = torch.get_rng_state()
    a = zoo.build_float_model("resnet18", 32, seed=3).state_dict()
    b = zoo.build_float_model("resnet18", 64, seed=3).state_dict()
    c = zoo.build_float_model("resnet18", 32, seed=4).state_dict()
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is not touched
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["stem.conv.weight"], c["stem.conv.weight"])


def test_weights_do_not_depend_on_the_thread_count():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = zoo.build_float_model("mobilenet_v2", 32).state_dict()
        torch.set_num_threads(max(2, threads))
        b = zoo.build_float_model("mobilenet_v2", 32).state_dict()
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the measured BN statistics are bit-identical


@pytest.mark.parametrize("name", NAMES)
def test_float_onnx_matches_torch(name, zoo_artifacts):
    fpath, _ = zoo_artifacts(name)
    proto = onnx.load(fpath)
    assert proto.ir_version == zoo.IR_VERSION
    assert {o.domain: o.version for o in proto.opset_import}[""] == zoo.OPSET
    (inp,) = proto.graph.input
    assert inp.name == "input"
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, 3, SIZES[name], SIZES[name]]
    model = zoo.build_float_model(name, SIZES[name])  # BN not folded
    ops = zoo.list_ops(proto)
    assert ("", "BatchNormalization") not in ops
    assert ops[("", "Conv")] == zoo.count_layers(model)["conv"]

    x = image(SIZES[name])
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    (got,) = session(fpath).run(None, {"input": x})
    assert got.shape == (1, zoo.MODELS[name].num_classes)
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3 * scale)


@pytest.mark.parametrize("name", QOPERATOR_NAMES)
def test_quantized_model(name, zoo_artifacts):
    fpath, qpath = zoo_artifacts(name)
    proto = onnx.load(qpath)
    onnx.checker.check_model(proto, full_check=True)
    ops = zoo.list_ops(proto)
    print(name, dict(ops))
    assert set(ops) <= ALLOWED_OPS, set(ops) - ALLOWED_OPS
    assert ops == collections.Counter(EXPECTED_OPS[name])
    assert {o.domain for o in proto.opset_import} <= {"", MS}

    init = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type in ("QLinearConv", "QGemm"):  # per-channel symmetric int8 weights, uint8 activations
            w, w_scale, w_zp = (init[n] for n in node.input[3:6])
            assert w.dtype == np.int8 and w_scale.shape == (w.shape[0],) and not w_zp.any()
            assert init[node.input[2]].dtype == np.uint8
            assert init[node.input[7 if node.op_type == "QLinearConv" else 8]].dtype == np.uint8

    x = image(SIZES[name])
    (got,) = session(qpath).run(None, {"input": x})
    assert got.shape == (1, zoo.MODELS[name].num_classes) and got.dtype == np.float32
    (ref,) = session(fpath).run(None, {"input": x})
    corr = np.corrcoef(got.ravel(), ref.ravel())[0, 1]
    print(f"{name}: int8 vs float logits correlation {corr:.4f}")
    assert corr > 0.9


@pytest.mark.parametrize("name", ["tiny_cnn", "squeezenet1_1"])
def test_export_quantized_is_deterministic(name, zoo_artifacts, tmp_path):
    _, qpath = zoo_artifacts(name)
    a = zoo.export_quantized(name, SIZES[name], tmp_path / "a.onnx")
    b = zoo.export_quantized(name, SIZES[name], tmp_path / "b.onnx")
    assert a.read_bytes() == b.read_bytes() == qpath.read_bytes()
    c = zoo.export_quantized(name, SIZES[name], tmp_path / "c.onnx", seed=1)
    assert c.read_bytes() != a.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "b.onnx", "c.onnx"]  # no temp files left


def test_npy_calibration(zoo_artifacts, tmp_path):
    fpath, qpath = zoo_artifacts("tiny_cnn")
    cal = tmp_path / "cal"
    cal.mkdir()
    rng = np.random.default_rng(7)
    np.save(cal / "a.npy", rng.standard_normal((3, 32, 32)).astype(np.float32))  # one sample, no batch axis
    np.save(cal / "b.npy", rng.standard_normal((1, 3, 32, 32)))  # float64 is cast
    np.save(cal / "c.npy", rng.standard_normal((2, 3, 32, 32)).astype(np.float32))  # a batch of two
    (cal / "notes.txt").write_text("ignored")
    out = quantize_model(fpath, tmp_path / "q.onnx", calibration=cal)
    (got,) = session(out).run(None, {"input": image(32)})
    assert got.shape == (1, 10)
    assert out.read_bytes() != qpath.read_bytes()  # other calibration data, other scales
    out2 = quantize_model(fpath, tmp_path / "q2.onnx", calibration=str(cal), num_calibration=1)
    assert out2.read_bytes() != out.read_bytes()


def test_int8_activations(zoo_artifacts, tmp_path):
    fpath, _ = zoo_artifacts("tiny_cnn")
    out = quantize_model(fpath, tmp_path / "q.onnx", activation_type="int8")
    proto = onnx.load(out)
    quant = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear")
    zp = next(t for t in proto.graph.initializer if t.name == quant.input[2])
    assert numpy_helper.to_array(zp).dtype == np.int8
    (got,) = session(out).run(None, {"input": image(32)})
    assert got.shape == (1, 10)
    with pytest.raises(ValueError, match="activation_type"):
        quantize_model(fpath, tmp_path / "bad.onnx", activation_type="int4")


def _bad_calibration(tmp_path, case):
    cal = tmp_path / "cal"
    if case == "missing":
        return cal, "does not exist"
    if case == "file":
        cal.write_bytes(b"")
        return cal, "not a directory"
    cal.mkdir()
    if case == "empty":
        (cal / "x.txt").write_text("no arrays here")
        return cal, "no .npy files"
    if case == "shape":
        np.save(cal / "a.npy", np.zeros((1, 3, 32, 32), np.float32))
        np.save(cal / "b.npy", np.zeros((1, 3, 64, 64), np.float32))
        return cal, r"b\.npy has shape \(1, 3, 64, 64\)"
    if case == "nan":
        np.save(cal / "a.npy", np.full((1, 3, 32, 32), np.nan, np.float32))
        return cal, "NaN"
    if case == "garbage":
        (cal / "a.npy").write_bytes(b"not an array")
        return cal, "not a readable .npy"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing", "file", "empty", "shape", "nan", "garbage"])
def test_bad_calibration_directory(case, zoo_artifacts, tmp_path):
    fpath, _ = zoo_artifacts("tiny_cnn")
    cal, message = _bad_calibration(tmp_path, case)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(CalibrationError, match=message):
        quantize_model(fpath, out_dir / "q.onnx", calibration=cal)
    with pytest.raises(CalibrationError, match=message):
        zoo.export_quantized("tiny_cnn", 32, out_dir / "q.onnx", calibration=cal)
    assert list(out_dir.iterdir()) == []  # nothing written, no temp file left
    (out_dir / "old.onnx").write_bytes(b"previous")
    with pytest.raises(CalibrationError):
        quantize_model(fpath, out_dir / "old.onnx", calibration=cal)
    assert (out_dir / "old.onnx").read_bytes() == b"previous"  # an existing output is left alone


@pytest.mark.parametrize("name", ["efficientnet_b0", "mobilenet_v3_small", "mobilenet_v3_large", "yolo_tiny"])
def test_the_newest_models_run_at_their_min_size_and_refuse_one_pixel_less(name):
    spec = zoo.MODELS[name]
    model = zoo.build_float_model(name, spec.min_size)
    with torch.no_grad():
        out = model(torch.zeros(1, 3, spec.min_size, spec.min_size))
    if name == "yolo_tiny":     # a detector: its three maps at strides 8, 16 and 32
        assert [tuple(t.shape) for t in out] == [(1, 85, 4, 4), (1, 85, 2, 2), (1, 85, 1, 1)]
    else:
        assert tuple(out.shape) == (1, spec.num_classes)
    with pytest.raises(zoo.ZooError, match=f"input_size {spec.min_size - 1} is below the minimum {spec.min_size}"):
        zoo.build_float_model(name, spec.min_size - 1)
