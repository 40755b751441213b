"""``dlfusion tune``: run the strategies on a model, measure their plans on the RTL, compare.

:func:`tune` plans a graph with each strategy asked for (:mod:`.strategies`,
:mod:`.oracle`), runs every plan on the RTL (through the executor and the
measurement cache) and returns, per strategy, the RTL cycles, the speedup over
the ``none`` baseline (also measured on the RTL), the fraction of the oracle's
speedup reached (when the oracle ran), the search time and the plan.

``search_seconds`` is what the search costs on a cold cache: the wall-clock time
of planning for the strategies that run no simulation (loading the rule and the
cost model included), and for the oracle the recorded seconds of every RTL
measurement it used (compiling and simulating, as measured when the cache entry
was made) plus its dynamic program.

The oracle's tiling runs are also the cost model's calibration data: after the
oracle, its groups are stored as samples of the source ``model@size`` and the
cost model of the HwConfig is refitted (:func:`~.costmodel.calibrate`). The
cost-model strategies (``fusion-only``, ``dlfusion``) use a cost model that has
not seen the tuned model's own measurements whenever measurements of another
model exist (:func:`~.costmodel.load_cost_model` with ``holdout``); the result
says which sources it was fitted to.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from ...hw.config import HwConfig
from ..ir import Graph
from ..plan import Plan
from .cache import MeasurementCache, default_build_dir
from .costmodel import (
    CostModel,
    calibrate,
    cost_model_path,
    load_cost_model,
    prediction_errors,
    samples_from_runs,
    save_samples,
)
from .errors import TuneError
from .executor import Executor
from .features import Workload
from .oracle import DEFAULT_MAX_GROUP, run_oracle
from .planrun import PlanMeasurer, PlanRun
from .roofline import roofline
from .rule import load_rule
from .strategies import STRATEGIES, plan_cores_only, plan_dlfusion, plan_fusion_only, plan_none

__all__ = ["TUNE_FORMAT", "resolve_strategies", "load_model", "check_inputs", "tune", "default_plan_dir",
           "plan_paths"]

_log = logging.getLogger(__name__)

TUNE_FORMAT = "dlfusion-tune/1"
_NEEDS_RULE = ("cores-only", "dlfusion")
_NEEDS_COST_MODEL = ("fusion-only", "dlfusion")


def resolve_strategies(names: Sequence[str] | str) -> list[str]:
    """Strategy names (``all`` for every one) in :data:`~.strategies.STRATEGIES` order."""
    names = [names] if isinstance(names, str) else list(names)
    wanted = set()
    for name in names:
        if name == "all":
            wanted |= set(STRATEGIES)
        elif name in STRATEGIES:
            wanted.add(name)
        else:
            raise TuneError(f"unknown strategy {name!r}; accepted: {', '.join(STRATEGIES)}, all")
    if not wanted:
        raise TuneError(f"no strategy given; accepted: {', '.join(STRATEGIES)}, all")
    return [name for name in STRATEGIES if name in wanted]


def _zoo_digest(pruned: bool = False) -> str:
    """The model zoo's and the quantizer's sources (and the pruners' for a pruned model): a changed zoo is
    exported again."""
    from .. import prune
    from ..frontend import prune as prune_onnx
    from ..frontend import quantize, zoo
    digest = hashlib.sha256()
    for module in (zoo, quantize, *((prune, prune_onnx) if pruned else ())):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:12]


def load_model(model: str, input_size: int | None = None, *, build_dir: str | Path | None = None,
               lanes: int = 16) -> tuple[Graph, str]:
    """A zoo model (exported and quantized once, then reused from ``<build>/tune/onnx``) or a
    quantized ONNX file, as a graph; and its source name ``model@size``.

    Raises
    ------
    TuneError
        Unknown model, an input size below the model's minimum, or an unreadable file.
    """
    from ..frontend import load_onnx, zoo
    from ..ir import IRError
    path = Path(model)
    if path.suffix == ".onnx":
        if input_size is not None:
            raise TuneError(f"--input-size is for zoo models; {model} has its own input size")
        try:
            graph = load_onnx(path, name=path.stem)
        except IRError as error:
            raise TuneError(str(error)) from None
        size = graph.tensors[graph.input].shape[1]
        return graph, f"{path.stem}@{size}"
    base, pattern = zoo.split_name(model)
    if base not in zoo.MODELS:
        raise TuneError(f"unknown model {model!r}; give a zoo model ({', '.join(zoo.MODELS)}; NAME:2of4 or NAME:1of4 "
                        "pruned) or a quantized .onnx")
    if pattern is not None:
        from ..prune import parse_pattern
        pattern = parse_pattern(pattern).label
    spec = zoo.MODELS[base]
    size = spec.default_size if input_size is None else input_size
    if isinstance(size, bool) or not isinstance(size, int) or size < spec.min_size:
        raise TuneError(f"{model}: input size {size!r} is below the minimum {spec.min_size}")
    directory = Path(build_dir) if build_dir is not None else default_build_dir()
    pruned = f"-{pattern.replace(':', 'of')}-l{lanes}" if pattern is not None else ""
    onnx_path = directory / "tune" / "onnx" / f"{base}{pruned}-{size}-{_zoo_digest(bool(pruned))}.onnx"
    if not onnx_path.exists():
        _log.info("exporting and quantizing %s at %dx%d...", model, size, size)
        onnx_path.parent.mkdir(parents=True, exist_ok=True)
        zoo.export_quantized(model, size, onnx_path, lanes=lanes)      # atomic: a reader never sees half a file
    return load_onnx(onnx_path, name=model.replace(":", "-")), f"{model}@{size}"


def check_inputs(hw: HwConfig, strategies: Sequence[str], rule_dir: str | Path | None = None) -> None:
    """Fail before any measurement when a strategy lacks what it needs (the rule, the cost model)."""
    if any(name in _NEEDS_RULE for name in strategies):
        load_rule(hw, rule_dir)
    if any(name in _NEEDS_COST_MODEL for name in strategies) and "oracle" not in strategies:
        load_cost_model(hw, rule_dir)


def default_plan_dir() -> Path:
    return default_build_dir() / "tune" / "plans"


def plan_paths(source: str, strategies: Sequence[str], output: str | Path | None = None,
               report_dir: str | Path | None = None) -> dict[str, Path]:
    """Where each strategy's plan file goes.

    ``output`` itself for one strategy, ``<stem>.<strategy>.plan.json`` beside it for
    several; without ``output``, ``<source>.<strategy>.plan.json`` in ``report_dir``
    (default :func:`default_plan_dir`).
    """
    stem = source.replace("@", "-")
    if output is not None:
        base = Path(output)
        if len(strategies) == 1:
            return {strategies[0]: base}
        name = base.name.removesuffix(".json").removesuffix(".plan")
        return {s: base.with_name(f"{name}.{s}.plan.json") for s in strategies}
    directory = Path(report_dir) if report_dir is not None else default_plan_dir()
    return {s: directory / f"{stem}.{s}.plan.json" for s in strategies}


def _group_counts(plan: Plan) -> dict:
    return {"groups": len(plan.groups), "fused_groups": sum(len(g.nodes) > 1 for g in plan.groups),
            "largest_group": max(len(g.nodes) for g in plan.groups),
            "cores_used": sorted({g.cores for g in plan.groups}),
            "channel_splits": sum(g.split == "channels" and g.cores > 1 for g in plan.groups)}


def _predicted(workload: Workload, model: CostModel | None, plan: Plan) -> float | None:
    if model is None:
        return None
    return sum(model.predict(workload.features(tuple(g.nodes), g.cores, g.split), workload.hw) for g in plan.groups)


def tune(graph: Graph, hw: HwConfig, strategies: Sequence[str], *, executor: Executor, cache: MeasurementCache,
         source: str | None = None, rule_dir: str | Path | None = None, max_group: int = DEFAULT_MAX_GROUP,
         progress: bool = False) -> dict:
    """Plan ``graph`` with each strategy, measure every plan on the RTL, compare.

    Parameters
    ----------
    graph : Graph
    hw : HwConfig
    strategies : sequence of str
        Names from :data:`~.strategies.STRATEGIES`; the ``none`` baseline is always measured.
    executor : Executor
    cache : MeasurementCache
    source : str, optional
        ``model@size``: the name of the oracle's calibration samples (default: the graph's name).
    rule_dir : path, optional
        Where the rule and the cost model live (default ``build/tune``).
    max_group : int
        Longest group of the oracle's space and of the fusion search.
    progress : bool
        Progress bars on stderr (messages go to the module's logger).

    Returns
    -------
    dict
        See ``dlfusion tune --help`` and the README: ``baseline_cycles``, and per strategy
        ``cycles``, ``speedup``, ``search_seconds``, ``plan``, ... under ``strategies``;
        ``oracle`` and ``cost_model`` summaries.

    Raises
    ------
    TuneError
        A missing rule or cost model, or an unknown strategy.
    MeasurementFailed
        An RTL run failed or an output differed from the reference.
    """
    strategies = resolve_strategies(strategies)
    source = source or graph.name
    check_inputs(hw, strategies, rule_dir)

    started = time.perf_counter()
    workload = Workload(graph, hw)
    measurer = PlanMeasurer(graph, hw, executor=executor, cache=cache, progress=progress)
    plans: dict[str, Plan] = {}
    info: dict[str, dict] = {}

    def timed(name, make):
        begin = time.perf_counter()
        plan = make()
        seconds = time.perf_counter() - begin
        plan.validate(graph, hw)
        plans[name] = plan
        info[name] = {"search_seconds": seconds}
        _log.info("%s: planned in %.1f ms (%d groups)", name, seconds * 1000, len(plan.groups))

    timed("none", lambda: plan_none(Workload(graph, hw)))
    if "cores-only" in strategies:
        timed("cores-only", lambda: plan_cores_only(Workload(graph, hw), load_rule(hw, rule_dir)))
    _log.info("%s: %d layers, %s MACs on %s (HwConfig %s); measuring %s on the RTL", graph.name, len(graph.nodes),
              f"{graph.macs:,}", hw.describe(), hw.hash, ", ".join(plans))
    runs: dict[str, PlanRun] = dict(zip(plans, measurer.measure(list(plans.items()), label="strategies"),
                                        strict=True))

    oracle = None
    if "oracle" in strategies:
        _log.info("oracle: groups of up to %d layers on %s cores; measuring the tiling plans on the RTL", max_group,
                  workload.core_counts())
        oracle = run_oracle(workload, measurer, max_group=max_group)
        plans["oracle"], runs["oracle"] = oracle.plan, oracle.run
        info["oracle"] = {"search_seconds": oracle.search_seconds, "predicted_cycles": oracle.predicted_cycles}
        save_samples(hw, source, samples_from_runs(workload, oracle.tiling_runs, source), rule_dir)
        model = calibrate(hw, rule_dir)
        _log.info("cost model recalibrated on %s (%d groups): %s", ", ".join(model.sources), model.samples,
                  cost_model_path(hw, rule_dir))

    cost_model = None
    if any(name in strategies for name in _NEEDS_COST_MODEL):
        later = {}
        if "fusion-only" in strategies:
            def fusion_only():
                return plan_fusion_only(Workload(graph, hw), load_cost_model(hw, rule_dir, holdout=source),
                                        max_group)
            timed("fusion-only", fusion_only)
            later["fusion-only"] = plans["fusion-only"]
        if "dlfusion" in strategies:
            searched = {}

            def dlfusion():
                plan, details = plan_dlfusion(Workload(graph, hw), load_rule(hw, rule_dir),
                                              load_cost_model(hw, rule_dir, holdout=source), max_group)
                searched["details"] = details
                return plan
            timed("dlfusion", dlfusion)
            info["dlfusion"].update(candidates=searched["details"].candidates,
                                    fused_candidates=searched["details"].fused_candidates)
            later["dlfusion"] = plans["dlfusion"]
        cost_model = load_cost_model(hw, rule_dir, holdout=source)
        runs.update(zip(later, measurer.measure(list(later.items()), label="strategies"), strict=True))

    baseline = runs["none"].cycles
    oracle_cycles = runs["oracle"].cycles if "oracle" in runs else None
    results = {}
    for name in [n for n in STRATEGIES if n in plans]:
        run = runs[name]
        entry = {"cycles": run.cycles, "speedup": baseline / run.cycles, "search_seconds": info[name]["search_seconds"],
                 "rtl_seconds": round(run.seconds, 3), "cached": run.cached, **_group_counts(plans[name]),
                 "plan": plans[name].to_json(), "group_cycles": [g["cycles"] for g in run.groups]}
        if oracle_cycles is not None:
            entry["oracle_fraction"] = oracle_cycles / run.cycles
        predicted = _predicted(workload, cost_model, plans[name])
        if predicted is not None:
            entry["predicted_cycles"] = round(predicted)
            entry["prediction_error"] = (predicted - run.group_cycles) / max(1, run.group_cycles)
        for key in ("candidates", "fused_candidates"):
            if key in info[name]:
                entry[key] = info[name][key]
        results[name] = entry

    report = {"format": TUNE_FORMAT, "model": graph.name, "source": source,
              "input_size": graph.tensors[graph.input].shape[1], "layers": len(graph.nodes), "macs": graph.macs,
              "hw": hw.to_dict(), "hw_hash": hw.hash, "hw_description": hw.describe(), "max_group": max_group,
              "strategies_run": strategies, "baseline_cycles": baseline, "strategies": results,
              "wall_seconds": round(time.perf_counter() - started, 3)}
    bound = roofline(graph, hw)
    report["roofline"] = {**bound, "ceiling_speedup": baseline / max(1, bound["cycles"])}
    if oracle is not None:
        report["oracle"] = oracle.summary()
    if cost_model is not None:
        summary = {"path": str(cost_model_path(hw, rule_dir)), "sources": cost_model.sources,
                   "held_out": source not in cost_model.sources, "coefficients": cost_model.coefficients,
                   "formula": cost_model.explain(), "error": cost_model.error}
        if oracle is not None:
            samples = samples_from_runs(workload, oracle.tiling_runs, source)
            summary["error_on_this_model"] = prediction_errors(cost_model.predict_many(samples, hw), samples)
        report["cost_model"] = summary
    return report
