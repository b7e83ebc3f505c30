"""Datasets whose items carry ``category`` and ``category_id``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from tempfile import mkdtemp

import pandas as pd
import torch
from anomalib.data.datasets.base.image import AnomalibDataset
from anomalib.data.utils.synthetic import ROOT as SYNTHETIC_ROOT
from anomalib.data.utils.synthetic import SyntheticAnomalyDataset, make_synthetic_dataset
from torchvision.transforms.v2 import Transform

from anomalib_classaware.data.dataclasses import MultiClassImageBatch, MultiClassImageItem


class _CategoryItemMixin:
    """Turns the base ``ImageItem`` into a :class:`MultiClassImageItem` using the samples' category columns."""

    samples: pd.DataFrame

    def __getitem__(self, index: int) -> MultiClassImageItem:
        item = super().__getitem__(index)  # type: ignore[misc]
        row = self.samples.iloc[index]
        return MultiClassImageItem(
            image=item.image,
            gt_mask=item.gt_mask,
            gt_label=item.gt_label,
            image_path=item.image_path,
            mask_path=item.mask_path,
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
            frame = make_synthetic_dataset(group.reset_index(drop=True), image_dir, mask_dir, 0.5)
            frames.append(frame.assign(category=category, category_id=category_id))
        self.samples = pd.concat(frames, ignore_index=True)
        self.samples.attrs["task"] = "segmentation"

    @property
    def categories(self) -> list[str]:
        """Categories present in this dataset, sorted."""
        return sorted(self.samples.category.unique())
