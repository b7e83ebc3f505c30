"""Inference speed and deployment quality: torch eager, OpenVINO FP32 and OpenVINO INT8 on the CPU.

:func:`measure_inference_speed` times the eager forward pass of every benchmark run.
:func:`measure_deployment` (the benchmark's ``--speed``) exports a trained model to OpenVINO (FP32
and INT8 post-training quantization, calibrated on normal training images of every category),
then, for each variant, times batch sizes x thread counts on real test images (median ms/image
after warm-up), scores the test set (image AUROC: mean over categories; agreement with torch
eager), and records OpenVINO's per-layer counters (``PERF_COUNT``) to show where the time goes.

Every variant runs the same graph: pre-processing, the torch model and post-processing
(anomalib's exported graph; for torch eager, the module's ``forward``).
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from anomalib_classaware.metrics.exact_auroc import mean_category_auroc

VARIANTS: tuple[str, ...] = (
    "torch",
    "openvino_fp32",
    "openvino_int8_ptq",
    "openvino_int8_ptq_full",
    "openvino_bf16",
    "openvino_int8_ptq_bf16",
)
"""Deployment variants: torch eager, OpenVINO FP32, OpenVINO INT8 (``INT8_PTQ`` of the network, head in
floating point), OpenVINO INT8 of the whole graph (what anomalib's ``INT8_PTQ`` does), and, on CPUs
with BF16 only, the FP32 graph in bfloat16 and the INT8 graph with bfloat16 floating-point parts."""

DEFAULT_VARIANTS: tuple[str, ...] = VARIANTS[:3]

BF16_VARIANTS: frozenset[str] = frozenset({"openvino_bf16", "openvino_int8_ptq_bf16"})
"""Variants that need a CPU with BF16; :func:`measure_deployment` skips them elsewhere."""

_EXPORT_NAMES = {
    "openvino_fp32": "fp32",
    "openvino_int8_ptq": "int8_ptq",
    "openvino_int8_ptq_full": "int8_ptq_full",
    "openvino_bf16": "bf16",
    "openvino_int8_ptq_bf16": "int8_ptq_bf16",
}

ISA_FLAGS: tuple[str, ...] = ("avx2", "avx512f", "avx_vnni", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
"""``/proc/cpuinfo`` flags that decide which precisions are fast: VNNI (INT8 dot products), BF16, AMX."""


def cpu_isa_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> list[str]:
    """The :data:`ISA_FLAGS` the CPU has (empty where ``cpuinfo`` cannot be read, e.g. not Linux)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return []
    flags: set[str] = set()
    for line in text.splitlines():
        if line.lower().startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return [flag for flag in ISA_FLAGS if flag in flags]


def isa_class(flags: Sequence[str]) -> str:
    """The README's speed-table class of a CPU: ``AMX``, ``AVX-512 BF16``, ``VNNI``, ``AVX2`` or ``other``."""
    if "amx_int8" in flags or "amx_bf16" in flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX-512 BF16"
    if "avx512_vnni" in flags or "avx_vnni" in flags:
        return "VNNI"
    return "AVX2" if "avx2" in flags else "other"


def measure_inference_speed(
    model: nn.Module,
    input_size: Sequence[int],
    batch_sizes: Sequence[int] = (1, 8),
    warmup: int = 2,
    repeats: int = 5,
) -> dict[int, float]:
    """Return images per second of ``model(x)`` for each batch size (eager torch, ``inference_mode``).

    ``x`` is a random float image batch in ``[0, 1]`` of shape ``(B, 3, H, W)`` on the model's
    device; for an anomalib ``AnomalibModule`` the forward pass is the exported graph
    (pre-processing, torch model, post-processing). Each batch size gets ``warmup`` untimed
    passes, then ``repeats`` timed ones; the result is ``B / median(seconds)``.

    Args:
        model: The model; it is put in eval mode.
        input_size: ``(H, W)`` of the input images.
        batch_sizes: Batch sizes to time.
        warmup: Untimed passes per batch size.
        repeats: Timed passes per batch size (at least 1).

    Returns:
        ``{batch_size: images_per_second}``.

    """
    if repeats < 1:
        msg = f"repeats must be at least 1, got {repeats}."
        raise ValueError(msg)
    model.eval()
    device = next((parameter.device for parameter in model.parameters()), torch.device("cpu"))
    height, width = int(input_size[0]), int(input_size[1])
    generator = torch.Generator().manual_seed(0)
    speeds: dict[int, float] = {}
    with torch.inference_mode():
        for batch_size in batch_sizes:
            images = torch.rand(int(batch_size), 3, height, width, generator=generator).to(device)
            for _ in range(warmup):
                model(images)
            timings = []
            for _ in range(repeats):
                _synchronize(device)
                start = time.perf_counter()
                model(images)
                _synchronize(device)
                timings.append(time.perf_counter() - start)
            speeds[int(batch_size)] = int(batch_size) / statistics.median(timings)
    return speeds


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def all_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resolve_threads(threads: int) -> int:
    """``0`` means all cores; other values are taken as they are.

    Raises:
        ValueError: on a negative count.

    """
    if threads < 0:
        msg = f"Thread counts must be >= 0 (0: all cores), got {threads}."
        raise ValueError(msg)
    return threads or all_cores()


def median_seconds(run: Callable[[], Any], warmup: int, repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``run`` after ``warmup`` untimed calls.

    Raises:
        ValueError: if ``repeats`` < 1.

    """
    return median_times(run, warmup, repeats)[0]


def median_times(run: Callable[[], Any], warmup: int, repeats: int) -> tuple[float, float]:
    """Median wall time and median process CPU time (seconds) of ``repeats`` calls after ``warmup`` calls.

    With one compute thread, the CPU time is what the call costs on an idle core: unlike the wall
    time, it does not grow while other processes hold the CPU.

    Raises:
        ValueError: if ``repeats`` < 1.

    """
    if repeats < 1:
        msg = f"repeats must be at least 1, got {repeats}."
        raise ValueError(msg)
    for _ in range(warmup):
        run()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        run()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def image_batch(images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The first ``batch_size`` images, cycling through ``images`` if there are fewer."""
    index = torch.arange(batch_size) % len(images)
    return images[index].contiguous()


def compile_openvino(xml: str | Path, threads: int, profile: bool = False) -> Any:
    """Compile an IR for the CPU: ``threads`` inference threads, one stream, latency hint, the precision it records.

    The precision is the IR's (``f32`` for FP32 and INT8, ``bf16`` for the bf16 variants; see
    :func:`anomalib_classaware.deploy.inspection.resolve_precision`), as ``deploy_openvino.py`` runs it.
    """
    import openvino as ov

    from anomalib_classaware.deploy.inspection import resolve_precision

    core = ov.Core()
    model = core.read_model(str(xml))
    config: dict[str, Any] = {
        "INFERENCE_NUM_THREADS": int(threads),
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": resolve_precision(model),
    }
    if profile:
        config["PERF_COUNT"] = True
    return core.compile_model(model, "CPU", config)


def _timing_row(
    variant: str, batch_size: int, threads: int, seconds: tuple[float, float], repeats: int
) -> dict[str, Any]:
    wall, cpu = seconds
    return {
        "variant": variant,
        "batch_size": int(batch_size),
        "threads": int(threads),
        "ms_per_image": 1000 * wall / batch_size,
        "images_per_s": batch_size / wall,
        "cpu_ms_per_image": 1000 * cpu / batch_size,
        "repeats": int(repeats),
        "load_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan,
    }


class TimingPlan(NamedTuple):
    """What a speed measurement times: each batch size (cut from ``images``) at each thread count."""

    images: torch.Tensor
    batch_sizes: Sequence[int]
    thread_counts: Sequence[int]
    warmup: int
    repeats: int


#: ``session(threads)`` prepares a runtime for ``threads`` threads and returns ``call(batch)``, which readies a
#: batch and returns the zero-argument call that is timed.
Session = Callable[[int], Callable[[torch.Tensor], Callable[[], object]]]


def sweep_timings(variant: str, plan: TimingPlan, session: Session) -> list[dict[str, Any]]:
    """Timing rows of ``variant`` per thread count (one ``session`` each) and batch size."""
    rows = []
    for threads in plan.thread_counts:
        resolved = resolve_threads(threads)
        call = session(resolved)
        for batch_size in plan.batch_sizes:
            seconds = median_times(call(image_batch(plan.images, batch_size)), plan.warmup, plan.repeats)
            rows.append(_timing_row(variant, batch_size, resolved, seconds, plan.repeats))
    return rows


def time_torch(model: nn.Module, plan: TimingPlan) -> list[dict[str, Any]]:
    """Timing rows of the eager forward pass (``inference_mode``) per thread count and batch size."""
    model.eval()

    def session(threads: int) -> Callable[[torch.Tensor], Callable[[], object]]:
        torch.set_num_threads(threads)
        return lambda batch: lambda: model(batch)

    previous = torch.get_num_threads()
    try:
        with torch.inference_mode():
            return sweep_timings("torch", plan, session)
    finally:
        torch.set_num_threads(previous)


def time_openvino(xml: str | Path, variant: str, plan: TimingPlan) -> list[dict[str, Any]]:
    """Timing rows of a synchronous OpenVINO infer request per thread count and batch size."""

    def session(threads: int) -> Callable[[torch.Tensor], Callable[[], object]]:
        request = compile_openvino(xml, threads).create_infer_request()

        def call(batch: torch.Tensor) -> Callable[[], object]:
            data = batch.numpy()
            return lambda: request.infer({0: data})

        return call

    return sweep_timings(variant, plan, session)


def layer_profile(xml: str | Path, images: torch.Tensor, threads: int = 1, runs: int = 5) -> list[dict[str, Any]]:
    """OpenVINO per-layer counters, summed per layer type: where the time of one batch goes.

    Each layer's time is its minimum over ``runs`` inferences (robust to other processes taking
    the CPU for a while).

    Returns:
        Rows ``{"layer_type", "exec_types", "ms", "int8_ms", "share", "count"}`` sorted by time;
        ``exec_types`` lists the kernels used, most time first (e.g. ``brgconv_avx2_f32``,
        ``jit_avx2_I8``); ``int8_ms`` is the time of the layers that ran an INT8/UINT8 kernel.

    """
    request = compile_openvino(xml, threads, profile=True).create_infer_request()
    batch = images.numpy()
    layers: dict[str, tuple[str, str, float]] = {}
    for _ in range(runs):
        request.infer({0: batch})
        for info in request.profiling_info:
            if str(info.status).rsplit(".", 1)[-1] != "EXECUTED":
                continue
            milliseconds = info.real_time.total_seconds() * 1000
            previous = layers.get(info.node_name)
            if previous is None or milliseconds < previous[2]:
                layers[info.node_name] = (info.node_type, info.exec_type, milliseconds)
    totals: dict[str, dict[str, Any]] = {}
    for node_type, exec_type, milliseconds in layers.values():
        entry = totals.setdefault(
            node_type, {"layer_type": node_type, "ms": 0.0, "int8_ms": 0.0, "count": 0, "kernels": {}}
        )
        entry["ms"] += milliseconds
        entry["int8_ms"] += milliseconds if _is_int8_kernel(exec_type) else 0.0
        entry["count"] += 1
        entry["kernels"][exec_type] = entry["kernels"].get(exec_type, 0.0) + milliseconds
    total = sum(entry["ms"] for entry in totals.values()) or 1.0
    rows = []
    for entry in sorted(totals.values(), key=lambda item: -item["ms"]):
        kernels = sorted(entry.pop("kernels").items(), key=lambda item: -item[1])
        rows.append({**entry, "share": entry["ms"] / total, "exec_types": " ".join(name for name, _ in kernels)})
    return rows


COMPUTE_LAYERS = frozenset({"Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul", "FullyConnected"})
"""OpenVINO layer types that carry the arithmetic (what INT8 is meant to speed up)."""


def _is_int8_kernel(exec_type: str) -> bool:
    return exec_type.upper().endswith(("I8", "U8"))


def low_precision_share(profile: Iterable[Mapping[str, Any]]) -> float:
    """Share of the convolution and matrix-multiplication time spent in INT8/UINT8 kernels (NaN if none ran)."""
    rows = [row for row in profile if row["layer_type"] in COMPUTE_LAYERS]
    total = sum(float(row["ms"]) for row in rows)
    return sum(float(row.get("int8_ms") or 0.0) for row in rows) / total if total > 0 else math.nan


def _batch_categories(batch: Any, size: int) -> list[str]:
    category = getattr(batch, "category", None)
    if category is None:
        return ["all"] * size
    return [str(category)] * size if isinstance(category, str) else [str(name) for name in category]


def score_test_set(
    predict: Callable[[torch.Tensor], Mapping[str, Any]], batches: Iterable[Any]
) -> dict[str, np.ndarray]:
    """Run ``predict`` (images -> outputs with ``pred_score``, ``pred_label``) over the test batches."""
    scores, predicted, truth, categories = [], [], [], []
    for batch in batches:
        outputs = predict(batch.image)
        scores.append(np.asarray(outputs["pred_score"], dtype=np.float64).reshape(-1))
        predicted.append(np.asarray(outputs["pred_label"]).reshape(-1).astype(bool))
        truth.append(np.asarray(batch.gt_label).reshape(-1).astype(int))
        categories += _batch_categories(batch, len(batch.image))
    return {
        "score": np.concatenate(scores),
        "label": np.concatenate(predicted),
        "gt_label": np.concatenate(truth),
        "category": np.asarray(categories),
    }


THRESHOLD_MARGIN = 1e-4
"""Images whose reference score lies this close to the threshold (0.5) are left out of the label agreement."""


def quality_row(variant: str, scored: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Image AUROC of a variant and its agreement with the reference (torch eager) on the same images.

    The label agreement leaves out images whose reference score is within :data:`THRESHOLD_MARGIN`
    of the threshold: with the test set as validation set, the image that set the threshold scores
    exactly 0.5, and a 1e-7 difference flips it.
    """
    score, reference_score = scored["score"], reference["score"]
    correlation = (
        float(np.corrcoef(score, reference_score)[0, 1]) if score.std() > 0 and reference_score.std() > 0 else math.nan
    )
    decided = np.abs(reference_score - 0.5) > THRESHOLD_MARGIN
    agreement = float((scored["label"] == reference["label"])[decided].mean()) if decided.any() else math.nan
    return {
        "variant": variant,
        "image_AUROC": mean_category_auroc(score, scored["gt_label"], scored["category"]),
        "label_agreement": agreement,
        "score_pearson": correlation,
        "max_score_diff": float(np.abs(score - reference_score).max()),
        "test_images": len(score),
        "at_threshold": int((~decided).sum()),
    }


def measure_deployment(
    model: Any,  # a trained AnomalibModule
    datamodule: Any,
    input_size: int,
    workdir: str | Path,
    batch_sizes: Sequence[int] = (1, 8),
    thread_counts: Sequence[int] = (1, 0),
    warmup: int = 3,
    repeats: int = 10,
    variants: Sequence[str] = DEFAULT_VARIANTS,
    calibration_batch_size: int = 8,
) -> dict[str, Any]:
    """Export, time and score a trained model in each deployment variant.

    Args:
        model: The trained anomalib module (post-processor fitted), on the CPU.
        datamodule: Its datamodule (set up): normal training images calibrate INT8, the test set scores.
        input_size: Side of the square input baked into the exported graphs.
        workdir: Folder for the exported IRs (``openvino_<precision>/model.xml``).
        batch_sizes: Batch sizes to time.
        thread_counts: Thread counts to time (``0``: all cores).
        warmup: Untimed passes per (variant, batch size, threads).
        repeats: Timed passes; the median is reported.
        variants: Subset of :data:`VARIANTS`; :data:`BF16_VARIANTS` are skipped on a CPU without BF16.
        calibration_batch_size: Batch size of the calibration loader.

    Returns:
        ``{"timings": [rows], "quality": [rows], "profiles": {variant: [layer rows]}, "export_s": {...},
        "skipped": {variant: reason}}``.

    Raises:
        ValueError: on an unknown variant.

    """
    from torch.utils.data import DataLoader

    from anomalib_classaware.deploy import cpu_capabilities, export_openvino_variants

    unknown = [variant for variant in variants if variant not in VARIANTS]
    if unknown:
        msg = f"Unknown speed variants {unknown}; expected some of {', '.join(VARIANTS)}."
        raise ValueError(msg)
    skipped: dict[str, str] = {}
    if BF16_VARIANTS & set(variants) and "BF16" not in (capabilities := cpu_capabilities()):
        reason = f"this CPU has no BF16 (OpenVINO capabilities: {', '.join(capabilities)})"
        skipped = {variant: reason for variant in variants if variant in BF16_VARIANTS}
        variants = [variant for variant in variants if variant not in BF16_VARIANTS]
    model = model.cpu().eval()
    test_batches = list(datamodule.test_dataloader())
    images = torch.cat([batch.image for batch in test_batches])[: max(batch_sizes)]

    exports: dict[str, Path] = {}
    export_seconds: dict[str, float] = {}
    precisions = [_EXPORT_NAMES[variant] for variant in variants if variant in _EXPORT_NAMES]
    if precisions:
        train_data = datamodule.train_data
        calibration = DataLoader(train_data, batch_size=calibration_batch_size, collate_fn=train_data.collate_fn)
        start = time.perf_counter()
        paths = export_openvino_variants(
            model, workdir, (input_size, input_size), variants=precisions, calibration=calibration
        )
        export_seconds["openvino"] = time.perf_counter() - start
        exports = {variant: paths[_EXPORT_NAMES[variant]] for variant in variants if variant in _EXPORT_NAMES}

    def torch_predict(batch: torch.Tensor) -> dict[str, Any]:
        with torch.inference_mode():
            output = model(batch)
        return {"pred_score": output.pred_score.numpy(), "pred_label": output.pred_label.numpy()}

    plan = TimingPlan(images, batch_sizes, thread_counts, warmup, repeats)
    timings: list[dict[str, Any]] = []
    scored: dict[str, dict[str, np.ndarray]] = {}
    profiles: dict[str, list[dict[str, Any]]] = {}
    for variant in variants:
        if variant == "torch":
            timings += time_torch(model, plan)
            scored[variant] = score_test_set(torch_predict, test_batches)
            continue
        xml = exports[variant]
        timings += time_openvino(xml, variant, plan)
        request = compile_openvino(xml, 1).create_infer_request()

        def openvino_predict(batch: torch.Tensor, request: Any = request) -> dict[str, Any]:
            results = request.infer({0: batch.numpy()})
            return {next(iter(port.get_names())): value for port, value in results.items()}

        scored[variant] = score_test_set(openvino_predict, test_batches)
        profiles[variant] = layer_profile(xml, images[:1])
    reference = scored.get("torch") or next(iter(scored.values()))
    quality = [quality_row(variant, values, reference) for variant, values in scored.items()]
    return {
        "timings": timings,
        "quality": quality,
        "profiles": profiles,
        "export_s": export_seconds,
        "skipped": skipped,
    }
