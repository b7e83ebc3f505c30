"""One ONNX trace of an anomalib model, converted to OpenVINO (with the head's node names when asked)."""

from __future__ import annotations

from tempfile import TemporaryDirectory
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .int8_head import head_node_names

if TYPE_CHECKING:
    import openvino as ov
    from anomalib.models.components import AnomalibModule


DEFAULT_ONNX_KWARGS: dict[str, Any] = {"opset_version": 18}
"""Opset 18 avoids the dynamo exporter's noisy down-conversion attempt to anomalib's default opset 14."""


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
