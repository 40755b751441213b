"""``dlfusion layer``: one layer built with seeded random data, run and checked against numpy."""

from __future__ import annotations

import hashlib

import numpy as np

from ..hw.errors import EXIT_MISMATCH
from .options import UsageError, add_command, add_hw, add_json, add_sparse_exec, load_hw, print_json
from .run import BACKENDS, run_backend

__all__ = ["add_commands", "cmd_layer", "layer_report"]

KINDS = ("conv", "fc", "dwconv", "pool", "add")


def add_commands(sub) -> None:
    p = add_command(sub, "layer", help="build one layer with seeded random data, run and check it")
    p.add_argument("kind", choices=KINDS)
    p.add_argument("--h", type=int, default=14)
    p.add_argument("--w", type=int, default=14)
    p.add_argument("--cin", "--c", dest="cin", type=int, default=32,
                   help="input channels (channels for dwconv/pool/add)")
    p.add_argument("--cout", type=int, default=32)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--pad", type=int, default=None, help="default: k // 2 (pool: 0)")
    p.add_argument("--mode", choices=("max", "avg"), default="max", help="pool mode")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cores", type=int, default=1, help="cores to split the layer over (<= HwConfig.cores)")
    p.add_argument("--split", choices=("rows", "channels"), default="rows",
                   help="split axis: output rows (weights loaded by every core) or output channels "
                        "(input loaded by every core)")
    p.add_argument("--prune", metavar="N:M", default=None,
                   help="prune the seeded conv/fc weights to 2:4 or 1:4 by magnitude along input channels "
                        "(a dwconv stays dense)")
    add_sparse_exec(p)
    p.add_argument("--backend", choices=BACKENDS, default="golden")
    add_hw(p)
    p.add_argument("--save", help="also write the binary to this .dlfb path")
    p.add_argument("--waves", action="store_true", help="rtl: dump an FST waveform")
    add_json(p, help="print a JSON report")
    p.set_defaults(func=cmd_layer)


def _build_layer(args, hw):
    from ..compiler import layers
    common = dict(seed=args.seed, cores=args.cores, split=args.split)
    if args.kind in ("conv", "fc", "dwconv"):
        common.update(prune=args.prune, sparse_exec=args.sparse_exec)
    elif args.prune is not None or args.sparse_exec == "on":
        raise UsageError(f"--prune and --sparse-exec on are for conv, fc and dwconv layers, not {args.kind}")
    if args.kind == "conv":
        return layers.build_conv(hw, h=args.h, w=args.w, cin=args.cin, cout=args.cout, k=args.k,
                                 stride=args.stride, pad=args.pad, **common)
    if args.kind == "fc":
        return layers.build_fc(hw, cin=args.cin, cout=args.cout, **common)
    if args.kind == "dwconv":
        return layers.build_dwconv(hw, h=args.h, w=args.w, c=args.cin, k=args.k, stride=args.stride,
                                   pad=args.pad, **common)
    if args.kind == "pool":
        return layers.build_pool(hw, h=args.h, w=args.w, c=args.cin, k=args.k, stride=args.stride,
                                 pad=args.pad or 0, mode=args.mode, **common)
    return layers.build_add(hw, h=args.h, w=args.w, c=args.cin, **common)


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def layer_report(case, result) -> dict:
    """The JSON report of one layer's run: cycles, utilization, counters and the check against numpy."""
    hw = case.binary.hw
    matches = result.error is None and all(
        np.array_equal(result.outputs[name], expected) for name, expected in case.expected.items())
    payload = {
        "backend": result.backend,
        "layer": case.description,
        "hw": hw.hash,
        "cycles": int(result.cycles),
        "macs": int(case.macs),
        # Utilization of the PEs of the cores the program uses.
        "utilization": case.macs / (hw.macs_per_cycle * len(case.binary.streams) * max(1, result.cycles)),
        "cores": len(case.binary.streams),
        "matches_reference": bool(matches),
        "counters": result.counters,
        "error": None if result.error is None else result.error.to_json(),
    }
    for name in ("sparsity", "weight_bytes"):
        if name in case.description:
            payload[name] = case.description[name]
    if result.error is None:
        payload["output_sha256"] = _sha256(result.outputs["y"])
    for name in ("cycles_per_second", "sim_seconds"):
        if hasattr(result, name):
            payload[name] = getattr(result, name)
    return payload


def cmd_layer(args) -> int:
    hw = load_hw(args)
    for name in ("h", "w", "cin", "cout", "k", "stride"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name} must be a positive integer, not {value}")
    case = _build_layer(args, hw)
    if args.save:
        case.binary.write(args.save)
    result = run_backend(case.binary, case.inputs, args.backend, waves=args.waves)
    payload = layer_report(case, result)
    if args.json:
        print_json(payload)
    else:
        status = "matches the numpy reference" if payload["matches_reference"] else "DOES NOT MATCH the reference"
        print(f"{args.kind} on {args.backend}: {payload['cycles']} cycles, {payload['macs']} MACs, "
              f"utilization {payload['utilization']:.3f}; output {status}")
    return 0 if payload["matches_reference"] else EXIT_MISMATCH
