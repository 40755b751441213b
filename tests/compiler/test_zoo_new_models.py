"""The zoo models of the newer operators at 32 px (RegNetX-400MF: grouped convs; ShuffleNetV2: channel split,
concat of 58-channel halves, channel shuffle, mean; MnasNet: mean over H, W; EfficientNet-B0: SiLU and
squeeze-and-excitation with sigmoid gates; MobileNetV3: hard-swish and squeeze-and-excitation with hard-sigmoid
gates; yolo_tiny: a detector's C2f blocks, SPPF, PAN neck and three outputs), in both onnxruntime formats (and
int8 activations on ShuffleNetV2 and MobileNetV3-Small): the golden simulator's outputs, as ``dlfusion run
--output`` writes them, equal onnxruntime's on the same file bit for bit, on {no fusion, 1 core}, {max fusion,
all cores} and a random plan."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from dlfusion.cli.run import model_outputs, quantize_input
from dlfusion.compiler.compile import compile_graph
from dlfusion.compiler.frontend import load_onnx, zoo
from dlfusion.compiler.plan import make_plan, random_plan
from dlfusion.hw.config import HwConfig
from dlfusion.sim.golden import GoldenSimulator

HW = HwConfig()
SIZE = 32
MODELS = ("regnet_x_400mf", "shufflenet_v2_x1_0", "mnasnet1_0")


#: int8 activations on the model with the most new ops (the ops themselves run in both activation types in
#: tests/compiler/frontend/test_new_ops.py), to keep the suite's time modest; in QOperator format only (in
#: QDQ format onnxruntime runs the neighbours of its tensors read by two nodes in float32 on x86-64: refused,
#: tests/compiler/frontend/test_qdq_int8.py)
CASES = [(m, f, "uint8") for m in MODELS for f in ("qoperator", "qdq")] + [("shufflenet_v2_x1_0", "qoperator", "int8")]
# lookup tables and channel scales: both formats on EfficientNet-B0, int8 on MobileNetV3-Small
CASES += [("efficientnet_b0", "qoperator", "uint8"), ("efficientnet_b0", "qdq", "uint8"),
          ("mobilenet_v3_small", "qoperator", "int8"), ("mobilenet_v3_small", "qdq", "uint8"),
          ("mobilenet_v3_large", "qoperator", "uint8"),
          # three outputs
          ("yolo_tiny", "qoperator", "uint8"), ("yolo_tiny", "qdq", "uint8")]


@pytest.fixture(scope="module", params=CASES, ids="-".join)
def quantized(request, tmp_path_factory):
    name, fmt, activation_type = request.param
    path = zoo.export_quantized(name, SIZE, tmp_path_factory.mktemp(name) / f"{name}.onnx", quant_format=fmt,
                                activation_type=activation_type)
    model = onnx.load(str(path))
    model.ir_version = min(model.ir_version, 9)
    return name, load_onnx(path), ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_zoo_model_matches_onnxruntime_on_three_plans(quantized):
    name, graph, session = quantized
    quant = graph.input_quant
    x = np.random.default_rng(7).standard_normal(quant["shape"]).astype(np.float32)
    reference = dict(zip([o.name for o in session.get_outputs()], session.run(None, {quant["name"]: x}), strict=True))
    plans = {"none-1core": make_plan(graph, HW, cores=1),
             "max-allcores": make_plan(graph, HW, fusion="max", cores=HW.cores),
             "random": random_plan(graph, HW, len(graph.nodes))}
    assert any(len(group.nodes) > 1 for group in plans["max-allcores"].groups)
    for kind, plan in plans.items():
        binary = compile_graph(graph, HW, plan)
        result = GoldenSimulator(HW).run(binary, {"input": quantize_input(x, quant).reshape(binary.inputs[0].shape)})
        assert result.error is None, str(result.error)
        ours = model_outputs(binary, result.outputs)
        assert ours.keys() == reference.keys()
        for output, value in reference.items():
            assert (ours[output].shape, ours[output].dtype) == (value.shape, value.dtype)
            mismatches = int(np.count_nonzero(ours[output] != value))
            assert mismatches == 0, f"{name} {kind}: {mismatches} of {value.size} outputs differ from onnxruntime"
