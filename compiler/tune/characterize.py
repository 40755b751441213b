"""The characterization study: synthesized layers measured on the RTL at every core count and split.

A :class:`Grid` names the layers: 3x3 and 1x1 convolutions, depthwise 3x3
convolutions and fully connected layers over a range of spatial sizes and
channel counts (channels in multiples of the HwConfig's lane count, so a grid
means the same thing on every configuration; layers whose estimated one-core
cycles exceed the grid's budget, or that do not fit the configuration, are
left out). Each layer is compiled with :mod:`dlfusion.compiler.layers` for
every core count of the grid and both split axes (one core is measured once:
both axes give the same program), run on the RTL through an
:class:`~.executor.Executor` and the measurement cache, and its output checked
against the layer's numpy reference; a mismatch or an accelerator error fails
the study, it is never a data point.

:func:`characterize` writes ``characterization.csv`` (one row per layer x
cores x split), ``characterization.json`` (the summary), PNG plots, and the
decision rule fitted to the data (:mod:`.rule`), both beside them and where
:func:`~.rule.load_rule` finds it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ...hw.asm import AsmError
from ...hw.binary import Binary, atomic_write
from ...hw.config import HwConfig
from ...hw.errors import EXIT_ACCELERATOR, EXIT_MISMATCH, DlfusionError, MismatchError
from .. import layers
from ..errors import CompileError
from ..plan import SPLITS
from .cache import MeasurementCache, default_build_dir, measure, measurement_key
from .errors import TuneError
from .executor import Executor, LocalExecutor, RayExecutor
from .rule import Sample, fit_rule, layer_features, rule_path

__all__ = ["LayerSpec", "Grid", "GRIDS", "resolve_grid", "CharacterizationError", "OutputMismatch", "run_layer",
           "characterize", "read_samples", "CSV_COLUMNS", "default_out_dir"]

_log = logging.getLogger(__name__)

CSV_COLUMNS = ("layer", "kind", "k", "stride", "cin", "cout", "h", "w", "out_h", "out_w", "macs", "cores", "split",
               "cores_used", "cycles", "speedup", "utilization", "best", "dram_bytes", "dma_stall", "sparsity")


class CharacterizationError(DlfusionError):
    """Some measurements of the study failed.

    Attributes
    ----------
    errors : list of str
        One line per failed measurement.
    exit_status : int
        :data:`~dlfusion.hw.errors.EXIT_MISMATCH` (4) if an output did not match its
        reference, else :data:`~dlfusion.hw.errors.EXIT_ACCELERATOR` (3).
    """

    def __init__(self, message: str, errors: list[str], exit_status: int):
        super().__init__(message)
        self.errors = errors
        self.exit_status = exit_status


class OutputMismatch(MismatchError):
    """The RTL's output differs from the layer's numpy reference (status 4)."""


# -- layers and grids -----------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerSpec:
    """One synthesized layer.

    Attributes
    ----------
    kind : {"conv", "depthwise", "fc"}
    k : int
        Kernel size (1 for fc).
    cin, cout : int
        Input and output channels (equal for depthwise; fc: fan-in and outputs).
    h, w : int
        Input size (1 x 1 for fc).
    stride : int
    prune : str or None
        conv/fc: the N:M pattern (``"2:4"``, ``"1:4"``) its seeded weights are pruned to; it runs sparse.
    """
    kind: str
    k: int
    cin: int
    cout: int
    h: int
    w: int
    stride: int = 1
    prune: str | None = None

    @property
    def name(self) -> str:
        pruned = f"_{self.prune.replace(':', 'of')}" if self.prune else ""
        if self.kind == "fc":
            return f"fc_{self.cin}to{self.cout}{pruned}"
        kind = "dwconv" if self.kind == "depthwise" else "conv"
        return f"{kind}{self.k}x{self.k}s{self.stride}_{self.h}x{self.w}_{self.cin}to{self.cout}{pruned}"

    @property
    def density(self) -> float:
        """N/M of the pattern its weights run with (1 dense)."""
        if not self.prune:
            return 1.0
        n, m = self.prune.split(":")
        return int(n) / int(m)

    @property
    def seed(self) -> int:
        """Seed of the layer's random data, stable across runs and machines."""
        return zlib.crc32(self.name.encode()) % 100_000

    @property
    def out_hw(self) -> tuple[int, int]:
        pad = self.k // 2
        return ((self.h + 2 * pad - self.k) // self.stride + 1, (self.w + 2 * pad - self.k) // self.stride + 1)

    @property
    def macs(self) -> int:
        oh, ow = self.out_hw
        per_output = self.k * self.k * (self.cin if self.kind in ("conv", "fc") else 1)
        return self.cout * oh * ow * per_output

    def features(self) -> dict:
        oh, ow = self.out_hw
        return layer_features(self.kind, kernel=self.k, stride=self.stride, in_channels=self.cin,
                              out_channels=self.cout, in_height=self.h, in_width=self.w, out_height=oh,
                              out_width=ow, macs=self.macs, density=self.density)

    def estimated_cycles(self, hw: HwConfig) -> float:
        """A one-core bound (compute or DRAM) used only to keep a grid within its time budget."""
        oh, ow = self.out_hw
        rate = hw.lanes if self.kind == "depthwise" else hw.macs_per_cycle
        weights = self.cout * self.k * self.k * (1 if self.kind == "depthwise" else self.cin) * self.density
        dram_bytes = self.cin * self.h * self.w + self.cout * oh * ow + weights
        return max(self.macs * self.density / rate, dram_bytes / hw.dram_bytes_per_cycle)

    def build(self, hw: HwConfig, cores: int, split: str) -> layers.LayerCase:
        common = dict(seed=self.seed, cores=cores, split=split)
        if self.prune:
            common.update(prune=self.prune, sparse_exec="on")
        if self.kind == "conv":
            return layers.build_conv(hw, h=self.h, w=self.w, cin=self.cin, cout=self.cout, k=self.k,
                                     stride=self.stride, **common)
        if self.kind == "depthwise":
            return layers.build_dwconv(hw, h=self.h, w=self.w, c=self.cin, k=self.k, stride=self.stride, **common)
        if self.kind == "fc":
            return layers.build_fc(hw, cin=self.cin, cout=self.cout, **common)
        raise TuneError(f"unknown layer kind {self.kind!r}; accepted: conv, depthwise, fc")


@dataclass(frozen=True)
class Grid:
    """A set of synthesized layers and the core counts to measure them at.

    For every spatial size ``s`` and channel multiple ``m`` (``c = m * lanes``): a
    3x3 and a 1x1 convolution ``c -> c`` and a depthwise 3x3 convolution on ``s x s``;
    with ``downsampling`` also a stride-2 3x3 convolution ``c -> 2c``, a stride-2
    depthwise convolution and a 1x1 expansion ``c -> 4c``. Fully connected layers
    ``fc_in[i] * lanes -> fc_out[j] * lanes``. Layers estimated above ``max_cycles``
    one-core cycles are left out.

    Attributes
    ----------
    every_core_count : bool
        Measure at every core count 1..cores; otherwise at the powers of two below
        ``cores`` and ``cores``.
    sparse_spatial, sparse_channels : tuple of int
        Pruned layers, at every pattern of the HwConfig's ``sparse_patterns``: per size and channel
        multiple (at least 4 blocks, a whole 1:4 window) a 3x3 and a 1x1 convolution ``c -> c``; and the
        fully connected layer ``fc_in[-1] * lanes -> fc_out[-1] * lanes``.
    """
    name: str
    spatial: tuple[int, ...]
    channels: tuple[int, ...]
    fc_in: tuple[int, ...]
    fc_out: tuple[int, ...]
    max_cycles: int
    downsampling: bool = False
    every_core_count: bool = False
    sparse_spatial: tuple[int, ...] = ()
    sparse_channels: tuple[int, ...] = ()

    def candidates(self, hw: HwConfig) -> list[LayerSpec]:
        lanes = hw.lanes
        specs = []
        for s in self.spatial:
            for m in self.channels:
                c = m * lanes
                specs += [LayerSpec("conv", 3, c, c, s, s), LayerSpec("conv", 1, c, c, s, s),
                          LayerSpec("depthwise", 3, c, c, s, s)]
                if self.downsampling:
                    specs += [LayerSpec("conv", 3, c, 2 * c, s, s, stride=2),
                              LayerSpec("depthwise", 3, c, c, s, s, stride=2),
                              LayerSpec("conv", 1, c, 4 * c, s, s)]
        for a in self.fc_in:
            for b in self.fc_out:
                specs.append(LayerSpec("fc", 1, a * lanes, b * lanes, 1, 1))
        for pattern in hw.sparse_patterns:
            for s in self.sparse_spatial:
                for m in self.sparse_channels:
                    c = m * lanes
                    specs += [LayerSpec("conv", 3, c, c, s, s, prune=pattern), LayerSpec("conv", 1, c, c, s, s,
                                                                                         prune=pattern)]
            if self.sparse_spatial and self.fc_in:
                specs.append(LayerSpec("fc", 1, self.fc_in[-1] * lanes, self.fc_out[-1] * lanes, 1, 1, prune=pattern))
        unique = list(dict.fromkeys(specs))
        return [spec for spec in unique if spec.estimated_cycles(hw) <= self.max_cycles]

    def core_counts(self, hw: HwConfig) -> list[int]:
        if self.every_core_count:
            return list(range(1, hw.cores + 1))
        counts = {1 << i for i in range(hw.cores.bit_length()) if 1 << i <= hw.cores}
        return sorted(counts | {hw.cores})


GRIDS = {
    # CI: about 30 layers, 5 runs each on a 4-core configuration; a few minutes at most on 2 CPUs.
    "small": Grid("small", spatial=(4, 8, 16), channels=(1, 4, 16), fc_in=(8, 32, 128), fc_out=(2, 8, 32),
                  max_cycles=40_000, sparse_spatial=(8,), sparse_channels=(4,)),
    # make bench: network-like sizes (7..56 pixels, up to 32 * lanes channels, stride-2 layers).
    "full": Grid("full", spatial=(7, 14, 28, 56), channels=(1, 2, 4, 8, 16, 32), fc_in=(16, 64, 256),
                 fc_out=(4, 16, 64), max_cycles=600_000, downsampling=True, every_core_count=True,
                 sparse_spatial=(7, 14, 28, 56), sparse_channels=(4, 8, 16, 32)),
}


def resolve_grid(grid: str | Grid) -> Grid:
    """A grid by name (:data:`GRIDS`) or itself."""
    if isinstance(grid, Grid):
        return grid
    if grid not in GRIDS:
        raise TuneError(f"unknown grid {grid!r}; accepted: {', '.join(GRIDS)}")
    return GRIDS[grid]


def default_out_dir(hw: HwConfig) -> Path:
    """``<build>/characterize/<hw.hash>``."""
    return default_build_dir() / "characterize" / hw.hash


# -- one measurement ------------------------------------------------------------------------------

def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def run_layer(task: dict) -> dict:
    """Run one compiled layer on the RTL and check it (an executor job; runs in a worker).

    Parameters
    ----------
    task : dict
        ``hw`` (HwConfig dict), ``binary`` (bytes), ``inputs``, ``expected`` (name to array),
        and ``static``: facts of the program carried into the result.

    Returns
    -------
    dict
        ``cycles``, ``counters`` (per core), ``output_sha256`` (per output), ``sim_seconds``
        and the ``static`` facts.

    Raises
    ------
    AcceleratorError
        The accelerator stopped with an error.
    OutputMismatch
        An output differs from its reference.
    """
    from ...sim.rtl import RtlSimulator
    from ...sim.runtime import AcceleratorError
    hw = HwConfig.from_dict(task["hw"])
    binary = Binary.from_bytes(task["binary"])
    result = RtlSimulator(hw).run(binary, task["inputs"])
    if result.error is not None:
        raise AcceleratorError(result.error, None)
    for name, expected in task["expected"].items():
        got = result.outputs[name]
        if got.shape != expected.shape or not np.array_equal(got, expected):
            wrong = int(np.count_nonzero(got != expected)) if got.shape == expected.shape else got.size
            raise OutputMismatch(f"output {name!r} differs from the numpy reference in {wrong} of "
                                 f"{expected.size} elements")
    return {"cycles": int(result.cycles), "counters": result.counters,
            "output_sha256": {name: _sha256(array) for name, array in result.outputs.items()},
            "sim_seconds": getattr(result, "sim_seconds", None), **task["static"]}


@dataclass(frozen=True)
class _Job:
    layer: LayerSpec
    cores: int
    split: str


def _prepare(hw: HwConfig, expected_sha: dict):
    from ...sim.traffic import dram_traffic

    def prepare(job: _Job):
        case = job.layer.build(hw, job.cores, job.split)
        blob = case.binary.to_bytes()
        key = measurement_key(hw, blob, *(case.inputs[name] for name in sorted(case.inputs)))
        expected_sha[job] = {name: _sha256(array) for name, array in case.expected.items()}
        static = {"cores_used": int(case.description["cores"]), "macs": int(case.macs),
                  "dram_bytes": int(dram_traffic(case.binary)["total_bytes"])}
        return key, {"hw": hw.to_dict(), "binary": blob, "inputs": case.inputs, "expected": case.expected,
                     "static": static}

    return prepare


# -- the study ------------------------------------------------------------------------------------

def _feasible(hw: HwConfig, specs: list[LayerSpec]) -> tuple[list[LayerSpec], list[dict]]:
    kept, skipped = [], []
    for spec in specs:
        try:
            spec.build(hw, 1, "rows")
        except (CompileError, AsmError) as error:   # AsmError: its tensors do not fit in DRAM
            skipped.append({"layer": spec.name, "reason": str(error)})
        else:
            kept.append(spec)
    return kept, skipped


def _rows(specs, core_counts, results, hw) -> list[dict]:
    rows = []
    for spec in specs:
        oh, ow = spec.out_hw
        choices = [(cores, split) for cores in core_counts for split in SPLITS]
        measured = {(c, s): results[_Job(spec, c, "rows" if c == 1 else s)] for c, s in choices}
        base = measured[(1, "rows")]["cycles"]
        best = min(r["cycles"] for r in measured.values())
        for (cores, split), r in measured.items():
            rows.append({"layer": spec.name, "kind": spec.kind, "k": spec.k, "stride": spec.stride, "cin": spec.cin,
                         "cout": spec.cout, "h": spec.h, "w": spec.w, "out_h": oh, "out_w": ow, "macs": spec.macs,
                         "cores": cores, "split": split, "cores_used": r["cores_used"], "cycles": r["cycles"],
                         "speedup": round(base / r["cycles"], 4),
                         "utilization": round(spec.macs / (hw.macs_per_cycle * r["cores_used"] * r["cycles"]), 5),
                         "best": int(r["cycles"] == best), "dram_bytes": r["dram_bytes"],
                         "dma_stall": sum(c["dma_stall"] for c in r["counters"]), "sparsity": spec.prune or ""})
    return rows


def _csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def read_samples(csv_path: str | Path) -> list[Sample]:
    """The fitting samples of a ``characterization.csv``: per layer, its features and the cycles of
    every choice (one core as ``(1, "rows")``)."""
    by_layer: dict[str, tuple[LayerSpec, dict]] = {}
    with open(csv_path, newline="") as file:
        for row in csv.DictReader(file):
            spec = LayerSpec(row["kind"], int(row["k"]), int(row["cin"]), int(row["cout"]), int(row["h"]),
                             int(row["w"]), int(row["stride"]), row.get("sparsity") or None)
            cores = int(row["cores"])
            choice = (cores, "rows" if cores == 1 else row["split"])
            by_layer.setdefault(row["layer"], (spec, {}))[1][choice] = int(row["cycles"])
    return [Sample(name, spec.features(), cycles) for name, (spec, cycles) in by_layer.items()]


def characterize(hw: HwConfig, *, grid: str | Grid = "small", out_dir: str | Path | None = None,
                 executor: Executor | None = None, cache: MeasurementCache | None = None,
                 rule_dir: str | Path | None = None, progress: bool = False) -> dict:
    """Measure a grid of layers on the RTL, write the dataset and plots, fit and store the rule.

    Parameters
    ----------
    hw : HwConfig
    grid : str or Grid
        ``"small"`` (CI), ``"full"`` (``make bench``), or a :class:`Grid`.
    out_dir : path, optional
        Where the CSV, JSON summary, plots and a copy of the rule go
        (default :func:`default_out_dir`).
    executor : Executor, optional
        Default: a :class:`~.executor.LocalExecutor` on every CPU (closed afterwards).
    cache : MeasurementCache, optional
        Default: the cache in ``build/tune-cache``.
    rule_dir : path, optional
        Where the tuner looks the rule up (default :func:`~.rule.default_rule_dir`).
    progress : bool
        A progress bar on stderr (messages go to the module's logger).

    Returns
    -------
    dict
        The summary also written to ``characterization.json``: counts, timings, the
        paths written and the rule's ``accuracy``.

    Raises
    ------
    TuneError
        Unknown grid, or no layer of the grid fits the configuration.
    CharacterizationError
        A measurement failed or an output differed from its reference.
    """
    started = time.perf_counter()
    grid = resolve_grid(grid)
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(hw)
    cache = cache if cache is not None else MeasurementCache()
    specs, skipped = _feasible(hw, grid.candidates(hw))
    if not specs:
        raise TuneError(f"no layer of the {grid.name!r} grid fits HwConfig {hw.hash} ({hw.describe()})")
    core_counts = grid.core_counts(hw)
    jobs = [_Job(spec, cores, split) for spec in specs for cores in core_counts
            for split in (("rows",) if cores == 1 else SPLITS)]
    own_executor = executor is None
    executor = LocalExecutor() if own_executor else executor

    _log.info("characterize: %d layers (%s grid) x cores %s x splits = %d RTL runs on %s (HwConfig %s), executor %s%s",
              len(specs), grid.name, core_counts, len(jobs), hw.describe(), hw.hash, executor.name,
              f", {len(skipped)} layer(s) do not fit and are left out" if skipped else "")
    if isinstance(executor, LocalExecutor) or (isinstance(executor, RayExecutor) and executor.address is None):
        from ...sim.rtl import RtlSimulator
        simulator = RtlSimulator(hw)
        _log.info("building/checking the RTL model in %s (a first build takes minutes)...", simulator.model_dir)
        simulator.build()

    expected_sha: dict[_Job, dict] = {}
    results, errors = {}, []
    cached = 0
    measurement_seconds = 0.0
    try:
        for m in measure(jobs, _prepare(hw, expected_sha), run_layer, executor=executor, cache=cache,
                         hw_hash=hw.hash, progress=progress, label="characterize",
                         describe=lambda job: dict(asdict(job.layer), name=job.layer.name, cores=job.cores,
                                                   split=job.split)):
            where = f"{m.spec.layer.name} on {m.spec.cores} core(s) split by {m.spec.split}"
            if not m.ok:
                errors.append(f"{where}: {m.error}")
                continue
            if m.result["output_sha256"] != expected_sha.get(m.spec):
                errors.append(f"{where}: OutputMismatch: the cached output differs from the numpy reference")
                continue
            results[m.spec] = m.result
            cached += m.cached
            measurement_seconds += m.seconds
    finally:
        if own_executor:
            executor.close()
    if errors:
        mismatch = any("OutputMismatch" in e for e in errors)
        raise CharacterizationError(f"{len(errors)} of {len(jobs)} measurements failed:\n  " + "\n  ".join(errors),
                                    errors, EXIT_MISMATCH if mismatch else EXIT_ACCELERATOR)

    rows = _rows(specs, core_counts, results, hw)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "characterization.csv"
    atomic_write(csv_path, _csv_text(rows))
    samples = read_samples(csv_path)
    rule = fit_rule(samples, hw, metadata={"grid": grid.name, "layers": len(samples),
                                           "dataset_sha256": hashlib.sha256(csv_path.read_bytes()).hexdigest(),
                                           "core_counts": core_counts})
    rule_paths = [rule_path(hw, out_dir), rule_path(hw, rule_dir)]
    for path in rule_paths:
        rule.write(path)
    from .plots import plot_characterization
    plots = plot_characterization(rows, out_dir, title=f"{hw.describe()} (HwConfig {hw.hash}), {grid.name} grid")
    summary = {
        "hw": hw.to_dict(), "hw_hash": hw.hash, "grid": grid.name, "layers": len(specs),
        "skipped": skipped, "core_counts": core_counts, "splits": list(SPLITS), "rows": len(rows),
        "runs": len(jobs), "measured": len(jobs) - cached, "cached": cached,
        "measurement_seconds": round(measurement_seconds, 3),
        "wall_seconds": round(time.perf_counter() - started, 3),
        "executor": executor.name, "csv": str(csv_path), "plots": [str(p) for p in plots],
        "rule": str(rule_paths[1]), "rule_copy": str(rule_paths[0]),
        "accuracy": rule.accuracy, "rule_text": rule.explain(),
    }
    atomic_write(out_dir / "characterization.json", json.dumps(summary, indent=1))
    return summary

