"""``INT8_PTQ`` export that quantizes the network and keeps the anomaly head in floating point.

anomalib's ``to_openvino(compression_type=INT8_PTQ)`` runs ``nncf.quantize`` on the whole graph,
calibrated on the validation images: the feature distances, anomaly-map interpolation and blur, the
score reduction and the normalisation then get 8-bit inputs, and for every model of this package
the score collapses to a constant (image AUROC 50 %). :func:`export_to_openvino` replaces that
step for our models (their ``to_openvino``, from
:class:`~anomalib_classaware.models.components.lightning.export_hook.NetworkInt8ExportMixin`, calls it),
so ``anomalib export --compression_type INT8_PTQ`` and
``Engine.export(..., compression_type=CompressionType.INT8_PTQ)`` give the package's recipe
(:func:`anomalib_classaware.deploy.export.quantize_network`): convolutions, linear layers and
attention in INT8, NNCF's transformer preset for models with attention, calibrated on the normal
training images of every category. ``INT8_ACQ`` starts from that recipe and lets NNCF's accuracy
control revert layers to floating point until the metric on the datamodule's *validation* images
drops by at most ``max_drop`` (anomalib's starts from the collapsed whole-graph quantization and
always measures on the test images). The metric is the one given (``Engine.export`` and the CLI
default to anomalib's image F1 of the labels; a direct ``to_openvino`` call without one uses image
AUROC). With ``val_split_mode="same_as_test"`` (the default of MVTec-style datamodules) the
validation images *are* the test images: a warning says so. FP16 and INT8 (weights) are anomalib's.

Every OpenVINO export of our models records ``f32`` as its inference precision (``rt_info``
``runtime_options``/``INFERENCE_PRECISION_HINT``; FP16 compresses the weights only): OpenVINO's CPU
plugin would otherwise run the f32 graph in bfloat16 on CPUs with BF16, and the scores would leave
the checkpoint's by ~1e-2. See :func:`anomalib_classaware.deploy.inspection.set_inference_precision`.
Every IR also records the names of the ``pred_category`` ids in its ``rt_info``
(:mod:`anomalib_classaware.deploy.categories`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import TYPE_CHECKING, Any

from anomalib.data.utils import ValSplitMode
from anomalib.deploy.export import CompressionType, ExportType
from torch.utils.data import DataLoader

from .categories import model_category_names, set_category_names

if TYPE_CHECKING:
    from collections.abc import Callable

    from anomalib.data import AnomalibDataModule
    from anomalib.models.components import AnomalibModule
    from torchmetrics import Metric

logger = logging.getLogger(__name__)


def normal_training_images(datamodule: AnomalibDataModule, purpose: str = "INT8 quantization") -> DataLoader:
    """The datamodule's training images (normal, every category) in order, for INT8 calibration.

    Raises:
        ValueError: if the datamodule has no training images.

    """
    datamodule.setup("fit")
    train_data = getattr(datamodule, "train_data", None)
    if train_data is None or len(train_data) == 0:
        msg = (
            f"{purpose} calibrates on the normal training images, but {type(datamodule).__name__} has none: "
            "give the datamodule the model was trained with."
        )
        raise ValueError(msg)
    batch_size = int(getattr(datamodule, "eval_batch_size", 8) or 8)
    return DataLoader(train_data, batch_size=batch_size, shuffle=False, collate_fn=train_data.collate_fn)


def labelled_validation_images(datamodule: AnomalibDataModule) -> DataLoader:
    """The datamodule's validation loader, checked to hold normal and anomalous images (for ``INT8_ACQ``).

    Raises:
        ValueError: if the validation split is empty or has a single label (its AUROC is undefined).

    """
    datamodule.setup("fit")
    if getattr(datamodule, "val_split_mode", None) in {ValSplitMode.SAME_AS_TEST, ValSplitMode.SAME_AS_TEST.value}:
        logger.warning(
            "INT8_ACQ: %s has val_split_mode='same_as_test', so the accuracy is controlled on the test images; "
            "use val_split_mode='from_test' or 'synthetic' to keep the test images unseen.",
            type(datamodule).__name__,
        )
    loader = datamodule.val_dataloader()
    samples = getattr(loader.dataset, "samples", None)
    if samples is not None and "label_index" in samples:
        labels = {int(label) for label in samples["label_index"]}
    else:
        labels = {int(label) for batch in loader for label in batch.gt_label.reshape(-1).tolist()}
    if labels != {0, 1}:
        msg = (
            f"INT8_ACQ measures the accuracy on the validation images of {type(datamodule).__name__}, which "
            f"hold labels {sorted(labels) or 'none'}: it needs normal and anomalous images (e.g. "
            "`val_split_mode: from_test` or `synthetic`), or use INT8_PTQ."
        )
        raise ValueError(msg)
    return loader


def export_to_openvino(
    model: AnomalibModule,
    anomalib_to_openvino: Callable[..., Path],
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
    """Export ``model`` to OpenVINO IR; ``INT8_PTQ`` and ``INT8_ACQ`` quantize the network only (module docstring).

    ``anomalib_to_openvino`` is anomalib's ``to_openvino`` of the model (used for the other compressions).
    The IR records ``f32`` as its inference precision, whatever the compression.

    Raises:
        ValueError: for ``INT8_PTQ``/``INT8_ACQ`` without a datamodule, with an unfitted post-processor,
            or ``INT8_ACQ`` without normal and anomalous validation images.

    """
    if compression_type not in {CompressionType.INT8_PTQ, CompressionType.INT8_ACQ}:
        import openvino as ov
        from anomalib.models.components.base.export_mixin.utils import create_export_root

        from .inspection import set_inference_precision

        with TemporaryDirectory() as folder:  # anomalib's export, then the precision added
            written = anomalib_to_openvino(
                folder,
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
            ir = set_inference_precision(ov.Core().read_model(written), "f32")
            set_category_names(ir, model_category_names(model))
            path = create_export_root(export_root, ExportType.OPENVINO) / Path(written).name
            ov.save_model(ir, path, compress_to_fp16=False)  # FP16 weights stay FP16
        return path
    name = CompressionType(compression_type).name
    if compression_type == CompressionType.INT8_ACQ:
        from .export import check_accuracy_control_arguments

        check_accuracy_control_arguments(metric, max_drop)  # before the slow trace
    if datamodule is None:
        msg = (
            f"{name} calibrates on the normal training images of a datamodule: pass one "
            "(`anomalib export ... --data <datamodule>` or `Engine.export(..., datamodule=...)`)."
        )
        raise ValueError(msg)
    import openvino as ov
    from anomalib.models.components.base.export_mixin.utils import create_export_root

    from .export import (
        nncf_model_type,
        quantize_network,
        quantize_network_with_accuracy_control,
        trace_to_openvino,
    )
    from .inspection import set_inference_precision

    calibration = normal_training_images(datamodule, name)
    validation = labelled_validation_images(datamodule) if compression_type == CompressionType.INT8_ACQ else None
    fp32, head = trace_to_openvino(model, input_size, onnx_kwargs, ov_kwargs)
    if validation is None:
        quantized = quantize_network(model, fp32, head, calibration)
    else:
        quantized = quantize_network_with_accuracy_control(
            model,
            fp32,
            head,
            calibration,
            validation,
            metric,
            max_drop,
        )
    model_type = nncf_model_type(model.model)
    logger.info(
        "%s of %s: network in INT8 (%s preset), %d head ops in floating point, calibrated on %d normal "
        "training images%s.",
        name,
        type(model).__name__,
        "transformer" if model_type is not None else "default",
        len(head),
        len(calibration.dataset),
        "" if validation is None else f", accuracy controlled on {len(validation.dataset)} validation images",
    )
    set_category_names(quantized, model_category_names(model))
    path = create_export_root(export_root, ExportType.OPENVINO) / f"{model_file_name}.xml"
    ov.save_model(set_inference_precision(quantized, "f32"), path, compress_to_fp16=False)
    return path
