"""Quality report ``results.md``: mean table, multi-class gap, per-category tables, failed runs (percent)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .markdown import failures_section, markdown_table, percent_cell, plain_cell, write_lines
from .results import (
    METRIC_TITLES,
    METRICS,
    SettingSummary,
    multiclass_gaps,
    result_categories,
    speed_columns,
    summarize,
)


def _setting_text(summary: SettingSummary) -> str:
    return "separate (1 model per category)" if summary.setting == "separate" else summary.setting


def _backbone_text(summary: SettingSummary) -> str:
    run = summary.runs[0]
    if not run.backbone:
        return "–"
    text = f"{run.backbone} [{run.layers}]" if run.layers else run.backbone
    return f"{text}, {run.weights}" if run.weights else text


def summary_table(summaries: Sequence[SettingSummary]) -> list[str]:
    """Markdown lines of the mean-metrics table (percent; ± std over seeds when there are several)."""
    speed_names = speed_columns(run.measurements for summary in summaries for run in summary.runs)
    header = ["Model", "Setting", "Seeds", *(METRIC_TITLES[m] for m in METRICS), "Train img/s", "Steps", "Fit (s)"]
    header += [f"Infer img/s (bs {name[len('infer_bs') : -len('_images_per_s')]})" for name in speed_names]
    header += ["Peak RSS (MiB)", "Params (M)", "Backbone [layers], weights"]
    lines = []
    for summary in summaries:
        line = [summary.model, _setting_text(summary), ", ".join(str(seed) for seed in summary.seeds)]
        line += [percent_cell(*summary.metric(metric)) for metric in METRICS]
        line.append(plain_cell(summary.measurement("train_images_per_s")))
        line.append(plain_cell(summary.measurement("train_steps"), 0))
        line.append(plain_cell(summary.measurement("fit_time_s"), 0))
        line += [plain_cell(summary.measurement(name)) for name in speed_names]
        line.append(plain_cell(summary.measurement("peak_rss_mb", "max"), 0))
        line.append(plain_cell(summary.measurement("params") / 1e6, 2))
        line.append(_backbone_text(summary))
        lines.append(line)
    return markdown_table(header, lines)


def gap_table(summaries: Sequence[SettingSummary]) -> list[str]:
    """Markdown lines of the multi-class gap table (separate minus unified, percentage points)."""
    gaps = multiclass_gaps(summaries)
    lines = [[model] + [f"{100 * gap[metric]:+.1f}" for metric in METRICS] for model, gap in gaps.items()]
    return markdown_table(["Model", *(METRIC_TITLES[m] for m in METRICS)], lines) if lines else []


def category_table(summaries: Sequence[SettingSummary], metric: str, categories: Sequence[str]) -> list[str]:
    """Markdown lines of one metric per category (mean over seeds) and the mean over categories."""
    header = ["Model", "Setting", *categories, "**mean**"]
    lines = []
    for summary in summaries:
        line = [summary.model, summary.setting]
        line += [percent_cell(summary.category_metric(category, metric)) for category in categories]
        line.append(f"**{percent_cell(summary.metric(metric)[0])}**")
        lines.append(line)
    return markdown_table(header, lines)


def write_markdown(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    header_lines: Sequence[str] = (),
    categories: Sequence[str] | None = None,
) -> Path:
    """Write the Markdown report: mean table, multi-class gap, per-category tables, failed runs.

    ``categories`` orders the per-category columns (default: order of first appearance).
    """
    summaries = summarize(rows)
    categories = result_categories(rows, categories)
    lines = ["# Benchmark results", "", *header_lines, "", "## Mean over categories", ""]
    lines += summary_table(summaries) if summaries else ["No successful runs."]
    gap = gap_table(summaries)
    if gap:
        lines += ["", "## Multi-class gap (separate minus unified, percentage points)", "", *gap]
    for metric in METRICS:
        if summaries:
            lines += ["", f"## Per category: {METRIC_TITLES[metric]}", ""]
            lines += category_table(summaries, metric, categories)
    failed = {str(row["run_id"]): str(row.get("error", "")) for row in rows if row.get("status") != "ok"}
    lines += failures_section("Failed runs", "Run", failed)
    return write_lines(path, lines)
