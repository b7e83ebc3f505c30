"""Items and batches that carry the product category through anomalib's pipeline.

anomalib's ``ImageItem``/``ImageBatch`` have no category field, and ``batch.update`` silently
drops unknown keys. These subclasses add ``category`` (name) and ``category_id`` (stable integer
index, see :class:`~anomalib_classaware.data.multiclass.CategoryIndex`), and have numpy twins so
``to_numpy()`` keeps them; ``pred_category`` is the category the model predicts from the image.
Iterating a batch yields :class:`MultiClassImageItem` (the visualizer
and evaluator see the category of every image).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import numpy as np
import torch
from anomalib.data.dataclasses.numpy.image import NumpyImageBatch, NumpyImageItem
from anomalib.data.dataclasses.torch.image import ImageBatch, ImageItem


class ClassAwareInferenceBatch(NamedTuple):
    """anomalib's ``InferenceBatch`` plus ``pred_category``: the category predicted from the image alone.

    ``pred_category`` is a ``(B,)`` integer id into the model's ``category_names`` (saved in the
    checkpoint and in the export's ``rt_info``). It is an output of the torch model, of the
    post-processor and so of the exported graph.
    """

    pred_score: torch.Tensor | None = None
    pred_label: torch.Tensor | None = None
    anomaly_map: torch.Tensor | None = None
    pred_mask: torch.Tensor | None = None
    pred_category: torch.Tensor | None = None


@dataclass
class _CategoryFields:
    category: str | list[str] | None = None
    category_id: torch.Tensor | np.ndarray | None = None
    pred_category: torch.Tensor | np.ndarray | None = None


@dataclass
class NumpyMultiClassImageItem(_CategoryFields, NumpyImageItem):
    """Numpy image item with ``category`` (str) and ``category_id`` (0-d array)."""


@dataclass
class NumpyMultiClassImageBatch(_CategoryFields, NumpyImageBatch):
    """Numpy image batch with ``category`` (list of str) and ``category_id`` (``(B,)`` array)."""

    item_class: ClassVar[type[NumpyImageItem]] = NumpyMultiClassImageItem


@dataclass
class MultiClassImageItem(_CategoryFields, ImageItem):
    """Image item with ``category`` (str) and ``category_id`` (0-d long tensor)."""

    numpy_class: ClassVar[type[NumpyImageItem]] = NumpyMultiClassImageItem


@dataclass
class MultiClassImageBatch(_CategoryFields, ImageBatch):
    """Image batch with ``category`` (list of str) and ``category_id`` (``(B,)`` long tensor)."""

    item_class: ClassVar[type[ImageItem]] = MultiClassImageItem
    numpy_class: ClassVar[type[NumpyImageBatch]] = NumpyMultiClassImageBatch
