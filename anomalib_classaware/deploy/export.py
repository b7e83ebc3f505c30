"""OpenVINO export in several precisions from one ONNX trace, with NNCF's transformer preset where it applies.

anomalib's ``Engine.export(export_type="openvino", compression_type=...)`` traces the model to ONNX
for every call (the slow part: 20-60 s on a small CPU) and quantizes ``INT8_PTQ`` with
``nncf.quantize(model, dataset)`` only: it passes no ``model_type``, so attention models do not get
NNCF's ``ModelType.TRANSFORMER`` scheme (which keeps softmax/layer norm and other
accuracy-sensitive parts of attention blocks in floating point). :func:`export_openvino_variants`
traces once, then writes each requested precision; :func:`quantize_openvino` is ``INT8_PTQ`` with the
model type chosen from the network (:func:`nncf_model_type`).

By default the INT8 graph quantizes the *network* only: the convolutions, linear layers and
attention blocks of the encoders, decoders and transformers, and what feeds them. The head after
the last parameterised layer stays in floating point: the feature distances, the anomaly-map
interpolation and Gaussian blur, the score reduction and the post-processor's normalisation and
thresholds (:func:`head_node_names`). Quantizing those too (what anomalib's ``INT8_PTQ`` does)
gives the distances, maps and scores 8-bit inputs whose range is fixed by the calibration images:
for every model of this package the score then collapses to a constant (tests/deploy). The head
costs little time in floating point.

The exported graph is anomalib's: pre-processing, the torch model and post-processing, one input
(``input``: float RGB in [0, 1], NCHW, fixed height and width, dynamic batch) and the outputs
``pred_score``, ``pred_label``, ``anomaly_map`` and ``pred_mask``.
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from .categories import model_category_names, set_category_names

if TYPE_CHECKING:
    import nncf
    import openvino as ov
    from anomalib.models.components import AnomalibModule
    from torchmetrics import Metric

Variant = Literal["fp32", "fp16", "int8", "int8_ptq", "int8_ptq_full", "bf16", "int8_ptq_bf16"]
VARIANTS: tuple[str, ...] = ("fp32", "fp16", "int8", "int8_ptq", "int8_ptq_full", "bf16", "int8_ptq_bf16")
"""``fp32``: no compression; ``fp16``: FP16 weights; ``int8``: INT8 weights (``nncf.compress_weights``);
``int8_ptq``: INT8 weights and activations of the network (``nncf.quantize`` on calibration images),
head in floating point; ``int8_ptq_full``: the whole graph quantized, as anomalib's ``INT8_PTQ``;
``bf16``: the FP32 graph, run in bfloat16; ``int8_ptq_bf16``: ``int8_ptq`` with its floating-point parts
in bfloat16 (both for CPUs with BF16: :func:`~anomalib_classaware.deploy.inspection.cpu_supports_bf16`)."""

VARIANT_PRECISIONS: dict[str, str] = {
    "fp32": "f32",
    "fp16": "f32",  # FP16 *weights* (half the file); the arithmetic stays f32 on every CPU, as tested
    "int8": "f32",
    "int8_ptq": "f32",
    "int8_ptq_full": "f32",
    "bf16": "bf16",
    "int8_ptq_bf16": "bf16",
}
"""Inference precision each variant records in its IR (``rt_info`` ``runtime_options``/``INFERENCE_PRECISION_HINT``).

OpenVINO's CPU plugin otherwise picks ``bf16`` on CPUs with BF16 for any f32 graph, which moves the
scores by ~1e-2 and flips labels near the threshold."""

logger = logging.getLogger(__name__)

ModelTypeChoice = Literal["auto", "cnn", "transformer"]

DEFAULT_ONNX_KWARGS: dict[str, Any] = {"opset_version": 18}
"""Opset 18 avoids the dynamo exporter's noisy down-conversion attempt to anomalib's default opset 14."""


def has_attention(module: nn.Module) -> bool:
    """Whether ``module`` contains an attention block.

    An attention block is a :class:`torch.nn.MultiheadAttention`, a transformer layer of
    ``torch.nn`` or any module whose class name ends with ``Attention`` (e.g. the package's
    :class:`~anomalib_classaware.models.components.networks.attention.MaskedAttention`).
    """
    attention_types = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)
    return any(
        isinstance(child, attention_types) or type(child).__name__.endswith("Attention") for child in module.modules()
    )


def nncf_model_type(module: nn.Module, choice: ModelTypeChoice = "auto") -> nncf.ModelType | None:
    """NNCF ``model_type`` for ``module``: ``TRANSFORMER`` for attention models under ``"auto"``, else ``None``.

    Raises:
        ValueError: on an unknown ``choice``.

    """
    import nncf

    if choice not in {"auto", "cnn", "transformer"}:
        msg = f"Unknown model type {choice!r}; expected 'auto', 'cnn' or 'transformer'."
        raise ValueError(msg)
    if choice == "transformer" or (choice == "auto" and has_attention(module)):
        return nncf.ModelType.TRANSFORMER
    return None


def calibration_images(batches: Iterable[Any]) -> Iterable[np.ndarray]:
    """The ``image`` of each batch (an anomalib ``Batch``, a dict or a tensor) as a float32 NCHW array."""
    for batch in batches:
        image = batch if isinstance(batch, torch.Tensor) else batch["image"]
        yield image.detach().cpu().numpy().astype(np.float32, copy=False)


class _Images:
    """Re-iterable view of a dataloader's images (NNCF iterates its dataset more than once)."""

    def __init__(self, batches: Iterable[Any]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(calibration_images(self.batches))


def _scopes(node: Any) -> list[str] | None:
    """The torch module names of an ONNX node (the dynamo exporter's ``pkg.torch.onnx.name_scopes``)."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                names = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            return [str(name) for name in names] if isinstance(names, list | tuple) else None
    return None


def head_node_names(onnx_path: str | Path, module: nn.Module, root: Sequence[str] = ("", "model")) -> set[str]:
    """Names of the ONNX nodes of the "head": everything after the last parameterised layer.

    A node is part of the network if one of the torch modules it was traced in (below the
    Lightning module ``""`` and the torch model ``"model"``) has parameters (convolutions, linear
    layers, norms, attention blocks), or if it feeds such a node (activations and residual
    additions written as functions between layers, pre-processing). The others form the head:
    feature distances, anomaly map, blur, score reduction, post-processing. Nodes without scope
    metadata count as network.
    """
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    parameterised: dict[str, bool] = {}

    def has_parameters(name: str) -> bool:
        if name not in parameterised:
            try:
                submodule = module.get_submodule(name)
            except AttributeError:  # the op's own name, not a module
                parameterised[name] = False
            else:
                parameterised[name] = any(True for _ in submodule.parameters())
        return parameterised[name]

    candidates, network = set(), []
    for node in graph.node:
        scopes = _scopes(node)
        if scopes is not None and not any(has_parameters(name) for name in scopes if name not in root):
            candidates.add(node.name)
        else:
            network.append(node)
    producers = {output: node for node in graph.node for output in node.output if output}
    feeds_network: set[str] = set()
    stack = list(network)
    while stack:  # every ancestor of a network node belongs to the network
        for tensor in stack.pop().input:
            producer = producers.get(tensor)
            if producer is not None and producer.name not in feeds_network:
                feeds_network.add(producer.name)
                stack.append(producer)
    return candidates - feeds_network


def ignored_head_scope(model: ov.Model, head: set[str]) -> nncf.IgnoredScope:
    """NNCF ignored scope of the OpenVINO ops that come from the ONNX head nodes (``name`` or ``name/...``)."""
    import nncf

    names = sorted(op.get_friendly_name() for op in model.get_ops() if op.get_friendly_name().split("/")[0] in head)
    return nncf.IgnoredScope(names=names, validate=False)


def quantize_openvino(
    model: ov.Model,
    batches: Iterable[Any],
    model_type: nncf.ModelType | None = None,
    subset_size: int = 300,
    **nncf_kwargs: Any,
) -> ov.Model:
    """INT8 post-training quantization (``INT8_PTQ``) of an OpenVINO model with NNCF.

    Args:
        model: The FP32 OpenVINO model (not modified).
        batches: Calibration batches: anomalib datamodule batches (their ``image``: raw RGB in
            [0, 1], the exported graph normalises), dicts with ``image``, or tensors. Use normal
            images of every category: anomalib uses ``datamodule.val_dataloader()``.
        model_type: ``nncf.ModelType.TRANSFORMER`` for attention models (see :func:`nncf_model_type`).
        subset_size: Calibration samples NNCF uses at most (``nncf.quantize`` default: 300).
        **nncf_kwargs: Further arguments of ``nncf.quantize`` (``preset``, ``ignored_scope``: e.g.
            :func:`ignored_head_scope` to keep the head in floating point).

    Returns:
        The quantized model.

    """
    import nncf

    dataset = nncf.Dataset(_Images(batches))
    return nncf.quantize(model.clone(), dataset, model_type=model_type, subset_size=subset_size, **nncf_kwargs)


def check_post_processor_fitted(model: nn.Module) -> None:
    """Fail clearly if the post-processor normalises but has no statistics yet.

    Without a validation pass its min/max are NaN; the FP32 graph then returns raw scores, but
    OpenVINO cannot compile the INT8 graph ("Attribute 'min' must be less or equal than 'max'. Got:
    -nan and -nan"): its low-precision passes fold the NaN statistics into the clamps.

    Raises:
        ValueError: naming the missing statistics.

    """
    post_processor = getattr(model, "post_processor", None)
    if post_processor is None or not getattr(post_processor, "enable_normalization", False):
        return
    missing = [
        name
        for name in ("image_min", "image_max", "pixel_min", "pixel_max", "image_mins", "image_maxs")
        if isinstance(value := getattr(post_processor, name, None), torch.Tensor) and bool(torch.isnan(value).any())
    ]
    if missing:
        msg = (
            f"The post-processor has no {', '.join(missing)}: run a validation pass before quantizing "
            "(Engine.fit validates at the end of each epoch or every `val_check_interval` steps)."
        )
        raise ValueError(msg)


def export_openvino_variants(
    model: AnomalibModule,
    export_root: str | Path,
    input_size: tuple[int, int],
    variants: Sequence[str] = ("fp32",),
    calibration: Iterable[Any] | None = None,
    model_type: ModelTypeChoice = "auto",
    onnx_kwargs: dict[str, Any] | None = None,
    subset_size: int = 300,
) -> dict[str, Path]:
    """Export ``model`` to OpenVINO IR in each precision of ``variants``, tracing it to ONNX once.

    Args:
        model: A trained anomalib module (its post-processor has fitted thresholds and normalisation).
        export_root: Output folder; variant ``v`` is written to ``<export_root>/openvino_<v>/model.xml``.
        input_size: ``(H, W)`` baked into the graph (the batch stays dynamic).
        variants: Subset of :data:`VARIANTS`.
        calibration: Calibration batches for ``int8_ptq``/``int8_ptq_full``: normal images of every
            category (e.g. a loader over ``datamodule.train_data``).
        model_type: NNCF model type for ``int8_ptq``: ``"auto"`` (``TRANSFORMER`` if the torch model
            has attention), ``"cnn"`` or ``"transformer"``.
        onnx_kwargs: Arguments of ``model.to_onnx`` (default: opset 18).
        subset_size: NNCF calibration subset size for ``int8_ptq``.

    Returns:
        ``{variant: path of model.xml}``.

    Each IR records its inference precision (:data:`VARIANT_PRECISIONS`); a ``bf16`` variant written
    on a CPU without BF16 logs a warning (it is meant for another CPU).

    Raises:
        ValueError: on an unknown variant, ``int8_ptq`` without ``calibration``, or an INT8 export of a
            model whose post-processor has not been fitted (:func:`check_post_processor_fitted`).

    """
    import openvino as ov

    from anomalib_classaware.deploy.inspection import cpu_capabilities, set_inference_precision

    unknown = [variant for variant in variants if variant not in VARIANTS]
    if unknown:
        msg = f"Unknown OpenVINO variants {unknown}; expected some of {', '.join(VARIANTS)}."
        raise ValueError(msg)
    if any(variant.startswith("int8_ptq") for variant in variants):
        if calibration is None:
            msg = "int8_ptq needs calibration batches (e.g. a loader over the normal training images)."
            raise ValueError(msg)
        check_post_processor_fitted(model)
    if any(VARIANT_PRECISIONS[variant] == "bf16" for variant in variants):
        capabilities = cpu_capabilities()
        if "BF16" not in capabilities:
            logger.warning(
                "Writing bf16 variants on a CPU without BF16 (OpenVINO capabilities: %s): they are meant for a CPU "
                "with AVX-512 BF16 or AMX; here OpenVINODetector runs them in f32.",
                ", ".join(capabilities),
            )
    export_root = Path(export_root)
    paths: dict[str, Path] = {}
    network_int8 = {"int8_ptq", "int8_ptq_bf16"}
    fp32, head = trace_to_openvino(model, input_size, onnx_kwargs, with_head=bool(network_int8 & set(variants)))
    quantized: ov.Model | None = None
    names = model_category_names(model)
    for variant in variants:
        folder = export_root / f"openvino_{variant}"
        folder.mkdir(parents=True, exist_ok=True)
        if variant == "int8":
            import nncf

            converted = nncf.compress_weights(fp32.clone())
        elif variant in network_int8:
            if quantized is None:  # int8_ptq and int8_ptq_bf16 share one quantization
                quantized = quantize_network(model, fp32, head, calibration, model_type, subset_size)
            converted = quantized.clone()
        elif variant == "int8_ptq_full":
            model_type_value = nncf_model_type(model.model, model_type)
            converted = quantize_openvino(fp32, calibration, model_type_value, subset_size=subset_size)
        else:
            converted = fp32.clone()
        set_inference_precision(converted, VARIANT_PRECISIONS[variant])
        set_category_names(converted, names)
        paths[variant] = folder / "model.xml"
        ov.save_model(converted, paths[variant], compress_to_fp16=variant == "fp16")
    return paths


def trace_to_openvino(
    model: AnomalibModule,
    input_size: tuple[int, int] | None,
    onnx_kwargs: dict[str, Any] | None = None,
    ov_kwargs: dict[str, Any] | None = None,
    with_head: bool = True,
) -> tuple[ov.Model, set[str]]:
    """Trace ``model`` to ONNX once and convert it: the FP32 OpenVINO model and its head's node names.

    ``input_size`` ``None`` keeps height and width dynamic (as anomalib's ``to_onnx``).
    """
    import openvino as ov

    with TemporaryDirectory() as onnx_folder:
        onnx_path = model.to_onnx(onnx_folder, input_size=input_size, **{**DEFAULT_ONNX_KWARGS, **(onnx_kwargs or {})})
        fp32 = ov.convert_model(onnx_path, **(ov_kwargs or {}))
        head = head_node_names(onnx_path, model) if with_head else set()
    return fp32, head


def quantize_network(
    model: AnomalibModule,
    fp32: ov.Model,
    head: set[str],
    calibration: Iterable[Any],
    model_type: ModelTypeChoice = "auto",
    subset_size: int = 300,
) -> ov.Model:
    """The package's ``INT8_PTQ``: the network in INT8, the head (:func:`head_node_names`) in floating point.

    NNCF's ``TRANSFORMER`` preset is used for models with attention (``model_type="auto"``).

    Raises:
        ValueError: if the post-processor has not been fitted (:func:`check_post_processor_fitted`).

    """
    check_post_processor_fitted(model)
    return quantize_openvino(
        fp32, calibration, subset_size=subset_size, **_network_recipe(model, fp32, head, model_type)
    )


def _network_recipe(model: AnomalibModule, fp32: ov.Model, head: set[str], model_type: ModelTypeChoice) -> dict:
    """NNCF arguments of the package's network-only INT8: the model type and the head left in floating point."""
    return {"model_type": nncf_model_type(model.model, model_type), "ignored_scope": ignored_head_scope(fp32, head)}


def image_auroc_metric() -> Metric:
    """The default metric of the package's ``INT8_ACQ``: image AUROC of ``pred_score`` against ``gt_label``.

    anomalib's ``INT8_ACQ`` defaults to the F1 score of the thresholded labels; the AUROC of the
    scores sees a damaged score ranking even where few labels flip on a small validation set.
    """
    from anomalib.metrics import AUROC

    return AUROC(fields=["pred_score", "gt_label"])


def labelled_score_fn(metric: Metric) -> Callable[[Any, Iterable[Any]], float]:
    """NNCF ``validation_fn``: ``metric`` of an OpenVINO model's outputs on labelled anomalib batches.

    Every output of the exported graph is handed to the metric (scores, labels, maps, masks) with
    the batch's ground truth, so image- and pixel-level anomalib metrics work. NNCF also calls it on
    single batches (to rank layers); a batch with one label then gives an undefined AUROC, which
    only matters when the validation set has more batches than NNCF's ``subset_size``.

    The metric is reset before every evaluation (NNCF evaluates the FP32 and several partly
    quantized models with it; anomalib's ``INT8_ACQ`` accumulates across them).
    """
    from anomalib.data import ImageBatch

    def output(outputs: Any, name: str) -> torch.Tensor | None:
        try:
            return torch.from_numpy(np.asarray(outputs[name]))
        except KeyError:
            return None

    def validate(compiled_model: Any, batches: Iterable[Any]) -> float:
        metric.reset()
        for batch in batches:
            outputs = compiled_model(np.asarray(batch.image, dtype=np.float32))
            score, label = output(outputs, "pred_score"), output(outputs, "pred_label")
            if score is None:
                msg = "The exported graph has no `pred_score` output: export an anomalib model with its post-processor."
                raise ValueError(msg)
            anomaly_map, pred_mask = output(outputs, "anomaly_map"), output(outputs, "pred_mask")
            metric.update(
                ImageBatch(
                    image=batch.image,
                    pred_score=score.reshape(-1),
                    pred_label=None if label is None else label.reshape(-1),
                    anomaly_map=anomaly_map,
                    pred_mask=pred_mask,
                    gt_label=batch.gt_label,
                    gt_mask=batch.gt_mask,
                )
            )
        return float(metric.compute())

    return validate


def check_accuracy_control_arguments(metric: object, max_drop: float) -> None:
    """Fail early on an ``INT8_ACQ`` metric that is not an anomalib metric instance, or a ``max_drop`` outside [0, 1].

    Raises:
        TypeError: if ``metric`` is not ``None`` and has no ``update``/``compute``/``reset`` (e.g. a name).
        ValueError: if ``max_drop`` is outside [0, 1].

    """
    if metric is not None and not all(hasattr(metric, name) for name in ("update", "compute", "reset")):
        msg = (
            f"INT8_ACQ needs a metric object such as AUROC(fields=['pred_score', 'gt_label']), got {metric!r} "
            "(in a config: metric: {class_path: anomalib.metrics.AUROC, init_args: {fields: [pred_score, gt_label]}})."
        )
        raise TypeError(msg)
    if not 0.0 <= max_drop <= 1.0:
        msg = f"max_drop must be in [0, 1] (an absolute drop of the metric), got {max_drop}."
        raise ValueError(msg)


def quantize_network_with_accuracy_control(
    model: AnomalibModule,
    fp32: ov.Model,
    head: set[str],
    calibration: Iterable[Any],
    validation: Iterable[Any],
    metric: Metric | None = None,
    max_drop: float = 0.01,
    model_type: ModelTypeChoice = "auto",
    subset_size: int = 300,
) -> ov.Model:
    """The package's ``INT8_ACQ``: :func:`quantize_network`, then NNCF's accuracy control.

    NNCF reverts the quantized layers that hurt ``metric`` most to floating point until its drop from
    the FP32 model is at most ``max_drop``.

    Args:
        model: The trained anomalib module (fitted post-processor).
        fp32: Its FP32 OpenVINO model (:func:`trace_to_openvino`).
        head: Head node names kept in floating point (:func:`head_node_names`).
        calibration: Normal training images of every category (anomalib batches).
        validation: Labelled batches (normal and anomalous: ``image``, ``gt_label``), iterable more
            than once, e.g. the datamodule's validation loader (keep it apart from the test images).
        metric: anomalib metric of the batches, higher is better (default :func:`image_auroc_metric`).
        max_drop: Largest accepted absolute drop of the metric (0.01: one point of AUROC).
        model_type: As in :func:`quantize_network`.
        subset_size: NNCF calibration subset size.

    Raises:
        ValueError: if the post-processor has not been fitted, or ``max_drop`` is outside [0, 1].
        TypeError: if ``metric`` is not a metric object (:func:`check_accuracy_control_arguments`).

    """
    import nncf

    check_post_processor_fitted(model)
    check_accuracy_control_arguments(metric, max_drop)
    return nncf.quantize_with_accuracy_control(
        fp32.clone(),
        nncf.Dataset(_Images(calibration)),
        nncf.Dataset(validation),
        labelled_score_fn(metric or image_auroc_metric()),
        max_drop=max_drop,
        subset_size=subset_size,
        **_network_recipe(model, fp32, head, model_type),
    )
