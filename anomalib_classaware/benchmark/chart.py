"""PNG chart of the benchmark results (``results.png``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .results import CHART_METRICS, METRIC_TITLES, result_categories, summarize


def write_chart(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    title: str = "",
    categories: Sequence[str] | None = None,
) -> Path | None:
    """Write the PNG chart: per-category grouped bars per (model, setting), the mean group highlighted.

    One panel per metric of :data:`CHART_METRICS`; the mean group has error bars (std over seeds).
    ``categories`` orders the groups. Returns ``None`` when there is nothing to plot.
    """
    summaries = summarize(rows)
    if not summaries:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    categories = result_categories(rows, categories)
    groups = [*categories, "mean"]
    positions = list(range(len(groups)))
    positions[-1] += 0.5  # a gap before the mean group
    width = 0.8 / len(summaries)
    figure, axes = plt.subplots(
        len(CHART_METRICS), 1, figsize=(max(8.0, 1.1 * len(groups) + 3), 3.6 * len(CHART_METRICS)), squeeze=False
    )
    colours = plt.get_cmap("tab10")
    for axis, metric in zip(axes[:, 0], CHART_METRICS, strict=True):
        axis.axvspan(positions[-1] - 0.5, positions[-1] + 0.5, color="#fff2cc", zorder=0)
        for index, summary in enumerate(summaries):
            values = [summary.category_metric(category, metric) for category in categories]
            mean, spread = summary.metric(metric)
            offsets = [position - 0.4 + width * (index + 0.5) for position in positions]
            colour = colours(index % 10)
            label = f"{summary.model} ({summary.setting})"
            axis.bar(offsets[:-1], [100 * value for value in values], width, color=colour, label=label, zorder=2)
            axis.bar(
                offsets[-1],
                100 * mean,
                width,
                yerr=None if math.isnan(spread) else 100 * spread,
                capsize=3,
                color=colour,
                edgecolor="black",
                linewidth=1.2,
                zorder=2,
            )
        axis.set_xticks(positions, [*categories, "MEAN"])
        axis.get_xticklabels()[-1].set_fontweight("bold")
        axis.set_ylabel(f"{METRIC_TITLES[metric]} (%)")
        axis.set_ylim(0, 105)
        axis.grid(axis="y", alpha=0.3, zorder=1)
    if title:
        axes[0, 0].set_title(title, fontsize="medium")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize="small", frameon=False)
    figure.tight_layout(rect=(0, 0.04 + 0.025 * math.ceil(len(labels) / 3), 1, 1))
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
