"""N:M pruning of a float ONNX model's convolutions and fully connected layers, and the check that its
quantized twin still follows the pattern (``dlfusion prune``, zoo names such as ``resnet50:2of4``).

Eligible layers: ``Conv`` with ``group = 1`` and ``Gemm`` / ``MatMul`` with a constant weight, whose
input-channel count is a multiple of M and fills at least one sparse window of input blocks on the
PE array (``M/N`` blocks of ``lanes`` channels); their float weights are pruned by magnitude along
input channels (:func:`~..prune.prune_weight`). The others (a first convolution with 3 input
channels, depthwise and grouped convolutions, layers too narrow for a window) stay dense and are
listed with why. onnxruntime's per-channel symmetric int8 quantization maps zero to zero, so the
quantized weights keep the pattern; :func:`check_quantized` verifies it on the quantized model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from ...hw.isa import Sparsity
from ...hw.sparse import satisfies
from ..errors import CompileError
from ..prune import prune_weight

__all__ = ["PruneReport", "prune_model", "check_quantized"]


@dataclass
class PruneReport:
    """What :func:`prune_model` did: per pruned layer its weight initializer, the layers left dense and why."""
    pattern: str
    pruned: dict[str, tuple[str, int]] = field(default_factory=dict)  # node name -> (weight initializer, its C axis)
    dense: dict[str, str] = field(default_factory=dict)       # node name -> why it stays dense
    weights_before: int = 0                                   # nonzero weights of the pruned layers
    weights_after: int = 0

    def to_json(self) -> dict:
        return {"pattern": self.pattern, "pruned_layers": sorted(self.pruned), "dense_layers": self.dense,
                "nonzero_weights_before": self.weights_before, "nonzero_weights_after": self.weights_after}


def _attribute(node, name, default):
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def _weight_of(node, initializers) -> tuple[str, int] | None:
    """The weight initializer of a prunable node and its input-channel axis, or None."""
    if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in initializers:
        return node.input[1], 1
    if node.op_type == "Gemm" and len(node.input) > 1 and node.input[1] in initializers:
        return node.input[1], 1 if _attribute(node, "transB", 0) else 0
    if node.op_type == "MatMul" and node.input[1] in initializers and initializers[node.input[1]].ndim == 2:
        return node.input[1], 0
    return None


def prune_model(proto: onnx.ModelProto, sparsity: Sparsity, lanes: int) -> PruneReport:
    """Prune ``proto``'s eligible float weights in place (see the module docstring)."""
    n, m = sparsity.pattern
    report = PruneReport(sparsity.label)
    initializers = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    users: dict[str, int] = {}
    for node in proto.graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    pruned = {}
    for index, node in enumerate(proto.graph.node):
        if node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        name = node.name or f"{node.op_type}_{index}"
        found = _weight_of(node, initializers)
        if found is None:
            report.dense[name] = "its weight is not a constant"
            continue
        weight_name, axis = found
        weight = initializers[weight_name]
        channels = weight.shape[axis]
        if node.op_type == "Conv" and _attribute(node, "group", 1) != 1:
            report.dense[name] = f"a grouped or depthwise convolution (group {_attribute(node, 'group', 1)})"
        elif channels % m:
            report.dense[name] = f"{channels} input channels are not a multiple of {m}"
        elif -(-channels // lanes) < sparsity.window:
            report.dense[name] = (f"{channels} input channels fill fewer than the {sparsity.window} blocks of "
                                  f"{lanes} of one {sparsity.label} window")
        elif users[weight_name] > 1:
            report.dense[name] = "its weight is shared with another node"
        elif not np.issubdtype(weight.dtype, np.floating):
            report.dense[name] = f"its weight is {weight.dtype}, not float (prune before quantizing)"
        else:
            moved = np.moveaxis(weight, axis, 1) if weight.ndim > 1 else weight
            result = np.moveaxis(prune_weight(moved, sparsity), 1, axis)
            report.weights_before += int(np.count_nonzero(weight))
            report.weights_after += int(np.count_nonzero(result))
            pruned[weight_name] = result
            report.pruned[name] = (weight_name, axis)
    for init in proto.graph.initializer:
        if init.name in pruned:
            init.CopyFrom(numpy_helper.from_array(pruned[init.name].astype(numpy_helper.to_array(init).dtype),
                                                  init.name))
    if not report.pruned:
        raise CompileError(f"no layer of the model can be pruned to {sparsity.label}: "
                           + "; ".join(f"{k}: {v}" for k, v in list(report.dense.items())[:4]))
    return report


def check_quantized(proto: onnx.ModelProto, report: PruneReport) -> dict[str, str]:
    """Per pruned layer whose quantized weight (``<initializer>_quantized``) breaks the pattern, why
    (empty when every pruned layer's int8 weights follow it)."""
    sparsity = Sparsity.from_label(report.pattern)
    initializers = {init.name: init for init in proto.graph.initializer}
    broken = {}
    for layer, (weight_name, axis) in report.pruned.items():
        init = initializers.get(f"{weight_name}_quantized")
        if init is None:
            broken[layer] = f"no quantized weight {weight_name}_quantized in the quantized model"
            continue
        weight = numpy_helper.to_array(init)
        if not satisfies(np.moveaxis(weight, axis, -1), sparsity):
            broken[layer] = f"its int8 weights do not follow {report.pattern}"
    return broken
