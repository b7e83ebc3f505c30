"""``INT8_ACQ``: the network-only INT8 recipe with NNCF's accuracy control on labelled validation images."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .int8_head import ModelTypeChoice, network_recipe
from .quantization import CalibrationImages
from .tracing import check_post_processor_fitted

if TYPE_CHECKING:
    import openvino as ov
    from anomalib.models.components import AnomalibModule
    from torchmetrics import Metric


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
        nncf.Dataset(CalibrationImages(calibration)),
        nncf.Dataset(validation),
        labelled_score_fn(metric or image_auroc_metric()),
        max_drop=max_drop,
        subset_size=subset_size,
        **network_recipe(model, fp32, head, model_type),
    )
