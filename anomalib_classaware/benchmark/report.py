"""Benchmark results: the CSV (one row per run x category), summaries, Markdown tables and a PNG chart.

Metric values are fractions in the CSV and percent (one decimal) in the Markdown tables. A
run's mean is the mean over its categories (NaN ignored), as in the multi-class literature; a
separate-setting "run" for the summary is the set of per-category models of one seed. Across
seeds the tables give mean ± sample standard deviation.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

METRICS: tuple[str, ...] = ("image_AUROC", "image_F1Max", "pixel_AUROC", "pixel_AUPRO")
METRIC_TITLES = {
    "image_AUROC": "Image AUROC",
    "image_F1Max": "Image F1-max",
    "pixel_AUROC": "Pixel AUROC",
    "pixel_AUPRO": "AUPRO",
}
CHART_METRICS: tuple[str, ...] = ("image_AUROC", "pixel_AUPRO")

RESULTS_CSV = "results.csv"
SUMMARY_CSV = "summary.csv"
RESULTS_MD = "results.md"
RESULTS_PNG = "results.png"

BASE_COLUMNS: tuple[str, ...] = (
    "run_id",
    "model",
    "setting",
    "seed",
    "category",
    "status",
    *METRICS,
    "train_time_s",
    "train_steps",
    "train_images",
    "train_images_per_s",
    "fit_time_s",
    "test_time_s",
    "run_wall_time_s",
    "threads",
    "peak_rss_mb",
    "params",
    "trainable_params",
    "model_class",
    "backbone",
    "layers",
    "weights",
    "input_size",
    "budget",
    "dataset",
    "device",
    "error",
    "finished_at",
)
"""CSV columns; ``infer_bs<N>_images_per_s`` columns follow for each timed batch size."""

RUNNER_COLUMNS = frozenset(
    {"run_id", "model", "setting", "seed", "category", "status", *METRICS}
    | {"run_wall_time_s", "input_size", "dataset", "error", "finished_at"}
)
"""Columns the CLI fills itself; the others of :data:`BASE_COLUMNS` are copied from a run's worker result."""

WORKER_COLUMNS: tuple[str, ...] = tuple(column for column in BASE_COLUMNS if column not in RUNNER_COLUMNS)


def number(value: Any) -> float:
    """``float(value)``; NaN for empty or non-numeric values."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def nanmean(values: Iterable[float]) -> float:
    """Mean of the finite values; NaN if there are none."""
    finite = [value for value in values if not math.isnan(value)]
    return sum(finite) / len(finite) if finite else math.nan


def nanstd(values: Iterable[float]) -> float:
    """Sample standard deviation of the finite values; NaN for fewer than two."""
    finite = [value for value in values if not math.isnan(value)]
    return statistics.stdev(finite) if len(finite) > 1 else math.nan


def speed_columns(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """The ``infer_bs<N>_images_per_s`` columns present in ``rows``, by batch size."""
    names = {key for row in rows for key in row if key.startswith("infer_bs") and key.endswith("_images_per_s")}
    return sorted(names, key=lambda name: int(name[len("infer_bs") : -len("_images_per_s")]))


def read_results(path: str | Path) -> list[dict[str, str]]:
    """Read the results CSV (empty list if it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def write_results(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write ``rows`` to the results CSV (atomically): the base columns, speed columns, then any others."""
    path = Path(path)
    columns = list(BASE_COLUMNS)
    columns += [name for name in speed_columns(rows) if name not in columns]
    for row in rows:
        columns += [key for key in row if key not in columns]
    temporary = path.with_suffix(".tmp")
    with temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="", extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _csv_value(value) for key, value in row.items()})
    temporary.replace(path)
    return path


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


@dataclass
class RunSummary:
    """One (model, setting, seed): its per-category metrics and run-level measurements."""

    model: str
    setting: str
    seed: int
    categories: dict[str, dict[str, float]] = field(default_factory=dict)
    measurements: dict[str, list[float]] = field(default_factory=dict)
    backbone: str = ""
    weights: str = ""
    layers: str = ""

    @property
    def mean(self) -> dict[str, float]:
        """Mean over categories of each metric (NaN ignored)."""
        return {metric: nanmean(values[metric] for values in self.categories.values()) for metric in METRICS}


@dataclass
class SettingSummary:
    """One (model, setting) over seeds."""

    model: str
    setting: str
    runs: list[RunSummary]

    @property
    def seeds(self) -> list[int]:
        """Seeds, sorted."""
        return sorted(run.seed for run in self.runs)

    def metric(self, name: str) -> tuple[float, float]:
        """Mean over seeds and sample standard deviation of the run means of metric ``name``."""
        values = [run.mean[name] for run in self.runs]
        return nanmean(values), nanstd(values)

    def category_metric(self, category: str, name: str) -> float:
        """Mean over seeds of metric ``name`` in ``category``."""
        return nanmean(run.categories.get(category, {}).get(name, math.nan) for run in self.runs)

    def measurement(self, name: str, reduce: str = "mean") -> float:
        """Mean (or ``"max"``) of a run-level measurement over all its models and seeds."""
        values = [value for run in self.runs for value in run.measurements.get(name, []) if not math.isnan(value)]
        if not values:
            return math.nan
        return max(values) if reduce == "max" else sum(values) / len(values)


_MEASUREMENTS = ("train_images_per_s", "fit_time_s", "peak_rss_mb", "params", "run_wall_time_s")


def summarize(rows: Sequence[Mapping[str, Any]]) -> list[SettingSummary]:
    """Group successful rows into (model, setting) summaries, in first-appearance order."""
    runs: dict[tuple[str, str, int], RunSummary] = {}
    seen_run_ids: set[str] = set()
    measurement_names = (*_MEASUREMENTS, *speed_columns(rows))
    for row in rows:
        if row.get("status") != "ok":
            continue
        key = (str(row["model"]), str(row["setting"]), int(number(row["seed"])))
        run = runs.setdefault(
            key,
            RunSummary(*key, backbone=str(row.get("backbone", "")), weights=str(row.get("weights", ""))),
        )
        run.layers = str(row.get("layers", ""))
        run.categories[str(row["category"])] = {metric: number(row.get(metric)) for metric in METRICS}
        if row["run_id"] not in seen_run_ids:  # run-level values repeat on each category row of a run
            seen_run_ids.add(str(row["run_id"]))
            for name in measurement_names:
                run.measurements.setdefault(name, []).append(number(row.get(name)))
    settings: dict[tuple[str, str], SettingSummary] = {}
    for (model, setting, _seed), run in runs.items():
        settings.setdefault((model, setting), SettingSummary(model, setting, [])).runs.append(run)
    return list(settings.values())


def multiclass_gaps(summaries: Sequence[SettingSummary]) -> dict[str, dict[str, float]]:
    """``{model: {metric: separate mean - unified mean}}`` for models run in both settings (fractions)."""
    by_key = {(summary.model, summary.setting): summary for summary in summaries}
    gaps = {}
    for (model, setting), separate in by_key.items():
        unified = by_key.get((model, "unified"))
        if setting == "separate" and unified is not None:
            gaps[model] = {metric: separate.metric(metric)[0] - unified.metric(metric)[0] for metric in METRICS}
    return gaps


def _percent(value: float, spread: float = math.nan) -> str:
    if math.isnan(value):
        return "–"
    text = f"{100 * value:.1f}"
    return f"{text} ± {100 * spread:.1f}" if not math.isnan(spread) else text


def _plain(value: float, digits: int = 1) -> str:
    return "–" if math.isnan(value) else f"{value:,.{digits}f}"


def _table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return out


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
    header = ["Model", "Setting", "Seeds", *(METRIC_TITLES[m] for m in METRICS), "Train img/s", "Fit (s)"]
    header += [f"Infer img/s (bs {name[len('infer_bs') : -len('_images_per_s')]})" for name in speed_names]
    header += ["Peak RSS (MiB)", "Params (M)", "Backbone [layers], weights"]
    lines = []
    for summary in summaries:
        line = [summary.model, _setting_text(summary), ", ".join(str(seed) for seed in summary.seeds)]
        line += [_percent(*summary.metric(metric)) for metric in METRICS]
        line.append(_plain(summary.measurement("train_images_per_s")))
        line.append(_plain(summary.measurement("fit_time_s"), 0))
        line += [_plain(summary.measurement(name)) for name in speed_names]
        line.append(_plain(summary.measurement("peak_rss_mb", "max"), 0))
        line.append(_plain(summary.measurement("params") / 1e6, 2))
        line.append(_backbone_text(summary))
        lines.append(line)
    return _table(header, lines)


def gap_table(summaries: Sequence[SettingSummary]) -> list[str]:
    """Markdown lines of the multi-class gap table (separate minus unified, percentage points)."""
    gaps = multiclass_gaps(summaries)
    lines = [[model] + [f"{100 * gap[metric]:+.1f}" for metric in METRICS] for model, gap in gaps.items()]
    return _table(["Model", *(METRIC_TITLES[m] for m in METRICS)], lines) if lines else []


def category_table(summaries: Sequence[SettingSummary], metric: str, categories: Sequence[str]) -> list[str]:
    """Markdown lines of one metric per category (mean over seeds) and the mean over categories."""
    header = ["Model", "Setting", *categories, "**mean**"]
    lines = []
    for summary in summaries:
        line = [summary.model, summary.setting]
        line += [_percent(summary.category_metric(category, metric)) for category in categories]
        line.append(f"**{_percent(summary.metric(metric)[0])}**")
        lines.append(line)
    return _table(header, lines)


def ordered_categories(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """Categories in first-appearance order."""
    return list(dict.fromkeys(str(row["category"]) for row in rows if row.get("category")))


def write_summary_csv(summaries: Sequence[SettingSummary], path: str | Path) -> Path:
    """Write one row per (model, setting): mean and std over seeds of each metric (fractions), measurements."""
    rows = []
    for summary in summaries:
        row: dict[str, Any] = {"model": summary.model, "setting": summary.setting, "seeds": len(summary.runs)}
        for metric in METRICS:
            row[metric], row[f"{metric}_std"] = summary.metric(metric)
        for name in ("train_images_per_s", "fit_time_s", *speed_columns(r.measurements for r in summary.runs)):
            row[name] = summary.measurement(name)
        row["peak_rss_mb"] = summary.measurement("peak_rss_mb", "max")
        row["params"] = summary.measurement("params")
        rows.append(row)
    path = Path(path)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows({key: _csv_value(value) for key, value in row.items()} for row in rows)
    return path


def _categories(rows: Sequence[Mapping[str, Any]], order: Sequence[str] | None) -> list[str]:
    """Categories with results: those of ``order`` first, in its order, then any others."""
    present = ordered_categories(row for row in rows if row.get("status") == "ok")
    return [category for category in order or () if category in present] + [
        category for category in present if category not in (order or ())
    ]


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
    categories = _categories(rows, categories)
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
    if failed:
        lines += ["", "## Failed runs", ""]
        lines += _table(["Run", "Error"], [[run_id, error.replace("|", "\\|")] for run_id, error in failed.items()])
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


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

    categories = _categories(rows, categories)
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
