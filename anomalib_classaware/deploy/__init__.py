"""Deployment helpers: OpenVINO export in several precisions and inspection-line building blocks.

Export the usual way with anomalib (``anomalib export`` / ``Engine.export``); these helpers add what it
lacks: one ONNX trace for several precisions, NNCF's transformer preset for attention models
(:func:`export_openvino_variants`, :func:`quantize_openvino`), and the pieces of
``examples/deploy_openvino.py`` (:func:`iter_image_paths`, :class:`OpenVINODetector`, :func:`overlay`), and
anomalib's inferencers that also return the predicted category (:class:`TorchInferencer`,
:class:`OpenVINOInferencer`).
Importing this package imports neither torch nor NNCF; OpenVINO loads when a detector is built.
"""

from .categories import read_category_names
from .inspection import (
    IMAGE_EXTENSIONS,
    Detection,
    ImageReadError,
    OpenVINODetector,
    heat_map,
    iter_image_paths,
    overlay,
    read_rgb,
)

_INFERENCER_NAMES = frozenset({"OpenVINOInferencer", "TorchInferencer"})
_EXPORT_NAMES = frozenset(
    {
        "VARIANTS",
        "export_openvino_variants",
        "has_attention",
        "head_node_names",
        "ignored_head_scope",
        "image_auroc_metric",
        "labelled_score_fn",
        "nncf_model_type",
        "quantize_network",
        "quantize_network_with_accuracy_control",
        "quantize_openvino",
    }
)


def __getattr__(name: str) -> object:
    """Export helpers load on first use: they import torch, the inspection helpers do not."""
    if name in _EXPORT_NAMES:
        from . import export

        return getattr(export, name)
    if name in _INFERENCER_NAMES:
        from . import inferencers

        return getattr(inferencers, name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


__all__ = [
    "IMAGE_EXTENSIONS",
    "VARIANTS",
    "Detection",
    "ImageReadError",
    "OpenVINODetector",
    "OpenVINOInferencer",
    "TorchInferencer",
    "export_openvino_variants",
    "has_attention",
    "head_node_names",
    "heat_map",
    "ignored_head_scope",
    "image_auroc_metric",
    "iter_image_paths",
    "labelled_score_fn",
    "nncf_model_type",
    "overlay",
    "quantize_network",
    "quantize_network_with_accuracy_control",
    "quantize_openvino",
    "read_category_names",
    "read_rgb",
]
