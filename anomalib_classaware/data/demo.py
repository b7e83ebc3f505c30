"""``MultiClassDemo``: the embedded multi-class dataset, generated on first use with no download."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anomalib_classaware.data.demo_builder import DEMO_CATEGORIES, build_demo_dataset
from anomalib_classaware.data.multiclass import MultiClassDataModule

CACHE_ENV_VAR = "ANOMALIB_CLASSAWARE_CACHE"


def default_cache_dir() -> Path:
    """``$ANOMALIB_CLASSAWARE_CACHE``, else ``$XDG_CACHE_HOME/anomalib_classaware``, else ``~/.cache/...``."""
    if os.environ.get(CACHE_ENV_VAR):
        return Path(os.environ[CACHE_ENV_VAR])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "anomalib_classaware"


class MultiClassDemo(MultiClassDataModule):
    """Embedded demo data: crops of scikit-image's bundled photographs with synthetic defects and exact masks.

    The dataset (MVTec layout, textures and objects, several defect types per category) is generated
    deterministically from ``generation_seed`` the first time it is needed, then read from the cache.

    Args:
        root: Where to generate it. ``None``: a cache folder whose path encodes the generation
            parameters, ``<cache>/demo/<size>px-seed<seed>-<train>-<good>-<defective>/MultiClassDemo``
            (cache: ``$ANOMALIB_CLASSAWARE_CACHE`` or ``~/.cache/anomalib_classaware``).
        categories: Subset of the demo categories (``None``: all).
        image_size: Side of the square images written to disk.
        num_train: Normal training images per category.
        num_test_good: Normal test images per category.
        num_test_defective: Defective test images per category.
        generation_seed: Seed of the generator (independent of ``seed``, which drives anomalib's splits).
        skip_corrupt: Leave out unreadable files with one warning instead of failing (see
            :class:`~anomalib_classaware.data.multiclass.MultiClassDataModule`).
        check_images: Check every file at setup (about 0.3 s for the default demo data).
        training_guards: Stop on a NaN/inf loss; resume with the saved random states.
        balanced_batches: Class-balanced training batches (``None``: when the model asks for them).
        categories_per_batch: Categories per balanced batch (``None``: derived from ``train_batch_size``).
        images_per_category: Images per category in a balanced batch (``None``: derived).
        train_batch_size: Training batch size.
        eval_batch_size: Evaluation batch size.
        num_workers: Dataloader workers.
        **kwargs: The other arguments of :class:`~anomalib_classaware.data.multiclass.MultiClassDataModule`
            (``skip_corrupt`` to ``images_per_category`` above, splits, augmentations, ``seed``).

    Example:
        >>> from anomalib.engine import Engine
        >>> from anomalib.models import ReverseDistillation
        >>> Engine(max_epochs=1).train(ReverseDistillation(), datamodule=MultiClassDemo())

    """

    valid_categories = DEMO_CATEGORIES

    def __init__(
        self,
        root: Path | str | None = None,
        categories: Sequence[str] | None = None,
        image_size: int = 256,
        num_train: int = 60,
        num_test_good: int = 20,
        num_test_defective: int = 20,
        generation_seed: int = 0,
        train_batch_size: int = 16,
        eval_batch_size: int = 16,
        num_workers: int = 2,
        **kwargs: Any,
    ) -> None:
        if root is None:
            variant = f"{image_size}px-seed{generation_seed}-{num_train}-{num_test_good}-{num_test_defective}"
            root = default_cache_dir() / "demo" / variant / "MultiClassDemo"
        super().__init__(
            root=root,
            categories=categories,
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            **kwargs,
        )
        self.image_size = image_size
        self.num_train = num_train
        self.num_test_good = num_test_good
        self.num_test_defective = num_test_defective
        self.generation_seed = generation_seed

    def prepare_data(self) -> None:
        """Generate the dataset into :attr:`root` unless an identical one is already there."""
        build_demo_dataset(
            self.root,
            image_size=self.image_size,
            num_train=self.num_train,
            num_test_good=self.num_test_good,
            num_test_defective=self.num_test_defective,
            seed=self.generation_seed,
        )

    def _setup(self, _stage: str | None = None) -> None:
        self.prepare_data()  # cheap when cached; makes `setup()` alone work in scripts and notebooks
        super()._setup(_stage)
