"""``dlfusion bench sparse``: N:M weight sparsity on the RTL, dense against sparse on the same pruned weights.

Every figure is an RTL run of the default HwConfig (its sparse PE array), checked against the golden
simulator; the dense reference is the same weights with ``--sparse-exec off`` (the dense datapath):

* layers on one core: a compute-bound 3x3 convolution (28x28, 128 -> 128) and a weight-bound fully
  connected layer (2048 -> 1000), dense, 2:4 and 1:4: cycles, speedup, DRAM bytes;
* networks (ResNet-50 and MobileNetV2 at 64 px, pruned by ``dlfusion prune``): the plan ``compile``
  gives (the tuned plan when this HwConfig has a rule and a cost model, else the default plan),
  dense vs 2:4 vs 1:4: cycles, speedup and DRAM bytes; and, on the no-fusion one-core plan, where
  the cycles go by kind of layer (the sparse convolutions, the dense ones: first layer, depthwise,
  the rest), which says where the gain is lost.

RTL runs go through the tuner's executor and measurement cache (``build/bench/sparse/cache``), so an
interrupted run resumes. Writes ``sparse.json`` and ``sparse.md``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from .bench import measurement_failure, run_checked
from .hw.binary import atomic_write
from .hw.config import HwConfig
from .hw.errors import MismatchError

__all__ = ["LAYERS", "NETWORKS", "PATTERNS", "sparse_bench", "sparse_tables"]

_log = logging.getLogger(__name__)

PATTERNS = ("2:4", "1:4")
#: name -> (builder, keyword arguments): the layer benchmarks (one core).
LAYERS = {
    "conv3x3_28x28_128to128": ("build_conv", dict(h=28, w=28, cin=128, cout=128, k=3, seed=21)),
    "fc_2048to1000": ("build_fc", dict(cin=2048, cout=1000, seed=22)),
}
NETWORKS = (("resnet50", 64), ("mobilenet_v2", 64))


def _job(job: dict) -> dict:
    """Run one binary on the golden simulator and the RTL (an executor worker): cycles, DRAM bytes, groups."""
    from .hw.binary import Binary
    from .sim.runtime import group_report
    hw = HwConfig.from_dict(job["hw"])
    binary = Binary.from_bytes(job["binary"])
    inputs = {name: np.asarray(value) for name, value in job["inputs"].items()}
    rtl, _ = run_checked(hw, binary, inputs)
    expected = job.get("expected")
    if expected is not None and not all(np.array_equal(rtl.outputs[k], np.asarray(v)) for k, v in expected.items()):
        raise MismatchError("RTL output differs from the numpy reference")
    result = {"cycles": int(rtl.cycles), "pe_busy": int(sum(c["pe_busy"] for c in rtl.counters)),
              "dram_bytes": int((rtl.dram_read_lines or 0) + (rtl.dram_write_lines or 0)) * hw.line_bytes}
    result.update(job["extra"], compile_seconds=job["compile_seconds"])
    if binary.metadata.get("groups"):
        result["groups"] = [{"nodes": g["nodes"], "cycles": g["cycles"], "dram_bytes": g["dram_bytes"]}
                            for g in group_report(binary, rtl)]
    return result


def _network_plan(graph, hw: HwConfig, mode: str, rule_dir=None):
    """The plan ``dlfusion compile`` picks without plan options, and its source."""
    from .compiler.tune.costmodel import load_cost_model
    from .compiler.tune.errors import TuneError
    from .compiler.tune.features import Workload
    from .compiler.tune.rule import load_rule
    from .compiler.tune.strategies import plan_default, plan_dlfusion
    workload = Workload(graph, hw, mode)
    try:
        rule, cost_model = load_rule(hw, rule_dir), load_cost_model(hw, rule_dir)
    except TuneError:
        return plan_default(workload, hw.cores)[0], "default"
    return plan_dlfusion(workload, rule, cost_model)[0], "dlfusion"


def _category(node) -> str:
    from .compiler.ir import Op
    from .hw.isa import Sparsity
    if node.op in (Op.CONV, Op.FC):
        return "sparse conv/fc" if node.attrs.sparsity is not Sparsity.DENSE else "dense conv/fc"
    if node.op is Op.DEPTHWISE:
        return "depthwise"
    return "other"


def sparse_bench(hw: HwConfig, out_dir: Path, *, networks=NETWORKS, layers_only: bool = False, executor=None,
                 workers: int | None = None, rule_dir=None, progress: bool = False) -> dict:
    """Measure :data:`LAYERS` and ``networks`` dense and sparse on the RTL (see the module docstring).

    Raises
    ------
    InputError
        ``hw`` has no sparse PE array.
    AcceleratorFault, MismatchError
        An RTL run failed or disagreed with the golden simulator (or the layer's numpy reference).
    """
    from .compiler import layers
    from .compiler.compile import compile_graph
    from .compiler.emit import weight_bytes
    from .compiler.plan import make_plan
    from .compiler.tune.cache import MeasurementCache, measure, measurement_key
    from .compiler.tune.executor import LocalExecutor
    from .compiler.tune.tune import load_model
    from .hw.errors import InputError
    patterns = [p for p in PATTERNS if p in hw.sparse_patterns]
    if not patterns:
        raise InputError(f"HwConfig {hw.hash} has no sparse PE array (sparse_patterns is empty): nothing to compare")
    out_dir.mkdir(parents=True, exist_ok=True)
    specs, graphs = [], {}
    for name in LAYERS:
        for pattern in patterns:
            for mode in ("off", "auto"):
                specs.append({"what": "layer", "name": name, "pattern": pattern, "mode": mode, "plan": "1 core"})
    if not layers_only:
        for model, size in networks:
            for pattern in patterns:
                graphs[model, pattern] = load_model(f"{model}:{pattern.replace(':', 'of')}", size, lanes=hw.lanes)[0]
                for mode in ("off", "auto"):
                    if mode == "off" and pattern != patterns[0]:
                        continue        # the dense datapath: the same program shape whatever the pattern
                    for plan in ("compile", "none-1"):
                        specs.append({"what": "network", "name": model, "size": size, "pattern": pattern,
                                      "mode": mode, "plan": plan})

    def prepare(spec):
        started = time.perf_counter()
        extra = {}
        if spec["what"] == "layer":
            builder, kwargs = LAYERS[spec["name"]]
            case = getattr(layers, builder)(hw, prune=spec["pattern"], sparse_exec=spec["mode"], **kwargs)
            binary, inputs, expected = case.binary, case.inputs, case.expected
            extra = {"sparsity": case.description["sparsity"], "weight_bytes": case.description["weight_bytes"]}
        else:
            graph = graphs[spec["name"], spec["pattern"]]
            if spec["plan"] == "compile":
                plan, source = _network_plan(graph, hw, spec["mode"], rule_dir)
            else:
                plan, source = make_plan(graph, hw, fusion="none", cores=1, sparse_exec=spec["mode"]), "none-1"
            binary = compile_graph(graph, hw, plan, sparse_exec=spec["mode"])
            tensor = binary.inputs[0]
            inputs = {tensor.name: np.random.default_rng(0).integers(0, 256, size=tensor.shape).astype(tensor.dtype)}
            expected = None
            categories = {node.name: _category(node) for node in graph.nodes}
            extra = {"plan_source": source, "groups": len(plan.groups),
                     "group_categories": [sorted({categories[n] for n in group.nodes}) for group in plan.groups],
                     "sparse_layers": sum(c == "sparse conv/fc" for c in categories.values()),
                     "weight_bytes": weight_bytes(binary)}
        data = binary.to_bytes()
        job = {"hw": hw.to_dict(), "binary": data, "inputs": inputs, "expected": expected,
               "compile_seconds": time.perf_counter() - started, "extra": extra}
        return measurement_key(hw, "sparse-bench/1", data, "input seed 0"), job

    rows = []
    own_executor = executor is None
    executor = LocalExecutor(workers) if own_executor else executor
    try:
        for m in measure(specs, prepare, _job, executor=executor, cache=MeasurementCache(out_dir / "cache"),
                         hw_hash=hw.hash, describe=lambda s: dict(s), progress=progress, label="sparse RTL runs"):
            if not m.ok:
                raise measurement_failure(m.error)(f"{m.spec}: {m.error}")
            rows.append({**m.spec, **m.result})
            _log.info("%s %s %s %s: %s cycles", m.spec["name"], m.spec["pattern"], m.spec["mode"], m.spec["plan"],
                      f"{m.result['cycles']:,}")
    finally:
        if own_executor:
            executor.close()
    report = {"hw": hw.to_dict(), "hw_hash": hw.hash, "rows": rows, **_summaries(rows, patterns)}
    atomic_write(out_dir / "sparse.json", json.dumps(report, indent=2))
    atomic_write(out_dir / "sparse.md", sparse_tables(report) + "\n")
    return report


def _summaries(rows: list[dict], patterns: list[str]) -> dict:
    def find(**keys):
        return next((r for r in rows if all(r.get(k) == v for k, v in keys.items())), None)

    layer_rows, network_rows, breakdown = [], [], []
    for name in LAYERS:
        for pattern in patterns:
            dense, sparse = find(name=name, pattern=pattern, mode="off"), find(name=name, pattern=pattern, mode="auto")
            if dense and sparse:
                layer_rows.append({"layer": name, "pattern": pattern, "dense_cycles": dense["cycles"],
                                   "sparse_cycles": sparse["cycles"], "speedup": dense["cycles"] / sparse["cycles"],
                                   "dense_dram_bytes": dense["dram_bytes"], "sparse_dram_bytes": sparse["dram_bytes"],
                                   "dense_weight_bytes": dense["weight_bytes"],
                                   "sparse_weight_bytes": sparse["weight_bytes"]})
    for name in dict.fromkeys(r["name"] for r in rows if r["what"] == "network"):
        for plan in ("compile", "none-1"):
            dense = find(name=name, mode="off", plan=plan)
            if dense is None:
                continue
            row = {"model": name, "size": dense["size"], "plan": plan if plan == "none-1" else dense["plan_source"],
                   "dense_cycles": dense["cycles"], "dense_dram_bytes": dense["dram_bytes"],
                   "dense_weight_bytes": dense["weight_bytes"]}
            for pattern in patterns:
                sparse = find(name=name, mode="auto", plan=plan, pattern=pattern)
                if sparse:
                    row[pattern] = {"cycles": sparse["cycles"], "speedup": dense["cycles"] / sparse["cycles"],
                                    "dram_bytes": sparse["dram_bytes"], "weight_bytes": sparse["weight_bytes"],
                                    "sparse_layers": sparse["sparse_layers"]}
            network_rows.append(row)
            if plan != "none-1":
                continue
            # per kind of layer (one layer per group in this plan): where the cycles go, dense vs sparse
            for pattern in patterns:
                sparse = find(name=name, mode="auto", plan=plan, pattern=pattern)
                if not sparse:
                    continue
                totals: dict[str, list[int]] = {}
                for g_dense, g_sparse, cats in zip(dense["groups"], sparse["groups"], sparse["group_categories"],
                                                   strict=True):
                    entry = totals.setdefault(cats[0], [0, 0])
                    entry[0] += g_dense["cycles"]
                    entry[1] += g_sparse["cycles"]
                for category, (d, s) in totals.items():
                    breakdown.append({"model": name, "pattern": pattern, "kind": category, "dense_cycles": d,
                                      "sparse_cycles": s, "dense_share": d / dense["cycles"],
                                      "speedup": d / s if s else None})
    return {"layers": layer_rows, "networks": network_rows, "breakdown": breakdown}


def sparse_tables(report: dict) -> str:
    """Markdown tables of a :func:`sparse_bench` report."""
    lines = ["| layer (1 core) | pattern | dense cycles | sparse cycles | speedup | DRAM bytes dense -> sparse | "
             "weight bytes |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["layers"]:
        lines.append(f"| {r['layer']} | {r['pattern']} | {r['dense_cycles']:,} | {r['sparse_cycles']:,} | "
                     f"{r['speedup']:.2f}x | {r['dense_dram_bytes']:,} -> {r['sparse_dram_bytes']:,} | "
                     f"{r['sparse_weight_bytes'] / r['dense_weight_bytes']:.1%} |")
    if report["networks"]:
        patterns = [p for p in PATTERNS if any(p in r for r in report["networks"])]
        lines += ["", "| model | plan | dense cycles | " + " | ".join(f"{p} cycles (speedup)" for p in patterns)
                  + " | weight bytes dense / " + " / ".join(patterns) + " |",
                  "| --- | --- | --- | " + " | ".join("---" for _ in patterns) + " | --- |"]
        for r in report["networks"]:
            cells = [f"{r[p]['cycles']:,} ({r[p]['speedup']:.2f}x)" if p in r else "-" for p in patterns]
            weights = " / ".join([f"{r['dense_weight_bytes'] / 1e6:.2f} MB"]
                                 + [f"{r[p]['weight_bytes'] / 1e6:.2f}" for p in patterns if p in r])
            lines.append(f"| {r['model']} {r['size']}px | {r['plan']} | {r['dense_cycles']:,} | "
                         + " | ".join(cells) + f" | {weights} |")
    if report["breakdown"]:
        lines += ["", "| model | pattern | layers | share of dense cycles | dense -> sparse cycles | speedup |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for r in report["breakdown"]:
            speedup = f"{r['speedup']:.2f}x" if r["speedup"] else "-"
            lines.append(f"| {r['model']} | {r['pattern']} | {r['kind']} | {r['dense_share']:.1%} | "
                         f"{r['dense_cycles']:,} -> {r['sparse_cycles']:,} | {speedup} |")
    return "\n".join(lines)
