"""The tuning benchmark over the model zoo (``dlfusion bench tune``, part of ``make bench``).

Two passes over the models, each a :func:`~.tune.tune` run whose RTL
measurements go through the cache:

1. the oracle (and the ``none`` baseline) of every model: RTL runs of the tiling
   plans, which also calibrate the cost model of the HwConfig;
2. every strategy of every model. The oracle's runs come from the cache, so
   its ``search_seconds`` are those recorded when they were made; ``fusion-only``
   and ``dlfusion`` use a cost model fitted to the *other* models' measurements
   (this model held out). The cost model lives in ``<report>/rules/`` (with a
   copy of the HwConfig's rule), so it is fitted to the bench's models only.

:func:`tune_bench` writes the report (:mod:`.report`) and returns the per-model
results; :func:`~.report.summary_table` is the table of the issue's targets:
dlfusion's fraction of the oracle's speedup and the ratio of their search times.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from ...hw.config import HwConfig
from ..ir import Graph
from .cache import MeasurementCache
from .executor import Executor
from .oracle import DEFAULT_MAX_GROUP
from .report import write_report
from .rule import rule_path
from .tune import check_inputs, tune

__all__ = ["BENCH_MODELS", "BENCH_INPUT_SIZE", "tune_bench"]

#: The zoo of the issue's targets.
BENCH_MODELS = ("resnet18", "resnet50", "mobilenet_v2", "vgg16", "squeezenet1_1")

#: Their input size in the benchmark.
BENCH_INPUT_SIZE = 64


def tune_bench(hw: HwConfig, graphs: Sequence[tuple[Graph, str]], report_dir: str | Path, *, executor: Executor,
               cache: MeasurementCache, rule_dir: str | Path | None = None, max_group: int = DEFAULT_MAX_GROUP,
               progress: bool = False) -> list[dict]:
    """Tune every graph with every strategy, the oracles first; write the report to ``report_dir``.

    Parameters
    ----------
    hw : HwConfig
    graphs : sequence of (Graph, str)
        The models and their sources (``model@size``), as :func:`~.tune.load_model` returns them.
    report_dir : path
        The report's directory; the bench's own rule directory is ``<report_dir>/rules``.
    executor : Executor
        Runs the RTL measurements (left open).
    cache : MeasurementCache
    rule_dir : path, optional
        Where the HwConfig's rule is (default ``build/tune``); it is copied into the bench's.
    max_group : int
    progress : bool
        Progress bars on stderr.

    Returns
    -------
    list of dict
        The :func:`~.tune.tune` result of every model, in ``graphs`` order.

    Raises
    ------
    TuneError
        No rule for ``hw``.
    MeasurementFailed
        An RTL run failed or an output differed from its reference.
    """
    check_inputs(hw, ["cores-only"], rule_dir)
    # The bench's own rule directory: the rule copied in, the cost model fitted to the bench's models only,
    # so earlier tune runs on other models (make demo's tiny_cnn) do not change its plans.
    bench_rules = Path(report_dir) / "rules"
    bench_rules.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(rule_path(hw, rule_dir), rule_path(hw, bench_rules))
    for graph, source in graphs:
        tune(graph, hw, ["oracle"], executor=executor, cache=cache, source=source, rule_dir=bench_rules,
             max_group=max_group, progress=progress)
    reports = []
    for graph, source in graphs:
        report = tune(graph, hw, ["all"], executor=executor, cache=cache, source=source, rule_dir=bench_rules,
                      max_group=max_group, progress=progress)
        write_report(report, report_dir)
        reports.append(report)
    return reports
