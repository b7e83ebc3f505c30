"""``INT8_PTQ`` with NNCF: calibration images, the chosen model type, and the package's network-only recipe."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .int8_head import ModelTypeChoice, network_recipe
from .tracing import check_post_processor_fitted

if TYPE_CHECKING:
    import nncf
    import openvino as ov
    from anomalib.models.components import AnomalibModule


def calibration_images(batches: Iterable[Any]) -> Iterable[np.ndarray]:
    """The ``image`` of each batch (an anomalib ``Batch``, a dict or a tensor) as a float32 NCHW array."""
    for batch in batches:
        image = batch if isinstance(batch, torch.Tensor) else batch["image"]
        yield image.detach().cpu().numpy().astype(np.float32, copy=False)


class CalibrationImages:
    """Re-iterable view of a dataloader's images (NNCF iterates its dataset more than once)."""

    def __init__(self, batches: Iterable[Any]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(calibration_images(self.batches))


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

    dataset = nncf.Dataset(CalibrationImages(batches))
    return nncf.quantize(model.clone(), dataset, model_type=model_type, subset_size=subset_size, **nncf_kwargs)


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
        fp32, calibration, subset_size=subset_size, **network_recipe(model, fp32, head, model_type)
    )
