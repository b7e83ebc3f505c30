"""Items and batches that carry the product category through anomalib's pipeline.

anomalib's ``ImageItem``/``ImageBatch`` have no category field, and ``batch.update`` silently
drops unknown keys. These subclasses add ``category`` (name) and ``category_id`` (stable integer
index, see :class:`~anomalib_classaware.data.multiclass.CategoryIndex`), and have numpy twins so
``to_numpy()`` keeps them. Iterating a batch yields :class:`MultiClassImageItem` (the visualizer
and evaluator see the category of every image).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from anomalib.data.dataclasses.numpy.image import NumpyImageBatch, NumpyImageItem
from anomalib.data.dataclasses.torch.image import ImageBatch, ImageItem


@dataclass
class _CategoryFields:
    category: str | list[str] | None = None
    category_id: torch.Tensor | np.ndarray | None = None


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
