"""``INT8_PTQ`` export that quantizes the network and keeps the anomaly head in floating point.

anomalib's ``to_openvino(compression_type=INT8_PTQ)`` runs ``nncf.quantize`` on the whole graph,
calibrated on the validation images: the feature distances, anomaly-map interpolation and blur, the
score reduction and the normalisation then get 8-bit inputs, and for every model of this package
the score collapses to a constant (image AUROC 50 %). :class:`NetworkInt8ExportMixin` replaces that
step for our models, so ``anomalib export --compression_type INT8_PTQ`` and
``Engine.export(..., compression_type=CompressionType.INT8_PTQ)`` give the package's recipe
(:func:`anomalib_classaware.deploy.export.quantize_network`): convolutions, linear layers and
attention in INT8, NNCF's transformer preset for models with attention, calibrated on the normal
training images of every category. The other compression types are anomalib's.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomalib.deploy.export import CompressionType, ExportType
from torch.utils.data import DataLoader

if TYPE_CHECKING:
    from anomalib.data import AnomalibDataModule
    from torchmetrics import Metric

logger = logging.getLogger(__name__)


def normal_training_images(datamodule: AnomalibDataModule) -> DataLoader:
    """The datamodule's training images (normal, every category) in order, for INT8 calibration.

    Raises:
        ValueError: if the datamodule has no training images.

    """
    datamodule.setup("fit")
    train_data = getattr(datamodule, "train_data", None)
    if train_data is None or len(train_data) == 0:
        msg = (
            f"INT8_PTQ calibrates on the normal training images, but {type(datamodule).__name__} has none: "
            "give the datamodule the model was trained with."
        )
        raise ValueError(msg)
    batch_size = int(getattr(datamodule, "eval_batch_size", 8) or 8)
    return DataLoader(train_data, batch_size=batch_size, shuffle=False, collate_fn=train_data.collate_fn)


class NetworkInt8ExportMixin:
    """``to_openvino`` with the package's ``INT8_PTQ`` (put before ``AnomalibModule`` in the bases)."""

    def to_openvino(
        self,
        export_root: Path | str,
        model_file_name: str = "model",
        input_size: tuple[int, int] | None = None,
        compression_type: CompressionType | None = None,
        datamodule: AnomalibDataModule | None = None,
        metric: Metric | None = None,
        task: Any = None,
        max_drop: float = 0.01,
        ov_kwargs: dict[str, Any] | None = None,
        onnx_kwargs: dict[str, Any] | None = None,
    ) -> Path:
        """Export to OpenVINO IR; ``INT8_PTQ`` quantizes the network only (module docstring).

        Raises:
            ValueError: for ``INT8_PTQ`` without a datamodule, or with an unfitted post-processor.

        """
        if compression_type != CompressionType.INT8_PTQ:
            return super().to_openvino(  # type: ignore[misc]
                export_root,
                model_file_name,
                input_size,
                compression_type,
                datamodule,
                metric,
                task,
                max_drop,
                ov_kwargs,
                onnx_kwargs,
            )
        if datamodule is None:
            msg = (
                "INT8_PTQ calibrates on the normal training images of a datamodule: pass one "
                "(`anomalib export ... --data <datamodule>` or `Engine.export(..., datamodule=...)`)."
            )
            raise ValueError(msg)
        import openvino as ov
        from anomalib.models.components.base.export_mixin.utils import create_export_root

        from anomalib_classaware.deploy.export import nncf_model_type, quantize_network, trace_to_openvino

        calibration = normal_training_images(datamodule)
        fp32, head = trace_to_openvino(self, input_size, onnx_kwargs, ov_kwargs)  # type: ignore[arg-type]
        quantized = quantize_network(self, fp32, head, calibration)  # type: ignore[arg-type]
        model_type = nncf_model_type(self.model)  # type: ignore[attr-defined]
        logger.info(
            "INT8_PTQ of %s: network in INT8 (%s preset), %d head ops in floating point, calibrated on %d normal "
            "training images.",
            type(self).__name__,
            "transformer" if model_type is not None else "default",
            len(head),
            len(calibration.dataset),
        )
        path = create_export_root(export_root, ExportType.OPENVINO) / f"{model_file_name}.xml"
        ov.save_model(quantized, path, compress_to_fp16=False)
        return path
