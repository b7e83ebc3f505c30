"""Datasets whose items carry ``category`` and ``category_id``.

Images and masks are read by :mod:`anomalib_classaware.data.images` (documented conversions of
grayscale, alpha and 16-bit images to 8-bit RGB; errors that name the file) instead of anomalib's
``read_image``, which clips 16-bit images at 255.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from tempfile import mkdtemp
from unittest import mock

import pandas as pd
import torch
from anomalib import TaskType
from anomalib.data.datasets.base.image import AnomalibDataset
from anomalib.data.utils import LabelName
from anomalib.data.utils import synthetic as anomalib_synthetic
from anomalib.data.utils.synthetic import ROOT as SYNTHETIC_ROOT
from anomalib.data.utils.synthetic import SyntheticAnomalyDataset, make_synthetic_dataset
from torchvision.transforms.v2 import Transform
from torchvision.tv_tensors import Mask

from anomalib_classaware.data.dataclasses import MultiClassImageBatch, MultiClassImageItem
from anomalib_classaware.data.images import mask_size_message, read_binary_mask, read_rgb_image


class _CategoryItemMixin:
    """Reads one sample as a :class:`MultiClassImageItem` (anomalib's item logic with our image reader)."""

    samples: pd.DataFrame
    augmentations: Transform | None
    task: TaskType

    def __getitem__(self, index: int) -> MultiClassImageItem:
        row = self.samples.iloc[index]
        image_path, mask_path, label_index = row.image_path, row.mask_path, row.label_index
        image = read_rgb_image(image_path, as_tensor=True)
        gt_mask = None
        if self.task == TaskType.SEGMENTATION:
            if label_index == LabelName.NORMAL:
                gt_mask = Mask(torch.zeros(image.shape[-2:])).to(torch.uint8)
            elif label_index == LabelName.ABNORMAL:
                gt_mask = read_binary_mask(mask_path, as_tensor=True)
                if gt_mask.shape[-2:] != image.shape[-2:]:
                    raise ValueError(mask_size_message(image_path, mask_path, image.shape[-2:], gt_mask.shape[-2:]))
        if self.augmentations:
            if self.task == TaskType.CLASSIFICATION:
                image = self.augmentations(image)
            elif self.task == TaskType.SEGMENTATION:
                mask = gt_mask if gt_mask is not None else Mask(torch.zeros(image.shape[-2:])).to(torch.uint8)
                image, augmented_mask = self.augmentations(image, mask)
                if gt_mask is not None:
                    gt_mask = augmented_mask
        return MultiClassImageItem(
            image=image,
            gt_mask=gt_mask,
            gt_label=None if label_index == LabelName.UNKNOWN else torch.tensor(label_index),
            image_path=image_path,
            mask_path=mask_path,
            category=str(row.category),
            category_id=torch.tensor(int(row.category_id)),
        )

    @property
    def collate_fn(self) -> Callable:
        return MultiClassImageBatch.collate


class MultiClassDataset(_CategoryItemMixin, AnomalibDataset):
    """An anomalib dataset over a samples table with ``category``/``category_id`` columns."""

    def __init__(self, samples: pd.DataFrame, name: str, augmentations: Transform | None = None) -> None:
        super().__init__(augmentations=augmentations)
        self._name = name
        self.samples = samples

    @property
    def name(self) -> str:
        """Dataset name: the dataset root folder's name."""
        return self._name

    @property
    def categories(self) -> list[str]:
        """Categories present in this dataset, sorted."""
        return sorted(self.samples.category.unique())


class MultiClassSyntheticDataset(_CategoryItemMixin, SyntheticAnomalyDataset):
    """anomalib's synthetic (Perlin) anomalies, generated per category so every item keeps its category.

    anomalib's ``SyntheticAnomalyDataset`` drops all columns but five, which would lose the category of
    every synthetic validation/test image; here each category is synthesised into its own sub-folder.
    """

    def __init__(self, augmentations: Transform | None, source_samples: pd.DataFrame, dataset_name: str) -> None:
        AnomalibDataset.__init__(self, augmentations=augmentations)
        self.source_samples = source_samples
        parent = SYNTHETIC_ROOT / dataset_name
        parent.mkdir(parents=True, exist_ok=True)
        self.root = Path(mkdtemp(dir=parent))
        self.im_dir = self.root / "abnormal"
        self.mask_dir = self.root / "ground_truth"
        self._cleanup = True
        frames = []
        for (category, category_id), group in source_samples.groupby(["category", "category_id"], sort=True):
            image_dir, mask_dir = self.im_dir / str(category), self.mask_dir / str(category)
            image_dir.mkdir(parents=True)
            mask_dir.mkdir(parents=True)
            # anomalib reads the source images with its own ``read_image``; use ours (16-bit images).
            with mock.patch.object(anomalib_synthetic, "read_image", read_rgb_image):
                frame = make_synthetic_dataset(group.reset_index(drop=True), image_dir, mask_dir, 0.5)
            frames.append(frame.assign(category=category, category_id=category_id))
        self.samples = pd.concat(frames, ignore_index=True)
        self.samples.attrs["task"] = "segmentation"

    @property
    def categories(self) -> list[str]:
        """Categories present in this dataset, sorted."""
        return sorted(self.samples.category.unique())
