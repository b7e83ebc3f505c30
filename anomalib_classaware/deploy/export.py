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

The pieces live by job (and are re-exported here): :mod:`.int8_head` (which nodes are the head, NNCF model
type), :mod:`.tracing` (one ONNX trace to OpenVINO), :mod:`.quantization` (``INT8_PTQ``) and
:mod:`.accuracy_control` (``INT8_ACQ``); this module writes the variants.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .accuracy_control import (
    check_accuracy_control_arguments,
    image_auroc_metric,
    labelled_score_fn,
    quantize_network_with_accuracy_control,
)
from .categories import model_category_names, set_category_names
from .int8_head import (
    ModelTypeChoice,
    has_attention,
    head_node_names,
    ignored_head_scope,
    network_recipe,
    nncf_model_type,
)
from .quantization import CalibrationImages, calibration_images, quantize_network, quantize_openvino
from .tracing import DEFAULT_ONNX_KWARGS, check_post_processor_fitted, trace_to_openvino

if TYPE_CHECKING:
    import openvino as ov
    from anomalib.models.components import AnomalibModule

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

__all__ = [
    "DEFAULT_ONNX_KWARGS",
    "VARIANTS",
    "VARIANT_PRECISIONS",
    "CalibrationImages",
    "ModelTypeChoice",
    "Variant",
    "calibration_images",
    "check_accuracy_control_arguments",
    "check_post_processor_fitted",
    "export_openvino_variants",
    "has_attention",
    "head_node_names",
    "ignored_head_scope",
    "image_auroc_metric",
    "labelled_score_fn",
    "network_recipe",
    "nncf_model_type",
    "quantize_network",
    "quantize_network_with_accuracy_control",
    "quantize_openvino",
    "trace_to_openvino",
]

logger = logging.getLogger(__name__)


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
