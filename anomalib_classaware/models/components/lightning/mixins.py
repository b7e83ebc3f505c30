"""Small Lightning-module mixins shared by our models.

- :class:`PlannedStepsMixin`: the number of optimizer steps a fit is planned to take
  (``trainer.estimated_stepping_batches``), which the papers' step-based schedules (learning-rate
  decay at 80 %, ReContrast's hard-mining ramp) scale to; recomputed for every new fit, so the
  schedules follow ``max_steps`` or ``max_epochs`` and continue correctly when a fit resumes.
- :class:`CategoryPredictionMixin`: the per-category post-processor, steps that keep ``pred_category``.
- :class:`FeatureReconstructionMixin`: ImageNet pre-processing, those steps, one-class learning
  type; :func:`step_decay_schedule`: the papers' single step decay of all learning rates.
- :class:`OfflineCheckpointMixin`: ``load_from_checkpoint`` defaults ``pre_trained=False`` and
  ``weights_path=None``: the checkpoint holds every weight, so loading must not need the model hub
  or the original weights file (air-gapped inspection lines).
- :class:`TrainingGuardsMixin`: every model stops on a NaN loss and resumes with its random states: it appends
  :class:`~anomalib_classaware.callbacks.FiniteLossGuard` and
  :class:`~anomalib_classaware.callbacks.RandomStateCheckpoint` to the callbacks the module configures
  (Lightning lets those replace trainer callbacks of the same type, so a user's own instance is replaced, never
  doubled). Put it before ``AnomalibModule`` in the bases.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.pre_processing import PreProcessor
from lightning.fabric.utilities.types import _MAP_LOCATION_TYPE
from lightning.pytorch import Callback
from lightning.pytorch.utilities.types import STEP_OUTPUT, OptimizerLRScheduler

from anomalib_classaware.callbacks import FiniteLossGuard, RandomStateCheckpoint
from anomalib_classaware.post_processing import PerCategoryPostProcessor

from .pre_processing import imagenet_pre_processor


class TrainingGuardsMixin:
    """Adds :class:`FiniteLossGuard` and :class:`RandomStateCheckpoint` to ``configure_callbacks``."""

    def configure_callbacks(self) -> Sequence[Callback] | Callback:
        """The host's callbacks plus the two training guards."""
        callbacks = super().configure_callbacks()  # type: ignore[misc]
        callbacks = list(callbacks) if isinstance(callbacks, Sequence) else [callbacks]
        return [*callbacks, FiniteLossGuard(), RandomStateCheckpoint()]


class PlannedStepsMixin:
    """Adds :attr:`planned_steps`; the host's ``setup`` must call ``super().setup(stage)``."""

    _planned_steps: int | None = None

    @property
    def planned_steps(self) -> int:
        """Optimizer steps this fit is planned to take (``trainer.estimated_stepping_batches``).

        Raises:
            ValueError: if the training length is unbounded.

        """
        if self._planned_steps is None:
            steps = self.trainer.estimated_stepping_batches  # type: ignore[attr-defined]
            if not math.isfinite(steps) or steps < 1:
                msg = f"{type(self).__name__}'s schedules need a finite training length: set max_steps or max_epochs."
                raise ValueError(msg)
            self._planned_steps = int(steps)
        return self._planned_steps

    def setup(self, stage: str) -> None:
        """Forget a previous fit's planned steps (runs before ``configure_optimizers``; a new trainer may differ)."""
        super().setup(stage)  # type: ignore[misc]
        self._planned_steps = None


class OfflineCheckpointMixin:
    """``load_from_checkpoint`` that never fetches backbone weights (put before the Lightning base class)."""

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | Path,
        map_location: _MAP_LOCATION_TYPE = None,
        hparams_file: str | Path | None = None,
        strict: bool | None = None,
        weights_only: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Load a checkpoint with ``pre_trained=False`` and ``weights_path=None`` unless given."""
        kwargs.setdefault("pre_trained", False)
        kwargs.setdefault("weights_path", None)
        return super().load_from_checkpoint(  # type: ignore[misc]
            checkpoint_path,
            map_location=map_location,
            hparams_file=hparams_file,
            strict=strict,
            weights_only=weights_only,
            **kwargs,
        )


class CategoryPredictionMixin:
    """Per-category post-processing and steps that keep ``pred_category`` (put before ``AnomalibModule``).

    The default post-processor is :class:`PerCategoryPostProcessor`; validation, test and predict
    steps return the torch model's predictions with ``pred_category`` on the batch, also on anomalib's
    own batch classes (whose ``update`` drops unknown fields).
    """

    @staticmethod
    def configure_post_processor() -> PerCategoryPostProcessor:
        """One threshold and min-max per predicted category (:class:`PerCategoryPostProcessor`)."""
        return PerCategoryPostProcessor()

    def validation_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """Predict; the post-processor learns one threshold and normalisation per predicted category."""
        del args, kwargs  # These variables are not used.
        return self._predict_batch(batch)

    def test_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """Predict scores, maps and categories of a test batch (the post-processor and evaluator follow)."""
        del args, kwargs  # These variables are not used.
        return self._predict_batch(batch)

    def predict_step(self, batch: Batch, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """Predict scores, maps and categories (``pred_category``) of a batch."""
        del args, kwargs  # These variables are not used.
        return self._predict_batch(batch)

    def _predict_batch(self, batch: Batch) -> Batch:
        predictions = self.model(batch.image)  # type: ignore[attr-defined]
        return attach_predictions(batch, predictions)


def attach_predictions(batch: Batch, predictions: Any) -> Batch:
    """``batch.update`` with the predictions, keeping ``pred_category`` on any batch class."""
    updated = batch.update(**predictions._asdict())
    updated.pred_category = getattr(predictions, "pred_category", None)
    return updated


class FeatureReconstructionMixin(CategoryPredictionMixin, TrainingGuardsMixin):
    """What every feature-reconstruction model of the package shares (put before ``AnomalibModule``).

    ImageNet pre-processing, the per-category post-processor and steps of
    :class:`CategoryPredictionMixin`, the one-class learning type, and the training guards (stop on a
    non-finite loss; random states in checkpoints).
    """

    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Resize to ``image_size`` (default 256 x 256) and normalise with ImageNet statistics."""
        return imagenet_pre_processor(image_size)

    @property
    def learning_type(self) -> LearningType:
        """Trained on normal images only (class labels, where used, are side information)."""
        return LearningType.ONE_CLASS


def step_decay_schedule(
    optimizer: torch.optim.Optimizer, planned_steps: int, decay_fraction: float, decay_factor: float
) -> OptimizerLRScheduler:
    """Optimizer config: every learning rate times ``decay_factor`` once, at ``decay_fraction`` of the steps."""
    milestone = max(1, int(decay_fraction * planned_steps))
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[milestone], gamma=decay_factor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}
