"""One datamodule for several categories: ``MultiClassFolder`` and its base class.

anomalib's datamodules hold one ``category`` each (a list fails to parse: anomalib #2925,
#2973). Here ``categories`` is a list; every item carries ``category``/``category_id``; the
``category_names`` list (ordered by id) is what models save with their hyperparameters.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from anomalib.data.datamodules.base.image import AnomalibDataModule
from anomalib.data.utils import TestSplitMode, ValSplitMode
from anomalib.data.utils.split import random_split, split_by_label
from anomalib.metrics import Evaluator
from anomalib.post_processing import PostProcessor
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import Transform

from anomalib_classaware.callbacks import FiniteLossGuard, RandomStateCheckpoint
from anomalib_classaware.data.dataset import MultiClassDataset, MultiClassSyntheticDataset
from anomalib_classaware.data.images import check_sample_files
from anomalib_classaware.data.sampler import MODEL_ATTRIBUTE, ClassBalancedBatchSampler, balanced_batch_shape
from anomalib_classaware.data.samples import (
    CategoryIndex,
    make_multiclass_samples,
    resolve_categories,
    select_split,
)
from anomalib_classaware.metrics import PerCategoryEvaluator

logger = logging.getLogger(__name__)

UNIFIED = "unified"


class MultiClassDataModule(AnomalibDataModule):
    """Base datamodule over ``<root>/<category>/`` folders in MVTec layout.

    ``per_category_metrics=True`` (default) gives the model a per-category evaluator and a
    per-category post-processor at setup, so any anomalib model reports ``<category>/<metric>`` and
    ``mean/<metric>`` with this data, computed on raw scores, with one threshold per category.
    ``training_guards=True`` (default) adds :func:`attach_training_guards`'s callbacks: training stops
    on a NaN/inf loss, and resuming restores the random states.

    Class-balanced batches (:mod:`anomalib_classaware.data.sampler`): ``balanced_batches=None``
    (default) gives them to models that ask (``ClassAwareRecon``, ``ReContrast(class_aware=True)``
    with dataset labels: their SupCon term needs same-category images in a batch), ``True`` to every
    model, ``False`` to none. Each batch then holds ``categories_per_batch`` categories x
    ``images_per_category`` images; given one, the other is ``train_batch_size`` divided by it; given
    neither, the split of ``train_batch_size`` with the fewest images per category (at least 2).

    Bad input: at setup every image and mask file is checked (:func:`check_sample_files`, about
    0.3 ms per 256 px PNG); an unreadable file is an error listing all of them, or with
    ``skip_corrupt=True`` its sample is left out with one warning listing them. Grayscale, alpha
    and 16-bit images are converted to 8-bit RGB as documented in
    :mod:`anomalib_classaware.data.images`. ``check_images=False`` skips the check (an unreadable
    file then fails when it is loaded, with an error naming it).

    Subclasses set :attr:`valid_categories` (``None``: every sub-folder of ``root``) and may
    override :meth:`prepare_data` (download or generation). ``category`` is ``"unified"`` (it
    names anomalib's results folder); ``name`` is the root folder's name, so anomalib's
    visualizer keeps ``<category>/test/<defect>/<file>`` and categories never overwrite each
    other's images.
    """

    valid_categories: Sequence[str] | None = None

    def __init__(
        self,
        root: Path | str,
        categories: Sequence[str] | None = None,
        train_batch_size: int = 32,
        eval_batch_size: int = 32,
        num_workers: int = 4,
        train_augmentations: Transform | None = None,
        val_augmentations: Transform | None = None,
        test_augmentations: Transform | None = None,
        augmentations: Transform | None = None,
        test_split_mode: TestSplitMode | str = TestSplitMode.FROM_DIR,
        test_split_ratio: float = 0.2,
        val_split_mode: ValSplitMode | str = ValSplitMode.SAME_AS_TEST,
        val_split_ratio: float = 0.5,
        seed: int | None = None,
        per_category_metrics: bool = True,
        skip_corrupt: bool = False,
        check_images: bool = True,
        training_guards: bool = True,
        balanced_batches: bool | None = None,
        categories_per_batch: int | None = None,
        images_per_category: int | None = None,
    ) -> None:
        if skip_corrupt and not check_images:
            msg = "skip_corrupt=True needs check_images=True: unreadable files are found by the check at setup."
            raise ValueError(msg)
        super().__init__(
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            train_augmentations=train_augmentations,
            val_augmentations=val_augmentations,
            test_augmentations=test_augmentations,
            augmentations=augmentations,
            test_split_mode=test_split_mode,
            test_split_ratio=test_split_ratio,
            val_split_mode=val_split_mode,
            val_split_ratio=val_split_ratio,
            seed=seed,
        )
        self.root = Path(root)
        if isinstance(categories, str):
            categories = [categories]
        self._requested_categories = list(categories) if categories is not None else None
        if self.valid_categories is not None:  # fixed list (MVTec AD, VisA): check before any download
            self._check_categories()
        self.category = UNIFIED
        self.per_category_metrics = per_category_metrics
        self.skip_corrupt = skip_corrupt
        self.check_images = check_images
        self.training_guards = training_guards
        self.balanced_batches = balanced_batches
        self.categories_per_batch = categories_per_batch
        self.images_per_category = images_per_category
        self._balanced_logged = False

    def _check_categories(self) -> list[str]:
        return resolve_categories(self.data_root, self._requested_categories, self.valid_categories)

    @property
    def data_root(self) -> Path:
        """The folder that holds one sub-folder per category."""
        return self.root

    @property
    def name(self) -> str:
        """The dataset folder's name (used by anomalib for results and visualisation paths)."""
        return self.root.resolve().name or self.__class__.__name__

    @property
    def categories(self) -> list[str]:
        """The categories this datamodule trains and tests on, in the order given (or sorted)."""
        return self._check_categories()

    @property
    def category_index(self) -> CategoryIndex:
        """Stable name <-> id mapping (ids follow sorted names)."""
        return CategoryIndex(self.categories)

    @property
    def category_names(self) -> list[str]:
        """Category names ordered by ``category_id``."""
        return self.category_index.names

    def prepare_data(self) -> None:
        """Check that the root and every requested category exist (errors name the path)."""
        self._check_categories()

    def setup(self, stage: str | None = None) -> None:
        """Set up the datasets, give the model a per-category evaluator, add the training guards."""
        super().setup(stage)
        if self.per_category_metrics and self.trainer is not None:
            attach_per_category_post_processor(self.trainer)
            attach_per_category_evaluator(self.trainer)
        if self.training_guards and self.trainer is not None:
            attach_training_guards(self.trainer)

    def train_dataloader(self) -> DataLoader:
        """The training loader: anomalib's shuffled one, or class-balanced batches (see the class docstring)."""
        batch_sampler = self.class_balanced_batch_sampler()
        if batch_sampler is None:
            return super().train_dataloader()
        return DataLoader(
            dataset=self.train_data,
            batch_sampler=batch_sampler,
            num_workers=self.num_workers,
            collate_fn=self.external_collate_fn or self.train_data.collate_fn,
        )

    def class_balanced_batch_sampler(self) -> ClassBalancedBatchSampler | None:
        """The training batch sampler when batches are class-balanced (``None``: anomalib's shuffling).

        Raises:
            ValueError: with ``balanced_batches=True`` and arguments no batch can satisfy. When only the
                model asks (``balanced_batches=None``), such arguments log a warning and keep the shuffling.

        """
        model = getattr(self.trainer, "lightning_module", None) if self.trainer is not None else None
        requested = self.balanced_batches
        reason = "balanced_batches=True"
        if requested is None:
            requested = bool(getattr(model, MODEL_ATTRIBUTE, False))
            reason = f"{type(model).__name__} asks for them; balanced_batches=False turns them off"
        if not requested:
            return None
        ids = [int(index) for index in self.train_data.samples.category_id]
        sizes = list(Counter(ids).values())
        if self.balanced_batches is None and len(sizes) < 2:
            return None  # one category: balancing changes nothing
        names = self.category_names
        try:
            shape = balanced_batch_shape(
                self.train_batch_size, sizes, self.categories_per_batch, self.images_per_category
            )
            trainer = self.trainer
            sampler = ClassBalancedBatchSampler(
                ids,
                *shape,
                seed=self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0)),
                num_replicas=getattr(trainer, "world_size", 1) if trainer is not None else 1,
                rank=getattr(trainer, "global_rank", 0) if trainer is not None else 0,
                category_names=names,
            )
        except ValueError as error:
            if self.balanced_batches:
                raise
            logger.warning("Class-balanced batches not possible (%s); using shuffled batches.", error)
            return None
        if not self._balanced_logged:
            logger.info(
                "Class-balanced batches (%s): %d categories x %d images each, %d batches per epoch and process.",
                reason,
                sampler.categories_per_batch,
                sampler.images_per_category,
                len(sampler),
            )
            self._balanced_logged = True
        return sampler

    def _setup(self, _stage: str | None = None) -> None:
        categories = self.categories
        if not self.data_root.is_dir():
            msg = (
                f"Dataset folder {str(self.data_root)!r} does not exist. Pass the folder that holds the categories "
                "as `root`, or call `prepare_data()` first (it downloads or generates the data where it can)."
            )
            raise FileNotFoundError(msg)
        index = CategoryIndex(categories)
        logger.info("Multi-class data: %d categories from %s: %s", len(categories), self.data_root, categories)
        samples = make_multiclass_samples(self.data_root, categories, index)
        if self.check_images:
            samples = check_sample_files(samples, skip_corrupt=self.skip_corrupt)
        if self.test_split_mode == TestSplitMode.FROM_DIR:
            untested = sorted(set(categories) - set(samples.category[samples.split == "test"]))
            if untested:
                logger.warning("Categories %s have no test images: they are trained on but not evaluated.", untested)
        self.train_data = MultiClassDataset(select_split(samples, "train"), self.name)
        self.test_data = MultiClassDataset(select_split(samples, "test"), self.name)

    # anomalib's synthetic splits rebuild plain items; use the per-category synthetic dataset instead.
    def _create_test_split(self) -> None:
        if self.test_split_mode != TestSplitMode.SYNTHETIC:
            super()._create_test_split()
            return
        if self.test_data.has_normal:
            normal_test_data, _ = split_by_label(self.test_data)
        else:
            self.train_data, normal_test_data = random_split(self.train_data, self.test_split_ratio, seed=self.seed)
        self.test_data = MultiClassSyntheticDataset.from_dataset(normal_test_data)

    def _create_val_split(self) -> None:
        if self.val_split_mode != ValSplitMode.SYNTHETIC:
            super()._create_val_split()
            return
        self.train_data, normal_val_data = random_split(self.train_data, self.val_split_ratio, seed=self.seed)
        self.val_data = MultiClassSyntheticDataset.from_dataset(normal_val_data)


def attach_training_guards(trainer: Trainer) -> None:
    """Add :class:`FiniteLossGuard` and :class:`RandomStateCheckpoint` to the trainer unless it has them (idempotent).

    Any model fitted with our datamodules then stops on a NaN/inf loss before the bad step changes
    its weights, and resumes from a checkpoint with the random states it had. Lightning calls
    ``datamodule.setup`` before the callbacks' ``setup`` and before restoring a checkpoint, so the
    added callbacks take part in both. They go before the ``ModelCheckpoint`` callbacks, which
    Lightning keeps last.
    """
    missing = [
        guard()
        for guard in (FiniteLossGuard, RandomStateCheckpoint)
        if not any(isinstance(callback, guard) for callback in trainer.callbacks)
    ]
    if not missing:
        return
    callbacks = list(trainer.callbacks)
    first_checkpoint = next(
        (index for index, callback in enumerate(callbacks) if isinstance(callback, ModelCheckpoint)), len(callbacks)
    )
    trainer.callbacks = [*callbacks[:first_checkpoint], *missing, *callbacks[first_checkpoint:]]


def attach_per_category_post_processor(trainer: Trainer) -> None:
    """Swap anomalib's post-processor of the model for a :class:`PerCategoryPostProcessor` (idempotent).

    It keeps the raw scores for the evaluator (threshold-free metrics on raw scores) and fits one
    threshold and min-max per category. anomalib's own models predict no category, so their
    validation and test images are grouped by the dataset's ``category_id`` and their exported graph
    keeps the pooled values; the per-category values are not saved in their checkpoints, which
    therefore still load into anomalib's post-processor.
    """
    from anomalib_classaware.post_processing import PerCategoryPostProcessor  # it imports the data classes

    model = trainer.lightning_module
    post_processor = getattr(model, "post_processor", None)
    if type(post_processor) is not PostProcessor:
        return
    per_category = PerCategoryPostProcessor.from_post_processor(post_processor, persist_categories=False)
    model.post_processor = per_category
    trainer.callbacks = [per_category if callback is post_processor else callback for callback in trainer.callbacks]
    logger.info("%s: one threshold and normalisation per category (PerCategoryPostProcessor).", type(model).__name__)


def attach_per_category_evaluator(trainer: Trainer) -> None:
    """Swap the model's evaluator for a :class:`PerCategoryEvaluator` that keeps its metrics (idempotent).

    This is how any anomalib model (``ReverseDistillation``, ``Patchcore``...) reports per-category
    and mean metrics with our datamodules. It runs in ``datamodule.setup``, which Lightning calls
    after the model's callbacks (and their logging functions) are attached and before their own
    ``setup``; that is also true of ``anomalib test`` on a checkpoint, in a new process.
    """
    model = trainer.lightning_module
    evaluator = getattr(model, "evaluator", None)
    if not isinstance(evaluator, Evaluator) or isinstance(evaluator, PerCategoryEvaluator):
        return
    per_category = PerCategoryEvaluator.from_evaluator(evaluator)
    model.evaluator = per_category
    trainer.callbacks = [per_category if callback is evaluator else callback for callback in trainer.callbacks]
    # Lightning gave the callbacks the module's logging functions before this hook ran; do the same.
    per_category.log = model.log
    per_category.log_dict = model.log_dict
    logger.info("%s reports per-category metrics through PerCategoryEvaluator.", type(model).__name__)


class MultiClassFolder(MultiClassDataModule):
    """Several categories of your own data, one sub-folder each, in MVTec layout.

    Args:
        root: Folder holding ``<category>/train/good``, ``<category>/test/good``,
            ``<category>/test/<defect_type>/`` (any number) and optionally
            ``<category>/ground_truth/<defect_type>/<name>_mask.png``.
        categories: Sub-folders to use; ``None`` uses every sub-folder.
        skip_corrupt: Leave out samples whose image or mask cannot be read (one warning lists
            them) instead of failing at setup. Defaults to ``False``.
        check_images: Check every file at setup. Defaults to ``True``.
        training_guards: Stop on a NaN/inf loss and resume with the saved random states
            (:func:`attach_training_guards`). Defaults to ``True``.
        balanced_batches: Class-balanced training batches: ``None`` when the model asks for them
            (``ClassAwareRecon``, ``ReContrast(class_aware=True)``), ``True`` always, ``False`` never.
        categories_per_batch: Categories per balanced batch (``None``: derived).
        images_per_category: Images per category in a balanced batch (``None``: derived).

    Example:
        >>> datamodule = MultiClassFolder(root="./my_parts", categories=["bolt", "washer"])

    """
