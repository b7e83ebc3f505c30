"""``NetworkInt8ExportMixin``: our models' ``to_openvino``, delegated to the deploy layer through a hook.

The recipe (``INT8_PTQ``/``INT8_ACQ`` that quantize the network and keep the anomaly head in floating
point, ``f32`` inference precision and category names in every IR) lives in
:func:`anomalib_classaware.deploy.lightning_export.export_to_openvino`. This layer does not import the
deploy layer: :data:`OPENVINO_EXPORTER` names the function, which is resolved when an export starts.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

#: ``module:function`` that exports a model to OpenVINO; called as ``f(model, anomalib_to_openvino, *args)``.
OPENVINO_EXPORTER = "anomalib_classaware.deploy.lightning_export:export_to_openvino"


class NetworkInt8ExportMixin:
    """``to_openvino`` with the package's ``INT8_PTQ`` and ``INT8_ACQ`` (put before ``AnomalibModule`` in the bases)."""

    def to_openvino(self, export_root: Path | str, *args: Any, **kwargs: Any) -> Path:
        """Export to OpenVINO IR; ``INT8_PTQ`` and ``INT8_ACQ`` quantize the network only.

        The arguments are anomalib's ``to_openvino``'s (``model_file_name``, ``input_size``, ``compression_type``,
        ``datamodule``, ``metric``, ``task``, ``max_drop``, ``ov_kwargs``, ``onnx_kwargs``); see
        :func:`anomalib_classaware.deploy.lightning_export.export_to_openvino`.
        """
        module, _, name = OPENVINO_EXPORTER.partition(":")
        exporter = getattr(importlib.import_module(module), name)
        return exporter(self, super().to_openvino, export_root, *args, **kwargs)  # type: ignore[misc]
