"""Deployment speed report (``--speed``): ``speed.csv``, ``speed_layers.csv`` and ``speed.md``."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .markdown import failures_section, markdown_table, percent_cell, write_lines
from .results import nanmean, number

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
            line.append(percent_cell(_mean(values, "image_AUROC")))
            line.append(percent_cell(_mean(values, "label_agreement")))
            correlation = _mean(values, "score_pearson")
            line.append("–" if math.isnan(correlation) else f"{correlation:.4f}")
            lines.append(line)
    return markdown_table(header, lines)


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
    return markdown_table(header, lines)


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
    return markdown_table(header, lines) if lines else []


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
    lines += failures_section("Failed measurements", "Model", failed)
    return write_lines(path, lines)
