"""The tuning report: markdown, JSON and PNG plots, one section per model.

:func:`write_report` merges the results of :func:`~.tune.tune` into
``<dir>/tune-report.json`` (results of other models already there are kept, so
running ``dlfusion tune MODEL --report DIR`` model after model builds one
report), then rewrites ``<dir>/tune-report.md`` and per model
``cycles-<source>.png`` (RTL cycles and speedup of every strategy) and
``plans-<source>.png`` (each strategy's plan drawn per layer: group boundaries,
core counts, split axes). :func:`comparison_table` is the text table the command
line prints, :func:`summary_table` the one of ``dlfusion bench tune``.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

from ...hw.binary import atomic_write
from .strategies import STRATEGIES

__all__ = ["REPORT_FORMAT", "comparison_table", "summary_rows", "summary_table", "write_report"]

REPORT_FORMAT = "dlfusion-tune-report/1"


def _file_stem(source: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", source.replace("@", "-"))


def comparison_table(report: dict) -> str:
    """One line per strategy: RTL cycles, speedup, fraction of the oracle's speedup, search time, groups."""
    results = report["strategies"]
    lines = [f"{report['model']} at {report['input_size']}x{report['input_size']} on {report['hw_description']} "
             f"(HwConfig {report['hw_hash']}); cycles measured on the RTL",
             f"{'strategy':12} {'RTL cycles':>12} {'speedup':>8} {'of oracle':>10} {'search s':>10} "
             f"{'groups':>7} {'fused':>6} {'cores':>9}"]
    for name in STRATEGIES:
        if name not in results:
            continue
        r = results[name]
        fraction = f"{r['oracle_fraction']:.1%}" if "oracle_fraction" in r else "-"
        cores = ",".join(map(str, r["cores_used"]))
        lines.append(f"{name:12} {r['cycles']:>12,} {r['speedup']:>7.2f}x {fraction:>10} "
                     f"{r['search_seconds']:>10.3g} {r['groups']:>7} {r['fused_groups']:>6} {cores:>9}")
    bound = report.get("roofline")
    if bound:
        lines.append(f"roofline on {report['hw']['cores']} cores: {bound['cycles']:,} cycles ({bound['bound']}-bound: "
                     f"{bound['compute_cycles']:,} compute, {bound['memory_cycles']:,} for the "
                     f"{bound['min_dram_bytes']:,} B every schedule moves), a speedup ceiling of "
                     f"{bound['ceiling_speedup']:.2f}x over none")
    oracle = report.get("oracle")
    if oracle:
        lines.append(f"oracle: {oracle['plans_measured']} tiling plans on the RTL, {oracle['candidates']} candidate "
                     f"groups; its plan's RTL cycles vs the sum of its measured groups: "
                     f"{oracle['additivity_error']:+.2%} (bound {oracle['additivity_tolerance']:.0%})")
    model = report.get("cost_model")
    if model and "error_on_this_model" in model:
        error = model["error_on_this_model"]
        fitted = ("held out: fitted to " + ", ".join(model["sources"]) if model["held_out"]
                  else "fitted to this model's measurements")
        lines.append(f"cost model ({fitted}) vs RTL on this model's {error['groups']} measured groups: "
                     f"median {error['group_median']:.1%}, "
                     f"worst {error['group_worst']:.1%}; per plan median {error['plan_median']:.1%}, "
                     f"worst {error['plan_worst']:.1%}")
    return "\n".join(lines)


def summary_rows(reports: dict[str, dict]) -> list[dict]:
    """Per model: the cycles of every strategy and the headline ratios."""
    rows = []
    for source, report in reports.items():
        results = report["strategies"]
        row = {"source": source, "model": report["model"], "input_size": report["input_size"],
               "baseline_cycles": report["baseline_cycles"]}
        if "roofline" in report:
            row["roofline_cycles"] = report["roofline"]["cycles"]
            row["roofline_bound"] = report["roofline"]["bound"]
            row["ceiling_speedup"] = report["roofline"]["ceiling_speedup"]
        for name in STRATEGIES:
            if name in results:
                row[f"{name}_cycles"] = results[name]["cycles"]
                row[f"{name}_speedup"] = results[name]["speedup"]
                row[f"{name}_search_seconds"] = results[name]["search_seconds"]
        if "dlfusion" in results and "oracle" in results:
            row["dlfusion_oracle_fraction"] = results["dlfusion"]["oracle_fraction"]
            row["search_ratio"] = (results["oracle"]["search_seconds"]
                                   / max(1e-9, results["dlfusion"]["search_seconds"]))
        rows.append(row)
    return rows


def summary_table(rows: list[dict]) -> str:
    """The text table of :func:`summary_rows` with dlfusion and the oracle (the tuning benchmark's)."""
    lines = [f"{'model':14} {'size':>4} {'none':>11} {'dlfusion':>11} {'oracle':>11} {'dlf x':>6} {'orc x':>6} "
             f"{'ceiling':>7} {'of oracle':>9} {'dlf search s':>12} {'oracle search s':>15} {'ratio':>9}"]
    for row in rows:
        lines.append(f"{row['model']:14} {row['input_size']:>4} {row['baseline_cycles']:>11,} "
                     f"{row['dlfusion_cycles']:>11,} {row['oracle_cycles']:>11,} {row['dlfusion_speedup']:>6.2f} "
                     f"{row['oracle_speedup']:>6.2f} {row['ceiling_speedup']:>7.2f} "
                     f"{row['dlfusion_oracle_fraction']:>9.1%} {row['dlfusion_search_seconds']:>12.3f} "
                     f"{row['oracle_search_seconds']:>15,.0f} {row['search_ratio']:>9,.0f}")
    return "\n".join(lines)


def _save(figure, path: Path) -> None:
    """A PNG of ``figure``, written so that no reader sees half of it; the figure closed."""
    import matplotlib.pyplot as plt
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=110)
    plt.close(figure)
    atomic_write(path, image.getvalue())


def _plot_cycles(report: dict, path: Path) -> None:
    import matplotlib.pyplot as plt
    results = report["strategies"]
    names = [n for n in STRATEGIES if n in results]
    cycles = [results[n]["cycles"] for n in names]
    figure, axis = plt.subplots(figsize=(7, 3.6))
    colors = ["#999999", "#4c72b0", "#55a868", "#c44e52", "#8172b2"]
    bars = axis.bar(names, cycles, color=[colors[STRATEGIES.index(n)] for n in names])
    for bar, name in zip(bars, names, strict=True):
        axis.annotate(f"{results[name]['speedup']:.2f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                      ha="center", va="bottom", fontsize=9)
    axis.set_ylabel("RTL cycles")
    axis.set_title(f"{report['model']} {report['input_size']}px: cycles and speedup over none", fontsize=10)
    axis.margins(y=0.15)
    figure.tight_layout()
    _save(figure, path)


def _plot_plans(report: dict, path: Path) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle
    results = report["strategies"]
    names = [n for n in STRATEGIES if n in results]
    cores = int(report["hw"]["cores"])
    cmap = plt.get_cmap("viridis", cores)
    layers = report["layers"]
    figure, axis = plt.subplots(figsize=(max(7.0, 0.16 * layers + 2), 0.55 * len(names) + 2.0))
    for row, name in enumerate(names):
        y = len(names) - 1 - row
        position = 0
        for group in results[name]["plan"]["groups"]:
            width = len(group["nodes"])
            color = cmap((group["cores"] - 1) / max(1, cores - 1))
            hatch = "///" if group["split"] == "channels" and group["cores"] > 1 else None
            axis.add_patch(Rectangle((position, y + 0.1), width, 0.8, facecolor=color, edgecolor="black",
                                     linewidth=1.2 if width > 1 else 0.4, hatch=hatch))
            if width > 1:
                axis.text(position + width / 2, y + 0.5, str(group["cores"]), ha="center", va="center",
                          fontsize=7, bbox={"boxstyle": "round,pad=0.1", "facecolor": "white", "linewidth": 0})
            position += width
    axis.set_xlim(0, layers)
    axis.set_ylim(0, len(names))
    axis.set_yticks([len(names) - 1 - i + 0.5 for i in range(len(names))], names)
    axis.set_xlabel("layer (graph order); a box is a group, wide boxes are fusion groups")
    legend = [Patch(facecolor=cmap((c - 1) / max(1, cores - 1)), label=f"{c} core{'s' if c > 1 else ''}")
              for c in range(1, cores + 1)]
    legend.append(Patch(facecolor="white", edgecolor="black", hatch="///", label="split by channels"))
    figure.legend(handles=legend, loc="lower center", ncol=len(legend), fontsize=8, frameon=False)
    axis.set_title(f"{report['model']} {report['input_size']}px: plans per layer", fontsize=10)
    figure.tight_layout(rect=(0, 0.1, 1, 1))
    _save(figure, path)


def _markdown(reports: dict[str, dict]) -> str:
    lines = ["# dlfusion tuning report", "",
             "Cycles are measured on the RTL (Verilator). Speedup is over the `none` baseline (every layer its own "
             "group on one core), also measured on the RTL. *Of oracle* is the oracle's cycles over the strategy's "
             "(the fraction of the oracle's speedup reached). *Ceiling* is the `none` baseline's cycles over the "
             "roofline lower bound on all cores (compute on every PE, or the weights, parameters, input and output "
             "moved once over the DRAM port): no plan can be faster. Search seconds are cold-cache costs (see the "
             "README).",
             "", "| model | input | none cycles | cores-only | fusion-only | dlfusion | oracle | dlfusion speedup | "
             "oracle speedup | ceiling | dlfusion of oracle | dlfusion search s | oracle search s | search ratio |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in summary_rows(reports):
        def cell(name, row=row):
            value = row.get(f"{name}_cycles")
            return "-" if value is None else f"{value:,} ({row[f'{name}_speedup']:.2f}x)"

        def number(key, fmt, row=row):
            return "-" if key not in row else format(row[key], fmt)
        lines.append(f"| {row['model']} | {row['input_size']} | {row['baseline_cycles']:,} | {cell('cores-only')} | "
                     f"{cell('fusion-only')} | {cell('dlfusion')} | {cell('oracle')} | "
                     f"{number('dlfusion_speedup', '.2f')} | {number('oracle_speedup', '.2f')} | "
                     f"{number('ceiling_speedup', '.2f')} ({row.get('roofline_bound', '-')}) | "
                     f"{number('dlfusion_oracle_fraction', '.1%')} | {number('dlfusion_search_seconds', '.3f')} | "
                     f"{number('oracle_search_seconds', ',.0f')} | {number('search_ratio', ',.0f')} |")
    for source, report in reports.items():
        stem = _file_stem(source)
        lines += ["", f"## {report['model']} at {report['input_size']}x{report['input_size']}", "",
                  f"{report['layers']} layers, {report['macs']:,} MACs; {report['hw_description']} "
                  f"(HwConfig `{report['hw_hash']}`).", "", "```", comparison_table(report), "```", "",
                  f"![cycles](cycles-{stem}.png)", "", f"![plans](plans-{stem}.png)"]
        model = report.get("cost_model")
        if model:
            lines += ["", f"Cost model: `{model['formula']}`, fitted to {', '.join(model['sources'])}"
                      f"{' (this model held out)' if model['held_out'] else ''}."]
            fit = model["error"].get("fit")
            if fit:
                lines.append(f"Its error on the groups it was fitted to: median {fit['group_median']:.1%}, worst "
                             f"{fit['group_worst']:.1%} per group; median {fit['plan_median']:.1%}, worst "
                             f"{fit['plan_worst']:.1%} per plan.")
    return "\n".join(lines) + "\n"


def write_report(report: dict, out_dir: str | Path) -> list[Path]:
    """Merge ``report`` (one :func:`~.tune.tune` result) into the report in ``out_dir``; write it all.

    Returns
    -------
    list of Path
        The files written.
    """
    import matplotlib
    matplotlib.use("Agg")
    out_dir = Path(out_dir)
    path = out_dir / "tune-report.json"
    reports: dict[str, dict] = {}
    if path.exists():
        try:
            data = json.loads(path.read_text())
            if data.get("format") == REPORT_FORMAT:
                reports = dict(data.get("models", {}))
        except (OSError, ValueError):
            reports = {}
    reports[report["source"]] = report
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for source, entry in reports.items():
        stem = _file_stem(source)
        if source == report["source"] or not (out_dir / f"plans-{stem}.png").exists():
            _plot_cycles(entry, out_dir / f"cycles-{stem}.png")
            _plot_plans(entry, out_dir / f"plans-{stem}.png")
            written += [out_dir / f"cycles-{stem}.png", out_dir / f"plans-{stem}.png"]
    atomic_write(path, json.dumps({"format": REPORT_FORMAT, "models": reports,
                                   "summary": summary_rows(reports)}, indent=1))
    atomic_write(out_dir / "tune-report.md", _markdown(reports))
    return [path, out_dir / "tune-report.md", *written]
