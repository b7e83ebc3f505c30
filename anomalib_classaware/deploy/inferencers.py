"""anomalib's ``TorchInferencer`` and ``OpenVINOInferencer``, also returning the predicted category.

Our exported models have a fifth output, ``pred_category`` (integer id). anomalib's inferencers
build ``ImageBatch(**outputs)``, whose dataclass has no such field, so they fail on it; these
drop-in subclasses return :class:`~anomalib_classaware.data.MultiClassImageBatch` (torch) and its
numpy twin (OpenVINO) with ``pred_category``, and know the category names (:attr:`category_names`:
from the exported module, or from the IR's ``rt_info``). Models without the output (anomalib's)
work as with anomalib's classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from anomalib.data.utils import read_image
from anomalib.deploy import OpenVINOInferencer as AnomalibOpenVINOInferencer
from anomalib.deploy import TorchInferencer as AnomalibTorchInferencer
from PIL.Image import Image as PILImage
from torchvision.transforms.v2.functional import to_dtype, to_image

from anomalib_classaware.data.dataclasses import MultiClassImageBatch, NumpyMultiClassImageBatch

from .categories import model_category_names, read_category_names


class TorchInferencer(AnomalibTorchInferencer):
    """anomalib's ``TorchInferencer`` that keeps ``pred_category`` (see the module docstring)."""

    @property
    def category_names(self) -> list[str] | None:
        """Names of the ``pred_category`` ids (``None`` if the model predicts no category)."""
        return model_category_names(self.model)

    def predict(self, image: str | Path | torch.Tensor | np.ndarray | PILImage) -> MultiClassImageBatch:
        """Predict one image: anomalib's outputs plus ``pred_category``."""
        if isinstance(image, str | Path):
            image = read_image(image, as_tensor=True)
        elif isinstance(image, np.ndarray | PILImage):
            image = to_dtype(to_image(image), torch.float32, scale=True)
        image = self.pre_process(image)
        predictions = self.model(image)
        return MultiClassImageBatch(image=image, **predictions._asdict())


class OpenVINOInferencer(AnomalibOpenVINOInferencer):
    """anomalib's ``OpenVINOInferencer`` that keeps ``pred_category`` and runs the IR in the precision it records.

    On a CPU device without ``INFERENCE_PRECISION_HINT`` in ``config``, the IR's recorded precision is
    passed (:func:`~anomalib_classaware.deploy.inspection.inference_config`: ``f32`` for our FP32 and
    INT8 exports), since OpenVINO's CPU plugin ignores it and would run an f32 graph in bfloat16 on
    CPUs with BF16.
    """

    def __init__(self, path: str | Path, device: str = "AUTO", config: dict | None = None) -> None:
        from .inspection import inference_config

        config = dict(config or {})
        if device.upper().startswith("CPU") and "INFERENCE_PRECISION_HINT" not in config and str(path).endswith(".xml"):
            config.update(inference_config(path, device=device))
        super().__init__(path, device=device, config=config)
        import openvino as ov

        self._category_names = read_category_names(ov.Core().read_model(path))

    @property
    def category_names(self) -> list[str] | None:
        """Names of the ``pred_category`` ids, read from the IR (``None`` if it records none)."""
        return self._category_names

    def predict(self, image: str | Path | np.ndarray | PILImage | torch.Tensor) -> NumpyMultiClassImageBatch:
        """Predict one image: anomalib's outputs plus ``pred_category``."""
        if isinstance(image, str | Path):
            image = read_image(image, as_tensor=False)
        elif isinstance(image, PILImage):
            image = np.array(image) / 255.0
        elif isinstance(image, torch.Tensor):
            image = image.cpu().numpy()
        image = self.pre_process(image)
        predictions = self.model({self.input_blob.any_name: image})
        return NumpyMultiClassImageBatch(image=image, **self.post_process(predictions))
