"""Benchmark results: the CSV (one row per run x category) and the summaries over categories and seeds.

Metric values are fractions in the CSV. A run's mean is the mean over its categories (NaN ignored), as in
the multi-class literature; a separate-setting "run" for the summary is the set of per-category models of
one seed. Across seeds the summaries give mean and sample standard deviation.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anomalib_classaware._stats import nanmean

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
    "calibration_time_s",
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
            writer.writerow({key: csv_value(value) for key, value in row.items()})
    temporary.replace(path)
    return path


def csv_value(value: Any) -> Any:
    """A CSV cell: floats with 6 significant digits, NaN empty."""
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
        writer.writerows({key: csv_value(value) for key, value in row.items()} for row in rows)
    return path


def result_categories(rows: Sequence[Mapping[str, Any]], order: Sequence[str] | None) -> list[str]:
    """Categories with results: those of ``order`` first, in its order, then any others."""
    present = ordered_categories(row for row in rows if row.get("status") == "ok")
    return [category for category in order or () if category in present] + [
        category for category in present if category not in (order or ())
    ]
