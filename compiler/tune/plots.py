"""PNG plots of a characterization dataset (matplotlib, Agg backend)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

__all__ = ["plot_characterization"]

#: Panel per kind of layer, in the rule's terms.
PANELS = (("conv", "3x3 convolution"), ("conv1x1", "1x1 convolution"), ("depthwise", "depthwise 3x3"),
          ("fc", "fully connected"))


def _panel(row: dict) -> str:
    if row["kind"] == "conv":
        return "conv1x1" if int(row["k"]) == 1 else "conv"
    return row["kind"]


def _per_layer(rows: list[dict]) -> dict[str, dict]:
    """layer -> {"row": a row, "cycles": {cores: best cycles over splits}, "best": (cores, split)}."""
    layers = {}
    for row in rows:
        entry = layers.setdefault(row["layer"], {"row": row, "cycles": {}, "best": None, "best_cycles": None})
        cores, cycles = int(row["cores"]), int(row["cycles"])
        entry["cycles"][cores] = min(cycles, entry["cycles"].get(cores, cycles))
        # Fewest cores among the optimal choices (ties), as the rule breaks them.
        if entry["best_cycles"] is None or (cycles, cores) < (entry["best_cycles"], entry["best"][0]):
            entry["best"], entry["best_cycles"] = (cores, row["split"]), cycles
    return layers


def plot_characterization(rows: list[dict], out_dir: str | Path, *, title: str = "") -> list[Path]:
    """Write ``characterization-cycles.png`` (cycles vs MACs per core count),
    ``characterization-best-cores.png`` (the best core count vs MACs and vs channels) and
    ``characterization-speedup.png`` (speedup vs cores); returns their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    layers = _per_layer(rows)
    core_counts = sorted({int(r["cores"]) for r in rows})
    by_panel = defaultdict(list)
    for entry in layers.values():
        by_panel[_panel(entry["row"])].append(entry)
    panels = [(key, label) for key, label in PANELS if by_panel[key]]
    colors = plt.get_cmap("viridis")
    paths = []

    # Cycles vs MACs, one series per core count (best split at that count).
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), squeeze=False)
    for axis, (key, label) in zip(axes[0], panels, strict=True):
        for index, cores in enumerate(core_counts):
            points = sorted((int(e["row"]["macs"]), e["cycles"][cores]) for e in by_panel[key])
            axis.scatter(*zip(*points, strict=True), s=16, color=colors(index / max(1, len(core_counts) - 1)),
                         label=f"{cores} core(s)")
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("MACs")
        axis.set_title(label)
        axis.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("RTL cycles (best split)")
    axes[0][-1].legend(fontsize=8)
    figure.suptitle(f"cycles vs operation count: {title}", fontsize=10)
    figure.tight_layout()
    paths.append(out_dir / "characterization-cycles.png")
    figure.savefig(paths[-1], dpi=110)
    plt.close(figure)

    # The best core count vs MACs and vs output channels.
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    markers = {"rows": "o", "channels": "s"}
    for index, (key, label) in enumerate(panels):
        offset = (index - (len(panels) - 1) / 2) * 0.08   # keep the kinds' points apart
        for split, marker in markers.items():
            chosen = [e for e in by_panel[key] if e["best"][1] == split]
            if not chosen:
                continue
            ys = [e["best"][0] + offset for e in chosen]
            color = plt.get_cmap("tab10")(index)
            axes[0].scatter([int(e["row"]["macs"]) for e in chosen], ys, marker=marker, s=22, color=color,
                            label=f"{label}, {split}")
            axes[1].scatter([int(e["row"]["cout"]) for e in chosen], ys, marker=marker, s=22, color=color)
    for axis, xlabel in zip(axes, ("MACs", "output channels"), strict=True):
        axis.set_xscale("log", base=10 if xlabel == "MACs" else 2)
        axis.set_xlabel(xlabel)
        axis.set_yticks(core_counts)
        axis.grid(True, alpha=0.3)
    axes[0].set_ylabel("best core count (marker: split axis)")
    axes[0].legend(fontsize=7, loc="upper left")
    figure.suptitle(f"best core count: {title}", fontsize=10)
    figure.tight_layout()
    paths.append(out_dir / "characterization-best-cores.png")
    figure.savefig(paths[-1], dpi=110)
    plt.close(figure)

    # Speedup over one core vs cores, one line per layer, coloured by operation count.
    import math
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 1, 4), squeeze=False, sharey=True,
                                layout="constrained")
    all_macs = [math.log10(max(1, int(e["row"]["macs"]))) for e in layers.values()]
    low, high = min(all_macs), max(all_macs)
    for axis, (key, label) in zip(axes[0], panels, strict=True):
        for entry in by_panel[key]:
            base = entry["cycles"][1]
            shade = (math.log10(max(1, int(entry["row"]["macs"]))) - low) / max(1e-9, high - low)
            axis.plot(core_counts, [base / entry["cycles"][c] for c in core_counts], marker=".", linewidth=1,
                      color=colors(shade))
        axis.plot(core_counts, core_counts, linestyle=":", color="grey")
        axis.set_xticks(core_counts)
        axis.set_xlabel("cores")
        axis.set_title(label)
        axis.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("speedup over 1 core (best split)")
    mappable = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(low, high), colors)
    figure.colorbar(mappable, ax=axes[0].tolist(), label="log10 MACs", fraction=0.03)
    figure.suptitle(f"speedup vs cores: {title}", fontsize=10)
    paths.append(out_dir / "characterization-speedup.png")
    figure.savefig(paths[-1], dpi=110)
    plt.close(figure)
    return paths
