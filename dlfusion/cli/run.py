"""``dlfusion run``: a ``.dlfb`` binary on the golden simulator or the RTL."""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path

import numpy as np

from ..hw.binary import Binary, BinaryError, atomic_write
from ..hw.errors import AcceleratorFault
from .options import UsageError, add_command, add_hw, add_json, load_hw, print_json

__all__ = ["add_commands", "cmd_run", "run_backend"]

_log = logging.getLogger(__name__)

BACKENDS = ("golden", "rtl")


def add_commands(sub) -> None:
    p = add_command(sub, "run", help="run a .dlfb binary on a backend")
    p.add_argument("binary")
    p.add_argument("--backend", choices=BACKENDS, default="golden")
    add_hw(p, help="check the binary against this HwConfig TOML")
    p.add_argument("--input", action="append", help="NAME=FILE.npy (or FILE.npy for a single input)")
    p.add_argument("--output", help="write the output array(s) to this .npy path")
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


def _parse_inputs(binary: Binary, specs: list[str] | None) -> dict:
    names = [t.name for t in binary.inputs]
    inputs = {}
    for spec in specs or []:
        if "=" in spec:
            name, path = spec.split("=", 1)
        elif len(names) == 1:
            name, path = names[0], spec
        else:
            raise UsageError(f"--input {spec!r}: this binary has inputs {names}; write NAME=FILE.npy")
        try:
            array = np.load(path)
        except (OSError, ValueError) as error:
            raise UsageError(f"--input {spec!r}: cannot read a .npy array ({error})") from None
        quant = binary.metadata.get("input_quant")
        if quant and np.issubdtype(array.dtype, np.floating):
            # A float model input: quantize it as the model's QuantizeLinear does.
            if array.size != np.prod(quant["shape"]):
                raise UsageError(f"--input {spec!r}: a float array of shape {list(array.shape)}; this model "
                                 f"takes {quant['shape']}")
            array = np.asarray(array, np.float32).reshape(quant["shape"])[0]
            info = np.iinfo(np.dtype(quant["dtype"]))
            array = np.clip(np.rint(array / np.float32(quant["scale"])) + quant["zero_point"], info.min,
                            info.max).astype(quant["dtype"])
        inputs[name] = array
    missing = [n for n in names if n not in inputs]
    if missing:
        raise UsageError(f"missing input(s) {missing}; pass --input NAME=FILE.npy (this binary takes {names})")
    return inputs


def cmd_run(args) -> int:
    binary = Binary.read(args.binary)
    if args.hw:
        binary.check_hw(load_hw(args))
    inputs = _parse_inputs(binary, args.input)
    started = time.perf_counter()
    result = run_backend(binary, inputs, args.backend, waves=args.waves)
    elapsed = time.perf_counter() - started
    if result.error is not None:
        payload = result.to_json()
        payload["wall_seconds"] = round(elapsed, 3)
        if args.json:
            print_json(payload)
        raise AcceleratorFault(f"the accelerator stopped: {result.error}")
    if args.output:
        if len(result.outputs) == 1:
            atomic_write(args.output, _npy_bytes(next(iter(result.outputs.values()))))
        else:
            base = Path(args.output)
            for name, array in result.outputs.items():
                atomic_write(base.with_name(f"{base.stem}_{name}.npy"), _npy_bytes(array))
    payload = result.to_json()
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
