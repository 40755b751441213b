"""``dlfusion run``: a ``.dlfb`` binary on the golden simulator or the RTL.

Inputs and outputs are, by default, the model's as onnxruntime takes and returns
them: the float32 input of the ONNX input's shape, quantized here exactly as the
model's QuantizeLinear quantizes it (round half to even, saturate), and each
output with the ONNX output's name, dtype and shape (float32, dequantized as the
model's final DequantizeLinear does). ``--raw`` takes and writes the
accelerator's quantized ``(C, H, W)`` tensors instead (also what a binary without
the model's quantization, such as ``dlfusion layer``'s, always uses).
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..hw.binary import Binary, BinaryError, atomic_write
from ..hw.errors import AcceleratorFault
from .options import UsageError, add_command, add_hw, add_json, load_hw, print_json

__all__ = ["add_commands", "cmd_run", "run_backend", "model_inputs", "quantize_input", "model_outputs",
           "output_files"]

_log = logging.getLogger(__name__)

BACKENDS = ("golden", "rtl")


def add_commands(sub) -> None:
    p = add_command(sub, "run", help="run a .dlfb binary on a backend")
    p.add_argument("binary")
    p.add_argument("--backend", choices=BACKENDS, default="golden")
    add_hw(p, help="check the binary against this HwConfig TOML")
    p.add_argument("--input", action="append",
                   help="NAME=FILE.npy (or FILE.npy for a single input): the model's float32 input as onnxruntime "
                        "takes it (with --raw: the accelerator's quantized tensor)")
    p.add_argument("--output", metavar="PATH",
                   help="FILE.npy (one output), FILE.npz, or a directory (one NAME.npy per output): the outputs as "
                        "onnxruntime returns them (with --raw: the accelerator's quantized tensors)")
    p.add_argument("--raw", action="store_true",
                   help="inputs and outputs as the accelerator's quantized (C, H, W) tensors")
    p.add_argument("--waves", action="store_true", help="rtl: dump an FST waveform")
    add_json(p, help="print a JSON report")
    p.set_defaults(func=cmd_run)


def run_backend(binary: Binary, inputs: dict, backend: str, *, waves: bool = False):
    """Run ``binary`` on ``backend`` (the RTL is built first if it is not yet)."""
    from ..sim.runtime import run
    options = {"waves": waves} if backend == "rtl" else {}
    if backend == "rtl":
        _log.info("building/running the RTL model for HwConfig %s (first build of a configuration takes a few "
                  "minutes)...", binary.hw.hash)
    return run(binary, inputs, backend=backend, **options)


@dataclass(frozen=True)
class ModelInput:
    """An input as ``--input`` takes it.

    Attributes
    ----------
    name : str
        The name ``--input NAME=FILE.npy`` uses.
    tensor : str
        The binary's input tensor it fills.
    shape : tuple of int
    dtype : str
    quant : dict or None
        The model's QuantizeLinear (``metadata["input_quant"]``) for a float input, else None.
    """
    name: str
    tensor: str
    shape: tuple
    dtype: str
    quant: dict | None = None


def model_inputs(binary: Binary, raw: bool = False) -> list[ModelInput]:
    """The inputs ``--input`` takes: the model's float input where the binary records its quantization
    (and not ``raw``), else the binary's quantized tensors."""
    quant = binary.metadata.get("input_quant")
    if quant and not raw and len(binary.inputs) == 1:
        return [ModelInput(quant["name"], binary.inputs[0].name, tuple(quant["shape"]), "float32", quant)]
    return [ModelInput(t.name, t.name, tuple(t.shape), t.dtype) for t in binary.inputs]


def quantize_input(array: np.ndarray, quant: dict) -> np.ndarray:
    """``array`` quantized as onnxruntime's QuantizeLinear does: ``saturate(round(x / scale) + zero_point)``,
    the division in float32 and the rounding half to even (MLAS: ``nearbyintf``)."""
    info = np.iinfo(np.dtype(quant["dtype"]))
    scaled = np.rint(np.asarray(array, np.float32) / np.float32(quant["scale"]))
    return np.clip(scaled + np.float32(quant["zero_point"]), info.min, info.max).astype(quant["dtype"])


def _parse_inputs(binary: Binary, specs: list[str] | None, raw: bool = False) -> dict:
    """The binary's input tensors from the ``--input`` specs (each checked against :func:`model_inputs`)."""
    expected = {item.name: item for item in model_inputs(binary, raw)}
    names = list(expected)
    inputs = {}
    for spec in specs or []:
        if "=" in spec:
            name, path = spec.split("=", 1)
        elif len(names) == 1:
            name, path = names[0], spec
        else:
            raise UsageError(f"--input {spec!r}: this binary has inputs {names}; write NAME=FILE.npy")
        if name not in expected:
            raise UsageError(f"--input {spec!r}: no input {name!r}; this binary takes {names}")
        try:
            array = np.load(path)
        except (OSError, ValueError) as error:
            raise UsageError(f"--input {spec!r}: cannot read a .npy array ({error})") from None
        item = expected[name]
        if item.quant is not None:
            raw_tensor = next(t for t in binary.inputs if t.name == item.tensor)
            takes = (f"this model takes float32 of shape {list(item.shape)} (its ONNX input {item.name!r}), or "
                     f"with --raw the accelerator's {raw_tensor.dtype} tensor of shape {tuple(raw_tensor.shape)}")
            if array.dtype != np.float32:
                raise UsageError(f"--input {spec!r}: a {array.dtype} array of shape {list(array.shape)}; {takes}")
            if tuple(array.shape) != item.shape:
                raise UsageError(f"--input {spec!r}: a float array of shape {list(array.shape)}; this model takes "
                                 f"{list(item.shape)} (float32, its ONNX input {item.name!r})")
            if np.isnan(array).any():
                raise UsageError(f"--input {spec!r}: the float input contains NaN, which has no quantized value")
            # Batch 1: the accelerator's tensor is the (C, H, W) of the NCHW input.
            array = quantize_input(array, item.quant).reshape(raw_tensor.shape)
        else:
            what = "the accelerator's quantized tensor" if binary.metadata.get("input_quant") else "a raw tensor"
            if tuple(array.shape) != item.shape:
                raise UsageError(f"--input {spec!r}: input {name!r} must have shape {item.shape}, not "
                                 f"{tuple(array.shape)} ({what}, {item.dtype})")
            if array.dtype != np.dtype(item.dtype):
                raise UsageError(f"--input {spec!r}: input {name!r} must have dtype {item.dtype}, not "
                                 f"{array.dtype} ({what} of shape {item.shape})")
        inputs[item.tensor] = array
    missing = [n for n in names if expected[n].tensor not in inputs]
    if missing:
        raise UsageError(f"missing input(s) {missing}; pass --input NAME=FILE.npy (this binary takes {names})")
    return inputs


def _dequantizations(binary: Binary) -> list[dict] | None:
    """Per binary output, the model's DequantizeLinear (``metadata["output_dequant"]``: one dict for a
    binary with one output, or a list in the order of ``binary.outputs``), or None without one."""
    dequant = binary.metadata.get("output_dequant")
    if not dequant:
        return None
    dequants = dequant if isinstance(dequant, list) else [dequant]
    if len(dequants) != len(binary.outputs):
        raise BinaryError(f"the binary has {len(binary.outputs)} outputs but {len(dequants)} output "
                          "dequantizations in its metadata")
    return dequants


def _output_names(binary: Binary, raw: bool) -> list[str]:
    dequants = None if raw else _dequantizations(binary)
    return [t.name for t in binary.outputs] if dequants is None else [d["name"] for d in dequants]


def model_outputs(binary: Binary, outputs: dict[str, np.ndarray], raw: bool = False) -> dict[str, np.ndarray]:
    """The run's outputs as onnxruntime returns the model's: the ONNX output's name, float32 dequantized as
    DequantizeLinear does (``float32(int32(x) - zero_point) * scale``) and reshaped to the ONNX output's
    shape; with ``raw`` (or without recorded dequantizations) the accelerator's tensors as they are."""
    dequants = None if raw else _dequantizations(binary)
    if dequants is None:
        return dict(outputs)
    result = {}
    for tensor, dequant in zip(binary.outputs, dequants, strict=True):
        array = outputs[tensor.name]
        # A binary compiled before the shape was recorded: NCHW with batch 1.
        shape = tuple(dequant.get("shape") or (1, *array.shape))
        values = (array.astype(np.int32) - np.int32(dequant["zero_point"])).astype(np.float32)
        result[dequant["name"]] = (values * np.float32(dequant["scale"])).reshape(shape)
    return result


def _file_name(name: str) -> str:
    """``name`` as a file name: characters other than letters, digits, ``.``, ``_`` and ``-`` become ``_``,
    and no leading dot."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "output"


def output_files(path: str | Path, names: list[str]) -> dict[str, Path] | Path:
    """Where ``--output PATH`` writes each output: ``FILE.npy`` (one output), a ``FILE.npz`` (returned as
    it is; its keys are the output names), else a directory with one ``NAME.npy`` per output (names
    sanitised for the file system, a number added where two would collide)."""
    path = Path(path)
    if path.suffix == ".npz":
        return path
    if path.suffix == ".npy" and not path.is_dir():
        if len(names) != 1:
            raise UsageError(f"--output {str(path)!r}: this binary has {len(names)} outputs {names}; give a "
                             "directory (one NAME.npy per output) or a .npz file")
        return {names[0]: path}
    if path.exists() and not path.is_dir():
        raise UsageError(f"--output {str(path)!r} is a file; give FILE.npy (one output), FILE.npz or a directory")
    files, used = {}, set()
    for name in names:
        stem = _file_name(name)
        candidate, number = stem, 1
        while candidate.lower() in used:
            number += 1
            candidate = f"{stem}_{number}"
        used.add(candidate.lower())
        files[name] = path / f"{candidate}.npy"
    return files


def _write_outputs(target: dict[str, Path] | Path, outputs: dict[str, np.ndarray]) -> list[dict]:
    """Write ``outputs`` where :func:`output_files` said; per output its name, dtype, shape, the SHA-256 of
    its bytes (C order) and the file."""
    report = [{"name": name, "dtype": str(array.dtype), "shape": list(array.shape),
               "sha256": hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()}
              for name, array in outputs.items()]
    if isinstance(target, Path):
        buffer = io.BytesIO()
        np.savez(buffer, **outputs)
        atomic_write(target, buffer.getvalue())
        for entry in report:
            entry["file"] = f"{target}:{entry['name']}"
        return report
    for entry, (name, array) in zip(report, outputs.items(), strict=True):
        target[name].parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target[name], _npy_bytes(array))
        entry["file"] = str(target[name])
    return report


def cmd_run(args) -> int:
    binary = Binary.read(args.binary)
    if args.hw:
        binary.check_hw(load_hw(args))
    inputs = _parse_inputs(binary, args.input, args.raw)
    # Checked before the run, which can be long on the RTL.
    target = output_files(args.output, _output_names(binary, args.raw)) if args.output else None
    started = time.perf_counter()
    result = run_backend(binary, inputs, args.backend, waves=args.waves)
    elapsed = time.perf_counter() - started
    if result.error is not None:
        payload = result.to_json()
        payload["wall_seconds"] = round(elapsed, 3)
        if args.json:
            print_json(payload)
        raise AcceleratorFault(f"the accelerator stopped: {result.error}")
    written = _write_outputs(target, model_outputs(binary, result.outputs, args.raw)) if target else None
    payload = result.to_json()
    if written is not None:
        payload["written"] = written
    payload["wall_seconds"] = round(elapsed, 3)
    macs = int(binary.metadata.get("macs", 0))
    if macs:
        payload["macs"] = macs
        payload["utilization"] = macs / (binary.hw.macs_per_cycle * len(binary.streams) * max(1, result.cycles))
    waveform = getattr(result, "waveform", None)
    if waveform:
        payload["waveform"] = str(waveform)
    from ..sim.runtime import GroupReportError, group_report
    try:
        groups = group_report(binary, result)
    except GroupReportError as error:
        raise BinaryError(f"{args.binary}: {error}") from None
    if groups:
        payload["groups"] = groups
    if args.json:
        print_json(payload)
    else:
        print(f"{args.backend}: {result.cycles} cycles"
              + (f", utilization {payload['utilization']:.3f}" if macs else "")
              + (f", waveform {waveform}" if waveform else ""))
        if groups:
            print(group_table(groups))
        for entry in written or []:
            print(f"output {entry['name']!r}: {entry['dtype']} {tuple(entry['shape'])} -> {entry['file']}")
    return 0


def group_table(groups: list[dict]) -> str:
    """The per-group lines of ``run``'s text output."""
    rows = [("group", "nodes", "cores", "split", "cycles", "utilization", "DRAM bytes")]
    for group in groups:
        nodes = ",".join(group["nodes"])
        rows.append((str(group["index"]), nodes if len(nodes) <= 32 else nodes[:29] + "...", str(group["cores"]),
                     str(group["split"]), f"{group['cycles']:,}", f"{group['utilization']:.3f}",
                     f"{group['dram_bytes']:,}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    left = {1, 3}       # text columns; numbers are right-aligned
    return "\n".join("  ".join(cell.ljust(w) if i in left else cell.rjust(w)
                                for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
                      for row in rows)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()
