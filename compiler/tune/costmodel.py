"""A fast model of a group's cycles, calibrated against RTL measurements.

A group's cycles are predicted from its static counts (:class:`~.features.GroupFeatures`)
as a non-negative combination of a few terms (:data:`TERMS`), each in cycles:

``bound``
    the larger of the busiest core's PE cycles and the shared DRAM port's busy
    time (DMA lines plus instruction fetch, at ``dram_bytes_per_cycle``): the
    roofline of a double-buffered pipeline;
``overlap``
    the smaller of the two: how much of it the pipeline fails to hide;
``ppu``
    the busiest core's post-processing cycles (requantization, additions);
``prologue``
    a fusion group's weights and parameters, loaded by every core through the
    shared port before the first band starts;
``latency``
    one DRAM latency per tile or band of the busiest core;
``issue``
    the busiest core's instructions (fetch, decode, pipeline fill per instruction);
``constant``
    the barrier and the start of a group.

The coefficients are fitted by non-negative least squares on the relative
error, to groups measured on the RTL (the oracle's tiling runs, :mod:`.oracle`).
Samples are stored per HwConfig and per source (model and input size) under
``<rule dir>/costmodel-samples-<hw.hash>/``; the fitted model, with its error
against the RTL (median and worst, per group and per plan; in-sample and with
each source held out), in ``<rule dir>/costmodel-<hw.hash>.json`` beside the
decision rule. :func:`load_cost_model` can refit without one source, so a model
is never tuned with a cost model that has seen its own measurements when other
measurements exist.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...hw.binary import atomic_write, read_json
from ...hw.config import HwConfig
from .errors import TuneError
from .features import GroupFeatures, Workload
from .planrun import PlanRun
from .rule import default_rule_dir

__all__ = ["COSTMODEL_FORMAT", "SAMPLES_FORMAT", "TERMS", "terms", "Sample", "samples_from_runs", "nnls",
           "CostModel", "fit_cost_model", "prediction_errors", "cost_model_path", "samples_dir", "save_samples",
           "load_samples", "calibrate", "load_cost_model"]

COSTMODEL_FORMAT = "dlfusion-costmodel/1"
SAMPLES_FORMAT = "dlfusion-costmodel-samples/1"
TERMS = ("bound", "overlap", "ppu", "prologue", "latency", "issue", "constant")


def terms(features: GroupFeatures, hw: HwConfig) -> np.ndarray:
    """The :data:`TERMS` of a group, in cycles (see the module docstring)."""
    f = features
    port = ((f.load_lines + f.store_lines) * hw.line_bytes + 32 * f.instructions) / hw.dram_bytes_per_cycle
    compute = float(f.pe_cycles)
    prologue = f.prologue_lines * f.cores * hw.line_bytes / hw.dram_bytes_per_cycle
    return np.array([max(compute, port), min(compute, port), f.ppu_cycles, prologue, f.tiles * hw.dram_latency,
                     f.max_core_instructions, 1.0])


@dataclass
class Sample:
    """One group measured on the RTL.

    Attributes
    ----------
    source : str
        Where it comes from (``model@size``).
    run : str
        The plan it was measured in (groups of one run add up to that plan's cycles).
    nodes : list of str
    cores : int
    split : str
    features : GroupFeatures
    cycles : int
    """
    source: str
    run: str
    nodes: list[str]
    cores: int
    split: str
    features: GroupFeatures
    cycles: int

    def to_json(self) -> dict:
        return {"run": self.run, "nodes": self.nodes, "cores": self.cores, "split": self.split,
                "cycles": self.cycles, "features": self.features.to_json()}

    @classmethod
    def from_json(cls, source: str, data: dict) -> Sample:
        return cls(source, data["run"], list(data["nodes"]), int(data["cores"]), data["split"],
                   GroupFeatures.from_json(data["features"]), int(data["cycles"]))


def samples_from_runs(workload: Workload, runs: Iterable[PlanRun], source: str) -> list[Sample]:
    """Every group of every run, with its features."""
    samples = []
    for run in runs:
        for group in run.groups:
            features = workload.features(tuple(group["nodes"]), group["cores"], group["split"])
            samples.append(Sample(source, run.label, list(group["nodes"]), group["cores"], group["split"],
                                  features, int(group["cycles"])))
    return samples


def nnls(a: np.ndarray, b: np.ndarray, *, iterations: int = 200) -> np.ndarray:
    """Non-negative least squares, ``argmin ||a x - b||`` with ``x >= 0`` (Lawson and Hanson's active set)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    n = a.shape[1]
    x = np.zeros(n)
    passive = np.zeros(n, bool)
    tolerance = 1e-10 * max(1.0, float(np.abs(a).max(initial=0.0))) * max(1.0, float(np.abs(b).max(initial=0.0)))
    for _ in range(iterations):
        gradient = a.T @ (b - a @ x)
        candidates = ~passive & (gradient > tolerance)
        if not candidates.any():
            break
        passive[int(np.argmax(np.where(candidates, gradient, -np.inf)))] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            blocking = passive & (z <= 0)
            step = np.min(x[blocking] / np.maximum(x[blocking] - z[blocking], 1e-300))
            x = x + step * (z - x)
            passive &= x > 1e-12
            x[~passive] = 0.0
    return x


def prediction_errors(predicted: Sequence[float], samples: Sequence[Sample]) -> dict:
    """Relative errors ``(predicted - RTL) / RTL``: per group, and per plan (each run's groups summed).

    Returns
    -------
    dict
        ``groups``, ``plans``: counts; ``group_median``, ``group_worst``, ``plan_median``,
        ``plan_worst``: of the absolute relative errors; ``group_bias``: median signed error.
    """
    if not samples:
        return {"groups": 0, "plans": 0}
    group = [(p - s.cycles) / max(1, s.cycles) for p, s in zip(predicted, samples, strict=True)]
    plans: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for p, s in zip(predicted, samples, strict=True):
        plans[(s.source, s.run)][0] += p
        plans[(s.source, s.run)][1] += s.cycles
    plan = [(p - m) / max(1.0, m) for p, m in plans.values()]
    absolute = [abs(e) for e in group]
    plan_absolute = [abs(e) for e in plan]
    return {"groups": len(group), "plans": len(plan), "group_median": statistics.median(absolute),
            "group_worst": max(absolute), "group_bias": statistics.median(group),
            "plan_median": statistics.median(plan_absolute), "plan_worst": max(plan_absolute)}


@dataclass
class CostModel:
    """Fitted coefficients of :data:`TERMS` for one HwConfig.

    Attributes
    ----------
    hw_hash : str
    coefficients : dict of str to float
    sources : list of str
        What it was fitted to (``model@size``).
    error : dict
        Its error against the RTL: ``fit`` (on the samples it was fitted to) and, with
        several sources, ``held_out`` (each source predicted by a model fitted to the others)
        and ``by_source``; see :func:`prediction_errors`.
    samples : int
        Groups it was fitted to.
    held_out_coefficients : dict of str to dict
        With several sources: per source, the coefficients fitted to the other sources
        (what :func:`load_cost_model` returns for ``holdout``).
    """
    hw_hash: str
    coefficients: dict[str, float]
    sources: list[str] = field(default_factory=list)
    error: dict = field(default_factory=dict)
    samples: int = 0
    held_out_coefficients: dict[str, dict[str, float]] = field(default_factory=dict)

    def predict(self, features: GroupFeatures, hw: HwConfig) -> float:
        """Predicted RTL cycles of a group."""
        return float(np.dot(self._vector(), terms(features, hw)))

    def _vector(self) -> np.ndarray:
        return np.array([self.coefficients.get(name, 0.0) for name in TERMS])

    def predict_many(self, samples: Sequence[Sample], hw: HwConfig) -> list[float]:
        vector = self._vector()
        return [float(np.dot(vector, terms(s.features, hw))) for s in samples]

    def explain(self) -> str:
        return " + ".join(f"{value:.3g} x {name}" for name, value in self.coefficients.items() if value)

    def to_json(self) -> dict:
        return {"format": COSTMODEL_FORMAT, "hw_hash": self.hw_hash, "terms": list(TERMS),
                "coefficients": self.coefficients, "sources": self.sources, "samples": self.samples,
                "error": self.error, "held_out_coefficients": self.held_out_coefficients}

    @classmethod
    def from_json(cls, data: dict, *, source: str = "cost model") -> CostModel:
        if not isinstance(data, dict) or data.get("format") != COSTMODEL_FORMAT:
            raise TuneError(f"{source}: not a {COSTMODEL_FORMAT} cost model")
        if list(data.get("terms", [])) != list(TERMS):
            raise TuneError(f"{source}: made with other terms ({data.get('terms')}); calibrate it again")
        return cls(data["hw_hash"], {k: float(v) for k, v in data["coefficients"].items()},
                   list(data.get("sources", [])), data.get("error", {}), int(data.get("samples", 0)),
                   {source: {k: float(v) for k, v in coefficients.items()}
                    for source, coefficients in data.get("held_out_coefficients", {}).items()})

    def write(self, path: str | Path) -> None:
        atomic_write(path, json.dumps(dict(self.to_json(), written=time.strftime("%Y-%m-%dT%H:%M:%S")), indent=1))

    @classmethod
    def read(cls, path: str | Path) -> CostModel:
        data = read_json(path, "cost model", TuneError)
        return cls.from_json(data, source=str(path))


def _fit(samples: Sequence[Sample], hw: HwConfig) -> np.ndarray:
    a = np.array([terms(s.features, hw) for s in samples])
    b = np.array([float(s.cycles) for s in samples])
    weight = 1.0 / np.maximum(b, 1.0)            # least squares on the relative error
    scale = np.maximum(np.abs(a).max(axis=0), 1e-9)
    return nnls(a * weight[:, None] / scale, b * weight) / scale


def fit_cost_model(samples: Sequence[Sample], hw: HwConfig, *, held_out: bool = True) -> CostModel:
    """Fit the coefficients to RTL-measured groups and measure the fit's error (``held_out``: also
    each source's error under a model fitted to the other sources).

    Raises
    ------
    TuneError
        No samples.
    """
    samples = list(samples)
    if not samples:
        raise TuneError("no measured groups to calibrate the cost model on")
    coefficients = _fit(samples, hw)
    model = CostModel(hw.hash, {name: float(value) for name, value in zip(TERMS, coefficients, strict=True)},
                      sorted({s.source for s in samples}), samples=len(samples))
    error = {"fit": prediction_errors(model.predict_many(samples, hw), samples)}
    if held_out and len(model.sources) > 1:
        predictions, measured = [], []
        by_source = {}
        for source in model.sources:
            inside = [s for s in samples if s.source != source]
            outside = [s for s in samples if s.source == source]
            other = CostModel(hw.hash, dict(zip(TERMS, map(float, _fit(inside, hw)), strict=True)))
            model.held_out_coefficients[source] = other.coefficients
            predicted = other.predict_many(outside, hw)
            by_source[source] = prediction_errors(predicted, outside)
            predictions += predicted
            measured += outside
        error["held_out"] = prediction_errors(predictions, measured)
        error["by_source"] = by_source
    model.error = error
    return model


# -- storage -------------------------------------------------------------------------------------

def cost_model_path(hw: HwConfig, directory: str | Path | None = None) -> Path:
    """``<directory>/costmodel-<hw.hash>.json`` (default: the rule directory, ``build/tune``)."""
    return (Path(directory) if directory is not None else default_rule_dir()) / f"costmodel-{hw.hash}.json"


def samples_dir(hw: HwConfig, directory: str | Path | None = None) -> Path:
    return (Path(directory) if directory is not None else default_rule_dir()) / f"costmodel-samples-{hw.hash}"


def _source_file(source: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@-]", "_", source) + ".json"


def save_samples(hw: HwConfig, source: str, samples: Sequence[Sample], directory: str | Path | None = None) -> Path:
    """Store (replace) the samples of one source."""
    path = samples_dir(hw, directory) / _source_file(source)
    atomic_write(path, json.dumps({"format": SAMPLES_FORMAT, "hw_hash": hw.hash, "source": source,
                                   "samples": [s.to_json() for s in samples]}))
    return path


def load_samples(hw: HwConfig, directory: str | Path | None = None) -> list[Sample]:
    """Every stored sample of ``hw`` (unreadable files are skipped)."""
    samples = []
    for path in sorted(samples_dir(hw, directory).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if data.get("format") != SAMPLES_FORMAT or data.get("hw_hash") != hw.hash:
            continue
        samples += [Sample.from_json(data["source"], item) for item in data["samples"]]
    return samples


def calibrate(hw: HwConfig, directory: str | Path | None = None) -> CostModel:
    """Fit the cost model to every stored sample of ``hw`` and store it beside the rule."""
    model = fit_cost_model(load_samples(hw, directory), hw)
    model.write(cost_model_path(hw, directory))
    return model


def load_cost_model(hw: HwConfig, directory: str | Path | None = None, *, holdout: str | None = None) -> CostModel:
    """The cost model calibrated for ``hw``.

    Parameters
    ----------
    holdout : str, optional
        A source (``model@size``) the model must not have seen: if the stored model was
        fitted with it and with others, the coefficients fitted without it (stored at
        calibration) are returned, with ``error["on_held_out_source"]`` their error on it
        (a model fitted to that source alone is returned as it is; check ``sources``).

    Raises
    ------
    TuneError
        There is none (the message names the command that makes one), or it is for another
        HwConfig.
    """
    path = cost_model_path(hw, directory)
    if not path.exists():
        raise TuneError(f"no cost model for HwConfig {hw.hash} ({hw.describe()}) at {path}; calibrate one with: "
                        "dlfusion tune MODEL --strategy oracle --hw <this config's TOML> (the oracle's RTL "
                        "measurements are its calibration data)")
    model = CostModel.read(path)
    if model.hw_hash != hw.hash:
        raise TuneError(f"{path} was calibrated for HwConfig {model.hw_hash}, not {hw.hash}")
    if holdout is not None and holdout in model.sources and len(model.sources) > 1:
        if holdout not in model.held_out_coefficients:     # written before they were stored: fit them now
            model = fit_cost_model(load_samples(hw, directory), hw)
        others = [source for source in model.sources if source != holdout]
        on_holdout = model.error.get("by_source", {}).get(holdout, {})
        return CostModel(model.hw_hash, model.held_out_coefficients[holdout], others,
                         {"held_out_source": holdout, "on_held_out_source": on_holdout},
                         model.samples - int(on_holdout.get("groups", 0)))
    return model
