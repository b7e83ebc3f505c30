"""Deployment helpers: OpenVINO export in several precisions and inspection-line building blocks.

Export the usual way with anomalib (``anomalib export`` / ``Engine.export``); these helpers add what it
lacks: one ONNX trace for several precisions, NNCF's transformer preset for attention models
(:func:`export_openvino_variants`, :func:`quantize_openvino`), and the pieces of
``examples/deploy_openvino.py`` (:func:`iter_image_paths`, :class:`OpenVINODetector`, :func:`overlay`), and
anomalib's inferencers that also return the predicted category (:class:`TorchInferencer`,
:class:`OpenVINOInferencer`), and the inference precision an IR records (:func:`set_inference_precision`,
:func:`inference_config`).
Importing this package imports neither torch nor NNCF; OpenVINO loads when a detector is built.
"""

import importlib

from .categories import read_category_names
from .inspection import (
    IMAGE_EXTENSIONS,
    PRECISIONS,
    Detection,
    ImageReadError,
    OpenVINODetector,
    cpu_capabilities,
    cpu_supports_bf16,
    heat_map,
    inference_config,
    iter_image_paths,
    overlay,
    read_rgb,
    recorded_precision,
    resolve_precision,
    set_inference_precision,
)

_INFERENCER_NAMES = frozenset({"OpenVINOInferencer", "TorchInferencer"})


def __getattr__(name: str) -> object:
    """The public names not imported above load on first use: they import torch, the inspection helpers do not.

    They are the inferencers and the export helpers (``export`` and the modules it re-exports).
    """
    if name in __all__:
        module = importlib.import_module(".inferencers" if name in _INFERENCER_NAMES else ".export", __name__)
        return getattr(module, name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


__all__ = [
    "IMAGE_EXTENSIONS",
    "PRECISIONS",
    "VARIANTS",
    "VARIANT_PRECISIONS",
    "Detection",
    "ImageReadError",
    "OpenVINODetector",
    "OpenVINOInferencer",
    "TorchInferencer",
    "cpu_capabilities",
    "cpu_supports_bf16",
    "export_openvino_variants",
    "has_attention",
    "head_node_names",
    "heat_map",
    "ignored_head_scope",
    "image_auroc_metric",
    "inference_config",
    "iter_image_paths",
    "labelled_score_fn",
    "nncf_model_type",
    "overlay",
    "quantize_network",
    "quantize_network_with_accuracy_control",
    "quantize_openvino",
    "read_category_names",
    "read_rgb",
    "recorded_precision",
    "resolve_precision",
    "set_inference_precision",
]
