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
    "time_budget_s",
    "stopped_by_time_budget",
    "memory_bank_time_s",
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
    columns = list(BASE_COLUMNS)
    columns += [name for name in speed_columns(rows) if name not in columns]
    return write_rows(rows, path, columns)


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


_MEASUREMENTS = ("train_images_per_s", "train_steps", "fit_time_s", "peak_rss_mb", "params", "run_wall_time_s")


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
    header = ["Model", "Setting", "Seeds", *(METRIC_TITLES[m] for m in METRICS), "Train img/s", "Steps", "Fit (s)"]
    header += [f"Infer img/s (bs {name[len('infer_bs') : -len('_images_per_s')]})" for name in speed_names]
    header += ["Peak RSS (MiB)", "Params (M)", "Backbone [layers], weights"]
    lines = []
    for summary in summaries:
        line = [summary.model, _setting_text(summary), ", ".join(str(seed) for seed in summary.seeds)]
        line += [_percent(*summary.metric(metric)) for metric in METRICS]
        line.append(_plain(summary.measurement("train_images_per_s")))
        line.append(_plain(summary.measurement("train_steps"), 0))
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
        for name in (
            "train_images_per_s",
            "train_steps",
            "fit_time_s",
            *speed_columns(r.measurements for r in summary.runs),
        ):
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


# ---------------------------------------------------------------- deployment speed (``--speed``)

SPEED_CSV = "speed.csv"
SPEED_LAYERS_CSV = "speed_layers.csv"
SPEED_MD = "speed.md"

SPEED_VARIANTS: tuple[str, ...] = (
    "torch",
    "openvino_fp32",
    "openvino_bf16",
    "openvino_int8_ptq",
    "openvino_int8_ptq_bf16",
    "openvino_int8_ptq_full",
)
SPEED_TITLES = {
    "torch": "torch eager",
    "openvino_fp32": "OpenVINO FP32",
    "openvino_bf16": "OpenVINO BF16",
    "openvino_int8_ptq": "OpenVINO INT8",
    "openvino_int8_ptq_bf16": "OpenVINO INT8, BF16 float parts",
    "openvino_int8_ptq_full": "OpenVINO INT8, whole graph",
}

SPEED_COLUMNS: tuple[str, ...] = (
    "run_id",
    "model",
    "setting",
    "seed",
    "variant",
    "batch_size",
    "threads",
    "ms_per_image",
    "images_per_s",
    "cpu_ms_per_image",
    "repeats",
    "load_1min",
    "image_AUROC",
    "label_agreement",
    "score_pearson",
    "max_score_diff",
    "test_images",
    "at_threshold",
    "export_s",
    "deployment_s",
    "input_size",
    "backbone",
    "weights",
    "error",
)
"""Columns of ``speed.csv``: one row per run x variant x batch size x thread count."""

LAYER_COLUMNS: tuple[str, ...] = (
    "run_id",
    "model",
    "variant",
    "layer_type",
    "ms",
    "int8_ms",
    "share",
    "count",
    "exec_types",
)
"""Columns of ``speed_layers.csv``: OpenVINO per-layer counters summed per layer type (batch 1, 1 thread)."""

COMPUTE_LAYERS = frozenset({"Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul", "FullyConnected"})
"""OpenVINO layer types that carry the arithmetic (as in :mod:`~anomalib_classaware.benchmark.speed`)."""

INT8_SPEEDUP_TARGET = 2.0
AUROC_DROP_TARGET = 0.01


def deployment_rows(common: Mapping[str, Any], deployment: Mapping[str, Any]) -> tuple[list[dict], list[dict]]:
    """``speed.csv`` and ``speed_layers.csv`` rows of one run's deployment result.

    ``common`` holds the run's identifying columns (``run_id``, ``model``, ``setting``, ``seed``...).
    A failed measurement gives one row with its ``error``.
    """
    if "error" in deployment:
        return [{**common, "error": str(deployment["error"]).replace("\n", " ")[:500]}], []
    quality = {row["variant"]: row for row in deployment.get("quality", [])}
    extra = {"export_s": deployment.get("export_s", {}).get("openvino"), "deployment_s": deployment.get("wall_time_s")}
    rows = []
    for timing in deployment.get("timings", []):
        values = {key: value for key, value in quality.get(timing["variant"], {}).items() if key != "variant"}
        rows.append({**common, **extra, **timing, **values})
    layers = [
        {"run_id": common.get("run_id"), "model": common.get("model"), "variant": variant, **layer}
        for variant, profile in deployment.get("profiles", {}).items()
        for layer in profile
    ]
    return rows, layers


def write_rows(rows: Sequence[Mapping[str, Any]], path: str | Path, columns: Sequence[str]) -> Path:
    """Write ``rows`` as CSV with ``columns`` first (then any other keys), atomically."""
    path = Path(path)
    names = list(columns)
    for row in rows:
        names += [key for key in row if key not in names]
    temporary = path.with_suffix(".tmp")
    with temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names, restval="", extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _csv_value(value) for key, value in row.items()})
    temporary.replace(path)
    return path


def _speed_cell(values: Sequence[Mapping[str, Any]], cpu: bool = False) -> str:
    milliseconds = nanmean(number(row.get("ms_per_image")) for row in values)
    if math.isnan(milliseconds):
        return "–"
    text = f"{milliseconds:,.1f} ms ({1000 / milliseconds:,.0f} img/s)"
    cpu_milliseconds = nanmean(number(row.get("cpu_ms_per_image")) for row in values)
    return f"{text}; CPU {cpu_milliseconds:,.1f} ms" if cpu and not math.isnan(cpu_milliseconds) else text


def _threads_text(threads: int) -> str:
    return f"{threads} thread" if threads == 1 else f"{threads} threads"


def _grouped(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, list[Mapping[str, Any]]]]:
    """``{model: {variant: rows}}`` of the successful speed rows, models in first-appearance order."""
    grouped: dict[str, dict[str, list[Mapping[str, Any]]]] = {}
    for row in rows:
        if row.get("error") or not row.get("variant"):
            continue
        grouped.setdefault(str(row["model"]), {}).setdefault(str(row["variant"]), []).append(row)
    return grouped


def _configurations(rows: Sequence[Mapping[str, Any]]) -> list[tuple[int, int]]:
    """``(batch_size, threads)`` pairs present, by threads then batch size."""
    pairs = {
        (int(number(row["batch_size"])), int(number(row["threads"])))
        for row in rows
        if not row.get("error") and row.get("variant")
    }
    return sorted(pairs, key=lambda pair: (pair[1], pair[0]))


def _at(rows: Sequence[Mapping[str, Any]], batch_size: int, threads: int) -> list[Mapping[str, Any]]:
    return [
        row for row in rows if int(number(row["batch_size"])) == batch_size and int(number(row["threads"])) == threads
    ]


def _mean(rows: Sequence[Mapping[str, Any]], column: str) -> float:
    return nanmean(number(row.get(column)) for row in rows)


def speed_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Markdown lines: ms/image (img/s) per model x variant x (batch size, threads), image AUROC, agreement."""
    configurations = _configurations(rows)
    header = ["Model", "Variant"]
    header += [f"bs {batch}, {_threads_text(threads)}" for batch, threads in configurations]
    header += ["Image AUROC", "Labels = eager", "Score corr. (eager)"]
    lines = []
    for model, variants in _grouped(rows).items():
        for variant in [v for v in SPEED_VARIANTS if v in variants] + [v for v in variants if v not in SPEED_VARIANTS]:
            values = variants[variant]
            line = [model, SPEED_TITLES.get(variant, variant)]
            line += [_speed_cell(_at(values, batch, threads), cpu=threads == 1) for batch, threads in configurations]
            line.append(_percent(_mean(values, "image_AUROC")))
            line.append(_percent(_mean(values, "label_agreement")))
            correlation = _mean(values, "score_pearson")
            line.append("–" if math.isnan(correlation) else f"{correlation:.4f}")
            lines.append(line)
    return _table(header, lines)


def speedups(
    rows: Sequence[Mapping[str, Any]],
    faster: str,
    slower: str,
    column: str = "ms_per_image",
    threads: int | None = None,
) -> dict[str, list[float]]:
    """``{model: [slower / faster time for each (batch size, threads)]}`` where both variants were timed.

    ``column``: ``ms_per_image`` (wall clock) or ``cpu_ms_per_image``; ``threads`` keeps one thread count.
    """
    result: dict[str, list[float]] = {}
    configurations = [pair for pair in _configurations(rows) if threads is None or pair[1] == threads]
    for model, variants in _grouped(rows).items():
        if faster not in variants or slower not in variants:
            continue
        ratios = []
        for batch, count in configurations:
            fast = _mean(_at(variants[faster], batch, count), column)
            slow = _mean(_at(variants[slower], batch, count), column)
            if not (math.isnan(fast) or math.isnan(slow)) and fast > 0:
                ratios.append(slow / fast)
        result[model] = ratios
    return result


def _ratio_range(values: Sequence[float]) -> str:
    if not values:
        return "–"
    low, high = min(values), max(values)
    return f"{low:.2f}×" if abs(high - low) < 0.005 else f"{low:.2f}–{high:.2f}×"


def target_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Markdown lines: the issue's targets per model (FP32 faster than eager; INT8 >= 2x FP32, <= 1 point AUROC).

    Speed targets are judged on the CPU time per image with one thread (batch 1 and 8): on a shared
    machine the wall clock also measures the other processes. The wall-clock ratios over every
    configuration are shown beside them.
    """
    header = ["Model", "FP32 vs eager: CPU, 1 thread", "wall, all", "FP32 faster?", "INT8 vs FP32: CPU, 1 thread"]
    header += ["wall, all", f"INT8 ≥ {INT8_SPEEDUP_TARGET:g}×?", "AUROC INT8 − FP32 (points)", "≤ 1 point lost?"]
    cpu_fp32 = speedups(rows, "openvino_fp32", "torch", "cpu_ms_per_image", threads=1)
    wall_fp32 = speedups(rows, "openvino_fp32", "torch")
    cpu_int8 = speedups(rows, "openvino_int8_ptq", "openvino_fp32", "cpu_ms_per_image", threads=1)
    wall_int8 = speedups(rows, "openvino_int8_ptq", "openvino_fp32")
    lines = []
    for model, variants in _grouped(rows).items():
        line = [model, _ratio_range(cpu_fp32.get(model, [])), _ratio_range(wall_fp32.get(model, []))]
        line.append(_verdict(cpu_fp32.get(model), lambda ratio: ratio > 1))
        line += [_ratio_range(cpu_int8.get(model, [])), _ratio_range(wall_int8.get(model, []))]
        line.append(_verdict(cpu_int8.get(model), lambda ratio: ratio >= INT8_SPEEDUP_TARGET))
        fp32 = _mean(variants.get("openvino_fp32", []), "image_AUROC")
        int8 = _mean(variants.get("openvino_int8_ptq", []), "image_AUROC")
        change = int8 - fp32
        line.append("–" if math.isnan(change) else f"{100 * change:+.1f}")
        line.append("–" if math.isnan(change) else ("yes" if change >= -AUROC_DROP_TARGET else "**no**"))
        lines.append(line)
    return _table(header, lines)


def _verdict(values: Sequence[float] | None, passes: Any) -> str:
    if not values:
        return "–"
    met = sum(1 for value in values if passes(value))
    if met == len(values):
        return "yes"
    return "**no**" if met == 0 else f"{met} of {len(values)}"


def layer_table(layer_rows: Sequence[Mapping[str, Any]], top: int = 4) -> list[str]:
    """Markdown lines: per model and OpenVINO variant, the layer types that take the most time."""
    grouped: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in layer_rows:
        grouped.setdefault((str(row["model"]), str(row["variant"])), []).append(row)
    lines = []
    for (model, variant), rows in grouped.items():
        by_type: dict[str, dict[str, Any]] = {}
        for row in rows:  # several seeds: sum the time per layer type
            entry = by_type.setdefault(
                str(row["layer_type"]), {"ms": 0.0, "int8_ms": 0.0, "exec_types": str(row["exec_types"])}
            )
            entry["ms"] += number(row["ms"])
            int8_ms = number(row.get("int8_ms"))
            entry["int8_ms"] += 0.0 if math.isnan(int8_ms) else int8_ms
        total = sum(entry["ms"] for entry in by_type.values()) or 1.0
        ordered = sorted(by_type.items(), key=lambda item: -item[1]["ms"])
        cells = [
            f"{name} {100 * entry['ms'] / total:.0f}% ({(entry['exec_types'].split() or ['?'])[0]})"
            for name, entry in ordered[:top]
        ]
        compute = [entry for name, entry in by_type.items() if name in COMPUTE_LAYERS]
        compute_ms = sum(entry["ms"] for entry in compute)
        int8 = "–" if compute_ms <= 0 else f"{100 * sum(entry['int8_ms'] for entry in compute) / compute_ms:.0f}%"
        lines.append([model, SPEED_TITLES.get(variant, variant), "; ".join(cells), int8])
    header = ["Model", "Variant", f"Top {top} layer types: share of time (main kernel)", "Conv/MatMul time in INT8"]
    return _table(header, lines) if lines else []


def write_speed_markdown(
    rows: Sequence[Mapping[str, Any]],
    layer_rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    header_lines: Sequence[str] = (),
) -> Path:
    """Write ``speed.md``: the speed table, the targets, where the time goes, failed measurements."""
    lines = ["# CPU inference: torch eager vs OpenVINO FP32 vs OpenVINO INT8", "", *header_lines, ""]
    if _grouped(rows):
        lines += ["## Median time per image (images/s)", "", *speed_table(rows)]
        lines += ["", "## Targets", "", *target_table(rows)]
    else:
        lines.append("No successful deployment measurements.")
    layers = layer_table(layer_rows)
    if layers:
        lines += ["", "## Where the time goes (OpenVINO per-layer counters, batch 1, 1 thread)", "", *layers]
    failed = {str(row.get("model")): str(row["error"]) for row in rows if row.get("error")}
    if failed:
        lines += ["", "## Failed measurements", ""]
        lines += _table(["Model", "Error"], [[model, error.replace("|", "\\|")] for model, error in failed.items()])
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path
