"""``MultiClassMVTecAD`` and ``MultiClassVisa``: all (or some) categories of the public benchmarks at once.

Download, extraction and VisA's train/test split are delegated to anomalib's own ``MVTecAD`` and
``Visa`` datamodules; only the parsing of several categories into one dataset is ours.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anomalib.data import MVTecAD, Visa
from anomalib.data.datasets.image.mvtecad import CATEGORIES as MVTEC_CATEGORIES
from anomalib.data.datasets.image.visa import CATEGORIES as VISA_CATEGORIES

from anomalib_classaware.data.multiclass import MultiClassDataModule


class MultiClassMVTecAD(MultiClassDataModule):
    """MVTec AD, several categories in one datamodule (``categories=None``: all 15).

    Example:
        >>> datamodule = MultiClassMVTecAD(root="./datasets/MVTecAD", categories=["bottle", "cable"])

    """

    valid_categories = MVTEC_CATEGORIES

    def __init__(
        self, root: Path | str = "./datasets/MVTecAD", categories: Sequence[str] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(root=root, categories=categories, **kwargs)

    def prepare_data(self) -> None:
        """Download MVTec AD through anomalib if a requested category is missing."""
        missing = [name for name in self.categories if not (self.root / name).is_dir()]
        if missing:
            MVTecAD(root=self.root, category=missing[0]).prepare_data()


class MultiClassVisa(MultiClassDataModule):
    """VisA, several categories in one datamodule (``categories=None``: all 12).

    Uses anomalib's ``visa_pytorch`` split (``<root>/visa_pytorch/<category>`` in MVTec layout).
    """

    valid_categories = VISA_CATEGORIES

    def __init__(
        self, root: Path | str = "./datasets/visa", categories: Sequence[str] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(root=root, categories=categories, **kwargs)

    @property
    def data_root(self) -> Path:
        """Anomalib's split of VisA, in MVTec layout."""
        return self.root / "visa_pytorch"

    def prepare_data(self) -> None:
        """Download VisA and apply anomalib's train/test split for each requested category if needed."""
        for name in self.categories:
            if not (self.data_root / name).is_dir():
                Visa(root=self.root, category=name).prepare_data()
