"""Static int8 quantization of float ONNX models with onnxruntime.

:func:`quantize_model` runs onnxruntime's ``quant_pre_process`` (shape inference + basic graph
optimization) and ``quantize_static`` in QOperator format (QLinearConv / QGemm / QLinearAdd /
QLinearGlobalAveragePool / QLinearConcat ...) or, with ``quant_format="qdq"``, in QDQ format
(QuantizeLinear/DequantizeLinear around the float ops), with per-channel symmetric int8 weights, asymmetric uint8
(or int8) activations, MinMax calibration on seeded random images or on ``.npy`` files.  Relu and Clip
(ReLU6) that follow a quantized op are folded into its output range by onnxruntime.

This module needs only onnx and onnxruntime (no torch).
"""

from __future__ import annotations

import collections
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx

from ...hw.errors import InputError

__all__ = ["quantized_op", "CalibrationError", "RandomCalibrationReader", "NpyCalibrationReader", "calibration_reader",
           "quantize_model", "list_ops", "atomic_write_bytes", "ACTIVATION_TYPES", "QUANT_FORMATS", "EXTRA_OPTIONS"]

ACTIVATION_TYPES = ("uint8", "int8")
QUANT_FORMATS = ("qoperator", "qdq")
"""onnxruntime's two formats: quantized operators (QLinearConv ...) or QuantizeLinear/DequantizeLinear pairs
around the float operators."""
EXTRA_OPTIONS = {
    "ActivationSymmetric": False,  # asymmetric activations: Relu/Clip fold into the producer's output range
    "WeightSymmetric": True,  # int8 weights with zero point 0, one scale per output channel
}
# Not "DedicatedQDQPair" (one Q/DQ pair per reader): onnxruntime's common subexpression elimination merges
# the identical pairs back before its QDQ rewrites, so a tensor read by several nodes stays a shared int8
# tensor and the ops next to it still run in float (README, known gaps; qdq.ort_float_ops).


class CalibrationError(InputError):
    """The calibration data cannot be used (missing directory, no .npy files, wrong shape, ...)."""



def quantized_op(op_types) -> str | None:
    """The first quantized operator among ``op_types`` (QLinear*, QGemm, QuantizeLinear), None for a float model."""
    return next((op for op in op_types if op.startswith("QLinear") or op in ("QGemm", "QuantizeLinear")), None)

def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and ``os.replace``:
    readers see the old file or the complete new one, never a partial write."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def list_ops(model: str | os.PathLike | onnx.ModelProto) -> collections.Counter:
    """Counter of ``(domain, op_type)`` over the main graph's nodes (default domain spelled ``""``)."""
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(os.fspath(model), load_external_data=False)
    return collections.Counter(("" if n.domain == "ai.onnx" else n.domain, n.op_type) for n in proto.graph.node)


def _input_spec(proto: onnx.ModelProto) -> tuple[str, tuple[int, ...]]:
    """Name and static shape of the model's single float input."""
    init_names = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in init_names]
    if len(inputs) != 1:
        raise CalibrationError(f"expected a model with one input, got {[i.name for i in inputs]}")
    inp = inputs[0]
    ttype = inp.type.tensor_type
    if ttype.elem_type != onnx.TensorProto.FLOAT:
        raise CalibrationError(f"input {inp.name!r} must be float32")
    dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in ttype.shape.dim)
    if any(d <= 0 for d in dims):
        raise CalibrationError(f"input {inp.name!r} must have a static shape, got {dims}")
    return inp.name, dims


class _Reader:
    """onnxruntime ``CalibrationDataReader`` protocol over a list of preloaded samples."""

    def __init__(self, input_name: str, samples: list[np.ndarray]):
        self.input_name = input_name
        self.samples = samples
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self.samples):
            return None
        self._next += 1
        return {self.input_name: self.samples[self._next - 1]}

    def rewind(self) -> None:
        self._next = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self):
        self.rewind()
        while (item := self.get_next()) is not None:
            yield item


class RandomCalibrationReader(_Reader):
    """``count`` seeded N(0, 1) float32 images of ``shape`` (ImageNet-normalized statistics)."""

    def __init__(self, input_name: str, shape: tuple[int, ...], count: int = 8, seed: int = 0):
        rng = np.random.default_rng(seed)
        super().__init__(input_name, [rng.standard_normal(shape, dtype=np.float32) for _ in range(count)])


class NpyCalibrationReader(_Reader):
    """Samples from the ``*.npy`` files of ``directory`` in name order, at most ``count``.

    A file holds one sample of shape ``shape`` (batch 1) or ``shape[1:]``, or a batch ``(N,) + shape[1:]``.
    Everything is loaded and checked up front; any problem raises :class:`CalibrationError` naming the file.
    """

    def __init__(self, input_name: str, shape: tuple[int, ...], directory: str | os.PathLike, count: int = 8):
        directory = Path(directory)
        if not directory.exists():
            raise CalibrationError(f"calibration directory {directory} does not exist")
        if not directory.is_dir():
            raise CalibrationError(f"calibration path {directory} is not a directory")
        files = sorted(p for p in directory.iterdir() if p.suffix == ".npy" and p.is_file())
        if not files:
            raise CalibrationError(f"calibration directory {directory} contains no .npy files")
        sample_shape = shape[1:]
        samples: list[np.ndarray] = []
        for f in files:
            if len(samples) >= count:
                break
            try:
                arr = np.load(f, allow_pickle=False)
            except Exception as e:
                raise CalibrationError(f"calibration file {f} is not a readable .npy array: {e}") from e
            if arr.dtype.kind not in "fiu":
                raise CalibrationError(f"calibration file {f} has dtype {arr.dtype}, expected a real number type")
            if arr.shape == sample_shape:
                arr = arr[None]
            elif arr.ndim != len(shape) or arr.shape[1:] != sample_shape or arr.shape[0] < 1:
                batch = ", ".join(map(str, sample_shape))
                raise CalibrationError(f"calibration file {f} has shape {arr.shape}; the model input needs "
                                       f"{shape} (or {sample_shape}, or a batch (N, {batch}))")
            arr = arr.astype(np.float32)
            if not np.isfinite(arr).all():
                raise CalibrationError(f"calibration file {f} contains NaN or infinite values")
            samples += [np.ascontiguousarray(a[None]) for a in arr[: count - len(samples)]]
        super().__init__(input_name, samples)


def calibration_reader(calibration: str | os.PathLike, input_name: str, shape: tuple[int, ...],
                       num_calibration: int = 8, seed: int = 0) -> _Reader:
    """The reader for ``calibration`` (``"random"`` or a .npy directory), loaded and checked now."""
    if isinstance(num_calibration, bool) or not isinstance(num_calibration, int) or num_calibration < 1:
        raise CalibrationError(f"num_calibration must be a positive int, got {num_calibration!r}")
    if isinstance(calibration, str) and calibration == "random":
        return RandomCalibrationReader(input_name, shape, num_calibration, seed)
    if isinstance(calibration, (str, os.PathLike)):
        return NpyCalibrationReader(input_name, shape, calibration, num_calibration)
    raise CalibrationError(f"calibration must be 'random' or a directory of .npy files, got {calibration!r}")


def _quant_type(activation_type):
    from onnxruntime.quantization import QuantType

    if isinstance(activation_type, QuantType):
        return activation_type
    table = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    if activation_type not in table:
        raise CalibrationError(f"activation_type must be one of {ACTIVATION_TYPES}, got {activation_type!r}")
    return table[activation_type]


def _quant_format(quant_format):
    from onnxruntime.quantization import QuantFormat

    if isinstance(quant_format, QuantFormat):
        return quant_format
    table = {"qoperator": QuantFormat.QOperator, "qdq": QuantFormat.QDQ}
    if not isinstance(quant_format, str) or quant_format.lower() not in table:
        raise CalibrationError(f"quant_format must be one of {QUANT_FORMATS}, got {quant_format!r}")
    return table[quant_format.lower()]


def _prune_opset_imports(proto: onnx.ModelProto) -> None:
    """Drop the opset imports of domains no node uses (the ORT optimizer in ``quant_pre_process`` declares
    every domain it knows: ai.onnx.ml, com.microsoft.nchwc, org.pytorch.aten, ...)."""
    used = {""} | {n.domain for n in proto.graph.node}
    keep = [o for o in proto.opset_import if o.domain in used or (o.domain == "ai.onnx" and "" in used)]
    del proto.opset_import[:]
    proto.opset_import.extend(keep)


def quantize_model(float_path: str | os.PathLike, out_path: str | os.PathLike,
                   calibration: str | os.PathLike = "random", num_calibration: int = 8, seed: int = 0,
                   activation_type: str = "uint8", preprocess: bool = True, quant_format: str = "qoperator") -> Path:
    """Quantize the float ONNX model ``float_path`` into ``out_path``.

    ``quant_format``: ``"qoperator"`` (default: QLinearConv, QGemm, ...) or ``"qdq"``
    (QuantizeLinear/DequantizeLinear around the float operators); both read by the frontend into the
    same graph IR.
    ``calibration``: ``"random"`` (``num_calibration`` N(0, 1) images from ``seed``) or a directory of
    ``.npy`` files (see :class:`NpyCalibrationReader`).  Weights: per-channel symmetric int8;
    activations: asymmetric ``activation_type`` (``"uint8"`` default, or ``"int8"``); MinMax calibration.
    ``out_path`` is written atomically and only once everything succeeded; calibration problems raise
    :class:`CalibrationError` before anything is written.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantType, quant_pre_process, quantize_static

    float_path, out_path = Path(float_path), Path(out_path)
    act_type = _quant_type(activation_type)
    fmt = _quant_format(quant_format)
    proto = onnx.load(os.fspath(float_path))
    input_name, shape = _input_spec(proto)
    reader = calibration_reader(calibration, input_name, shape, num_calibration, seed)
    with tempfile.TemporaryDirectory(prefix="dlfusion-quant-") as tmp:
        src = float_path
        if preprocess:
            src = Path(tmp) / "preprocessed.onnx"
            quant_pre_process(os.fspath(float_path), os.fspath(src), skip_symbolic_shape=False)
        q_path = Path(tmp) / "quantized.onnx"
        quantize_static(os.fspath(src), os.fspath(q_path), reader, quant_format=fmt,
                        per_channel=True, reduce_range=False, activation_type=act_type,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        extra_options=dict(EXTRA_OPTIONS))
        qproto = onnx.load(os.fspath(q_path))
    _prune_opset_imports(qproto)
    onnx.checker.check_model(qproto)
    atomic_write_bytes(out_path, qproto.SerializeToString())
    return out_path
