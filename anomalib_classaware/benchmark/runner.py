"""One benchmark run: build the datamodule and the model, ``Engine.fit``/``Engine.test``, time and measure.

Everything here imports torch and anomalib; the benchmark's parent process reaches it only
through :mod:`anomalib_classaware.benchmark.worker`.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import math
import resource
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from anomalib.engine import Engine
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule, MemoryBankMixin
from anomalib.models.components.feature_extractors import TimmFeatureExtractor
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from torch import nn

from anomalib_classaware.benchmark.config import COMPONENT_RD, ModelSpec, budget_text, uses_component_rd
from anomalib_classaware.benchmark.speed import DEFAULT_VARIANTS, measure_deployment, measure_inference_speed
from anomalib_classaware.metrics import PerCategoryEvaluator
from anomalib_classaware.models.components import load_backbone_weights

logger = logging.getLogger(__name__)

_DATA_MODULES = ("anomalib_classaware.data", "anomalib.data")


def _import_path(path: str) -> Any:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def resolve_datamodule_class(class_path: str) -> type:
    """Return a datamodule class from its name (ours or anomalib's) or dotted import path.

    Raises:
        ValueError: if no such datamodule exists.

    """
    if "." in class_path:
        return _import_path(class_path)
    for module in _DATA_MODULES:
        cls = getattr(importlib.import_module(module), class_path, None)
        if isinstance(cls, type):
            return cls
    msg = f"Unknown datamodule {class_path!r}: not in {' or '.join(_DATA_MODULES)} and not a dotted path."
    raise ValueError(msg)


def build_datamodule(class_path: str, init_args: Mapping[str, Any], categories: Sequence[str] | None) -> Any:
    """Instantiate the datamodule; ``categories`` (if given) replaces ``init_args.categories``.

    ``num_workers`` defaults to 0. A single-category anomalib datamodule gets ``category``.
    """
    cls = resolve_datamodule_class(class_path)
    kwargs = {"num_workers": 0, **init_args}
    if categories is not None:
        parameters = inspect.signature(cls.__init__).parameters
        if "categories" in parameters:
            kwargs["categories"] = list(categories)
        elif "category" in parameters and len(categories) == 1:
            kwargs["category"] = categories[0]
        else:
            msg = f"{cls.__name__} takes no `categories`; it cannot run {list(categories)}."
            raise ValueError(msg)
    return cls(**kwargs)


def describe_data(class_path: str, init_args: Mapping[str, Any]) -> dict[str, Any]:
    """Prepare the data (e.g. generate the demo dataset) and return ``{"categories": [...]}`` in run order."""
    datamodule = build_datamodule(class_path, init_args, None)
    datamodule.prepare_data()
    categories = getattr(datamodule, "categories", None)
    if not categories:
        categories = [getattr(datamodule, "category", None) or "all"]
    return {"categories": [str(category) for category in categories]}


def resolve_model_class(spec: ModelSpec, backbone: str) -> type[AnomalibModule]:
    """Return the model class of ``spec``: ours, anomalib's, the component RD baseline or a dotted path.

    Raises:
        ValueError: if no such model exists.

    """
    if uses_component_rd(spec, backbone):
        from anomalib_classaware.benchmark.baselines import ComponentReverseDistillation

        return ComponentReverseDistillation
    if "." in spec.name:
        cls = _import_path(spec.name)
    else:
        import anomalib.models

        import anomalib_classaware.models as ours

        cls = getattr(ours, spec.name, None) if spec.name in ours.__all__ else getattr(anomalib.models, spec.name, None)
    if not (isinstance(cls, type) and issubclass(cls, AnomalibModule)):
        msg = (
            f"Unknown model {spec.name!r}: not one of anomalib_classaware.models ({', '.join(_our_models())}), "
            f"{COMPONENT_RD}, an anomalib model, or a dotted path to an AnomalibModule."
        )
        raise ValueError(msg)
    return cls


def _our_models() -> list[str]:
    import anomalib_classaware.models as ours

    return list(ours.__all__)


def feature_module_names(backbone: str) -> list[str]:
    """Module names of a timm backbone's feature levels (``feature_info``), shallow to deep."""
    extractor = timm.create_model(backbone, pretrained=False, features_only=True)
    return [str(info["module"]) for info in extractor.feature_info.info]


def translate_layers(layers: Sequence[str | int], backbone: str) -> list[str]:
    """Map layer names of a ResNet (anomalib's defaults, e.g. ``layer2``) onto ``backbone``'s feature levels.

    ``layerK`` is feature level ``K`` of a ResNet (level 0 is the stem), so it becomes the
    module name of level ``K`` of ``backbone`` (``blocks.2`` for ``layer2`` of an EfficientNet).
    Integers are level indices. Names that ``backbone`` already has are kept.

    Raises:
        ValueError: if a layer name cannot be mapped.

    """
    names = feature_module_names(backbone)
    translated = []
    for layer in layers:
        if isinstance(layer, int) or str(layer).isdigit():
            translated.append(names[int(layer)])
        elif layer in names:
            translated.append(str(layer))
        elif str(layer).startswith("layer") and str(layer)[5:].isdigit() and int(str(layer)[5:]) < len(names):
            translated.append(names[int(str(layer)[5:])])
        else:
            msg = f"Layer {layer!r} is not a feature level of {backbone} ({names}) and has no ResNet equivalent."
            raise ValueError(msg)
    return translated


def _load_features(extractor: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy full-classifier weights into a timm ``features_only`` model (names match, nested ones flattened)."""
    flattened = {key.replace(".", "_"): key for key in state_dict}
    selected = {}
    for key, tensor in extractor.state_dict().items():
        source_key = key if key in state_dict else flattened.get(key.replace(".", "_"))
        if source_key is None or state_dict[source_key].shape != tensor.shape:
            msg = f"{source}: no tensor of shape {tuple(tensor.shape)} for the feature extractor's {key!r}."
            raise ValueError(msg)
        selected[key] = state_dict[source_key]
    extractor.load_state_dict(selected, strict=True)


_PRETRAINED_MARK = "_anomalib_classaware_wants_pretrained"


@contextlib.contextmanager
def timm_pretrained_from_local_file() -> Iterator[None]:
    """While a model is built: ``timm.create_model(pretrained=True)`` downloads nothing and marks the model.

    anomalib models such as ``Stfpm`` hard-code ``pre_trained=True`` for their teacher (a download)
    and build the student without weights; the marked extractors then get the local weights file
    (:func:`load_weights_into_timm_extractors`) and the others keep their random initialisation.
    """
    create_model = timm.create_model

    def create_without_download(*args: Any, **kwargs: Any) -> nn.Module:
        wanted = bool(kwargs.get("pretrained"))
        module = create_model(*args, **{**kwargs, "pretrained": False})
        if wanted:
            setattr(module, _PRETRAINED_MARK, True)
        return module

    timm.create_model = create_without_download
    try:
        yield
    finally:
        timm.create_model = create_model


def load_weights_into_timm_extractors(model: nn.Module, backbone: str, weights_path: str) -> int:
    r"""Load a local classifier checkpoint into anomalib ``TimmFeatureExtractor``\ s of ``backbone`` in ``model``.

    If the model was built under :func:`timm_pretrained_from_local_file`, only the extractors that
    asked for pretrained weights are loaded (e.g. STFPM's teacher, not its student); otherwise all.

    Returns:
        The number of extractors loaded.

    """
    state_dict = load_backbone_weights(backbone, weights_path)
    extractors = [
        module for module in model.modules() if isinstance(module, TimmFeatureExtractor) and module.backbone == backbone
    ]
    requested = [module for module in extractors if getattr(module.feature_extractor, _PRETRAINED_MARK, False)]
    for module in requested or extractors:
        _load_features(module.feature_extractor, state_dict, weights_path)
    return len(requested or extractors)


def build_model(
    spec: ModelSpec,
    backbone: str,
    weights_path: str | None,
    pre_trained: bool,
    input_size: int,
    weights_label: str | None = None,
) -> tuple[AnomalibModule, dict[str, Any]]:
    """Instantiate a model with the benchmark's backbone, weights and input size.

    The harness sets, where the model's ``__init__`` accepts them: ``backbone``, ``weights_path``
    or ``pre_trained``, ``input_size`` (else a pre-processor of that size), ``visualizer=False``;
    anomalib models' default ResNet layer names are translated to the backbone's levels. Local
    weights go into anomalib's ``TimmFeatureExtractor`` after construction. ``spec.init_args``
    override everything.

    Args:
        spec: The model's specification.
        backbone: timm backbone name (``spec.init_args.backbone`` overrides it).
        weights_path: Local weights file of the full timm classifier, or ``None``.
        pre_trained: Use timm's pretrained weights when there is no local file.
        input_size: Side of the square model input.
        weights_label: How the weights are named in the results (default: the file path).

    Returns:
        The model and a record of what it was built with (class, backbone, layers, weights).

    Raises:
        ValueError: if the model takes a backbone but the local weights could not be applied.

    """
    cls = resolve_model_class(spec, backbone)
    parameters = inspect.signature(cls.__init__).parameters
    init_args = dict(spec.init_args)
    backbone = str(init_args.get("backbone", backbone))
    kwargs: dict[str, Any] = {}
    takes_backbone = "backbone" in parameters
    if takes_backbone:
        kwargs["backbone"] = backbone
    if "weights_path" in parameters:
        kwargs["weights_path"] = weights_path
        kwargs["pre_trained"] = pre_trained and weights_path is None
    elif "pre_trained" in parameters:
        kwargs["pre_trained"] = pre_trained and weights_path is None
    if "input_size" in parameters:
        kwargs["input_size"] = (input_size, input_size)
    elif "pre_processor" in parameters and "pre_processor" not in init_args:
        kwargs["pre_processor"] = cls.configure_pre_processor(image_size=(input_size, input_size))
    if "visualizer" in parameters:
        kwargs["visualizer"] = False
    if (
        takes_backbone
        and "layers" in parameters
        and "layers" not in init_args
        and not cls.__module__.startswith("anomalib_classaware")
    ):
        default_layers = parameters["layers"].default
        if isinstance(default_layers, Sequence) and not isinstance(default_layers, str):
            kwargs["layers"] = translate_layers(list(default_layers), backbone)
    kwargs.update(init_args)
    local_weights = weights_path is not None and takes_backbone and "weights_path" not in parameters
    with timm_pretrained_from_local_file() if local_weights else contextlib.nullcontext():
        model = cls(**kwargs)

    weights_record = "timm pretrained" if kwargs.get("pre_trained") else "random init"
    if weights_path is not None and takes_backbone:
        weights_record = weights_label or weights_path
        if "weights_path" not in parameters:
            if load_weights_into_timm_extractors(model, backbone, weights_path) == 0:
                msg = f"{cls.__name__}: no TimmFeatureExtractor of {backbone} found to load {weights_path} into."
                raise ValueError(msg)
            weights_record += " (loaded into TimmFeatureExtractor)"
        elif kwargs.get("weights_path") != weights_path:
            weights_record = str(kwargs.get("weights_path") or "random init")
    layers = kwargs["layers"] if "layers" in kwargs else getattr(parameters.get("layers"), "default", None)
    record = {
        "model_class": f"{cls.__module__}.{cls.__qualname__}",
        "backbone": backbone if takes_backbone else "",
        "layers": " ".join(str(layer) for layer in layers) if isinstance(layers, Sequence) else "",
        "weights": weights_record if takes_backbone else "",
    }
    return model, record


class TrainTimer(Callback):
    """Training time and the images and steps it saw; optionally stops training at a wall-clock budget.

    Training time is the wall time of the training loop without the validation passes inside it,
    plus, for memory-bank models (``MemoryBankMixin``: Patchcore...), the memory-bank build
    (``fit()``, e.g. coreset sampling) that anomalib runs when validation starts: that build is
    their training. With ``time_budget_s``, the first training step after which the training time
    reaches the budget sets ``trainer.should_stop`` (Lightning then validates and ends the fit); a
    memory-bank build that follows cannot be interrupted and is counted in full. Models with a residual
    calibration (``fit_residual_calibration``) refit it whenever they are evaluated after training; the last
    fit, the one the evaluated model uses, is its training too (``calibration_time``, added by the runner).

    Args:
        time_budget_s: seconds of training time after which training stops (``None``: no budget).

    """

    def __init__(self, time_budget_s: float | None = None) -> None:
        if time_budget_s is not None and time_budget_s <= 0:
            msg = f"`time_budget_s` must be positive, got {time_budget_s}."
            raise ValueError(msg)
        self.time_budget_s = time_budget_s
        self.images = 0
        self.batches = 0
        self.validation_runs = 0
        self.stopped_by_time_budget = False
        self.memory_bank_time = 0.0
        self.calibration_time = 0.0
        self._start = 0.0
        self._validation_start = 0.0
        self._validation_time = 0.0
        self._in_validation = False
        self.train_time = 0.0

    def elapsed(self) -> float:
        """Training time so far (during training, outside validation)."""
        return time.perf_counter() - self._start - self._validation_time + self.memory_bank_time

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start the clock; time the memory-bank build of memory-bank models."""
        del trainer
        self._start = time.perf_counter()
        if isinstance(pl_module, MemoryBankMixin):
            build = pl_module.fit

            def timed_build(*args: Any, **kwargs: Any) -> Any:
                start = time.perf_counter()
                try:
                    return build(*args, **kwargs)
                finally:
                    if self._in_validation:  # otherwise the training loop's clock already counts it
                        self.memory_bank_time += time.perf_counter() - start

            pl_module.fit = timed_build  # type: ignore[method-assign]
        calibrate = getattr(pl_module, "fit_residual_calibration", None)
        if calibrate is not None and "fit_residual_calibration" not in vars(pl_module):

            def timed_calibration(*args: Any, **kwargs: Any) -> Any:
                start = time.perf_counter()
                try:
                    return calibrate(*args, **kwargs)
                finally:
                    self.calibration_time = time.perf_counter() - start  # the fit in use: the last one

            pl_module.fit_residual_calibration = timed_calibration  # type: ignore[method-assign]

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Count the batch and its images; stop training once the time budget is spent."""
        del pl_module, outputs, batch_idx
        self.batches += 1
        self.images += int(batch.image.shape[0])
        if self.time_budget_s is not None and self.elapsed() >= self.time_budget_s and not trainer.should_stop:
            trainer.should_stop = True
            self.stopped_by_time_budget = True

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Pause the clock for validation."""
        del trainer, pl_module
        self._validation_start = time.perf_counter()
        self._in_validation = True

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Resume the clock."""
        del trainer, pl_module
        self._validation_time += time.perf_counter() - self._validation_start
        self._in_validation = False
        self.validation_runs += 1

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Stop the clock."""
        del trainer
        self.train_time = self.elapsed()
        if "fit" in vars(pl_module):
            del pl_module.fit  # the class's method again


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (``ru_maxrss``)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _budget_arguments(
    model: AnomalibModule, max_steps: int | None, max_epochs: int | None, time_budget_s: float | None = None
) -> tuple[dict, str]:
    """Trainer arguments of the training budget (validation once, at the end) and their description."""
    suffix = f", time_budget_s={time_budget_s:g}" if time_budget_s is not None else ""
    if isinstance(model, MemoryBankMixin):
        return {"max_epochs": 1}, f"1 epoch (memory bank){suffix}"
    if max_steps is not None:
        return (
            {"max_steps": max_steps, "check_val_every_n_epoch": None, "val_check_interval": max_steps},
            budget_text(max_steps, None, time_budget_s),
        )
    epochs = max_epochs or 1
    return {"max_epochs": epochs, "check_val_every_n_epoch": epochs}, budget_text(None, epochs, time_budget_s)


def execute_run(payload: Mapping[str, Any]) -> dict[str, Any]:
    """Train and test one model; return its metrics and measurements.

    Args:
        payload: ``model`` (ModelSpec fields), ``setting``, ``seed``, ``categories``, ``data``
            (``class_path``, ``init_args``), ``backbone``, ``weights_path``, ``pre_trained``,
            ``input_size``, ``max_steps``, ``max_epochs``, ``time_budget_s``, ``speed_batch_sizes``, ``speed_warmup``,
            ``speed_repeats``, ``threads``, ``run_dir``, ``keep_checkpoints``; optionally ``speed``,
            ``speed_threads``, ``speed_variants`` (deployment speed of unified runs).

    Returns:
        ``{"status": "ok", "metrics": {category: {metric: value}}, ...measurements}``; with ``speed``,
        ``deployment``: the result of :func:`~anomalib_classaware.benchmark.speed.measure_deployment`
        (or ``{"error": ...}`` if the export or a measurement failed: the run's metrics are kept).

    """
    if payload.get("threads"):
        torch.set_num_threads(int(payload["threads"]))
    seed_everything(int(payload["seed"]), workers=True, verbose=False)
    run_dir = Path(payload["run_dir"])
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)

    spec = ModelSpec(**payload["model"])
    datamodule = build_datamodule(payload["data"]["class_path"], payload["data"]["init_args"], payload["categories"])
    input_size = int(payload["input_size"])
    model, record = build_model(
        spec,
        payload["backbone"],
        payload["weights_path"],
        bool(payload["pre_trained"]),
        input_size,
        payload.get("weights_label"),
    )
    if isinstance(model.evaluator, Evaluator) and not isinstance(model.evaluator, PerCategoryEvaluator):
        model.evaluator = PerCategoryEvaluator.from_evaluator(model.evaluator, print_table=False)

    time_budget_s = payload.get("time_budget_s")
    budget, budget_record = _budget_arguments(model, payload.get("max_steps"), payload.get("max_epochs"), time_budget_s)
    timer = TrainTimer(time_budget_s)
    engine = Engine(
        default_root_dir=run_dir,
        callbacks=[timer],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        devices=1,
        **budget,
    )
    start = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    fit_time = time.perf_counter() - start
    start = time.perf_counter()
    engine.test(model=model, datamodule=datamodule, verbose=False)
    test_time = time.perf_counter() - start
    evaluator = model.evaluator
    if not isinstance(evaluator, PerCategoryEvaluator) or not evaluator.last_results:
        msg = "The test produced no per-category results."
        raise RuntimeError(msg)
    results = {category: dict(values) for category, values in evaluator.last_results.items() if category != "mean"}

    speeds = measure_inference_speed(
        model,
        (input_size, input_size),
        batch_sizes=[int(size) for size in payload.get("speed_batch_sizes", ())],
        warmup=int(payload.get("speed_warmup", 2)),
        repeats=int(payload.get("speed_repeats", 5)),
    )
    deployment = None
    if payload.get("speed") and payload.get("setting") == "unified":
        deployment = _deployment(model, datamodule, input_size, run_dir / "deploy", payload)
    network = model.model
    train_time = timer.train_time + timer.calibration_time
    if not payload.get("keep_checkpoints"):
        for checkpoint in run_dir.rglob("*.ckpt"):
            checkpoint.unlink()
        shutil.rmtree(run_dir / "deploy", ignore_errors=True)
    return {
        "status": "ok",
        "metrics": results,
        **record,
        "budget": budget_record,
        "train_steps": timer.batches,
        "time_budget_s": time_budget_s,
        "stopped_by_time_budget": timer.stopped_by_time_budget,
        "memory_bank_time_s": timer.memory_bank_time,
        "train_images": timer.images,
        "calibration_time_s": timer.calibration_time,
        "train_time_s": train_time,
        "train_images_per_s": timer.images / train_time if train_time > 0 else math.nan,
        "fit_time_s": fit_time,
        "test_time_s": test_time,
        "validation_runs": timer.validation_runs,
        "infer_images_per_s": {str(size): value for size, value in speeds.items()},
        "threads": torch.get_num_threads(),
        "device": str(model.device),
        "params": sum(parameter.numel() for parameter in network.parameters()),
        "trainable_params": sum(parameter.numel() for parameter in network.parameters() if parameter.requires_grad),
        "peak_rss_mb": peak_rss_mb(),
        **({"deployment": deployment} if deployment is not None else {}),
    }


def _deployment(
    model: AnomalibModule, datamodule: Any, input_size: int, workdir: Path, payload: Mapping[str, Any]
) -> dict[str, Any]:
    """Deployment speed and quality of a trained model; a failure is returned as ``{"error": ...}``."""
    start = time.perf_counter()
    try:
        result = measure_deployment(
            model,
            datamodule,
            input_size,
            workdir,
            batch_sizes=[int(size) for size in payload.get("speed_batch_sizes", (1, 8))],
            thread_counts=[int(threads) for threads in payload.get("speed_threads", (1, 0))],
            warmup=int(payload.get("speed_warmup", 2)),
            repeats=int(payload.get("speed_repeats", 5)),
            variants=list(payload.get("speed_variants") or DEFAULT_VARIANTS),
        )
    except Exception as error:  # recorded in speed.md; the run's quality metrics stay valid
        logger.exception("Deployment measurement failed")
        return {"error": f"{type(error).__name__}: {error}", "wall_time_s": time.perf_counter() - start}
    return {**result, "wall_time_s": time.perf_counter() - start}
