"""``ResidualCalibrationMixin``: fits the torch model's residual calibration on the training images after training.

The statistics (:class:`~..networks.residual_calibration.ResidualCalibration`) must describe the network as it is
when it is evaluated, so they are refitted whenever the network has trained since the last fit: when validation,
test or prediction starts, and before a checkpoint is saved. A model that never trains again (a loaded
checkpoint) keeps the statistics saved with it. The fit is one pass of the training images through the network in
eval mode; under DDP every process adds its shard and the moments are summed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import torch

from ..networks.residual_calibration import ResidualCalibration, ResidualMoments

logger = logging.getLogger(__name__)

STATE_PREFIX = "model.residual_calibration."


class ResidualCalibrationMixin:
    """Keeps ``self.model.residual_calibration`` fitted to the current network (Lightning module mixin).

    The host's torch model has ``residual_calibration`` (a :class:`ResidualCalibration` or ``None``: off),
    ``category_prototypes`` and ``inference_level_maps(images) -> (level maps, predicted category)``.
    """

    _calibration_stale: bool = False

    @property
    def residual_calibration_module(self) -> ResidualCalibration | None:
        """The torch model's calibration, or ``None`` when the model has it off."""
        return getattr(self.model, "residual_calibration", None)  # type: ignore[attr-defined]

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        """The network changed: the statistics are stale."""
        super().on_train_batch_end(*args, **kwargs)  # type: ignore[misc]
        self._calibration_stale = True

    def on_validation_start(self) -> None:
        """Refit the statistics if the network trained since the last fit."""
        super().on_validation_start()  # type: ignore[misc]
        self._refresh_residual_calibration()

    def on_test_start(self) -> None:
        """Refit the statistics if the network trained since the last fit (or they were never fitted)."""
        super().on_test_start()  # type: ignore[misc]
        self._refresh_residual_calibration()

    def on_predict_start(self) -> None:
        """Refit the statistics if the network trained since the last fit (or they were never fitted)."""
        super().on_predict_start()  # type: ignore[misc]
        self._refresh_residual_calibration()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Save statistics of the network being saved (refitted first if it trained since the last fit)."""
        super().on_save_checkpoint(checkpoint)  # type: ignore[misc]
        calibration = self.residual_calibration_module
        if calibration is None or not self._calibration_stale:
            return
        self._refresh_residual_calibration()
        state_dict = checkpoint.get("state_dict")
        if isinstance(state_dict, dict):
            state_dict[STATE_PREFIX + "mean"] = calibration.mean.detach().clone()
            state_dict[STATE_PREFIX + "scale"] = calibration.scale.detach().clone()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The loaded statistics belong to the loaded network."""
        super().on_load_checkpoint(checkpoint)  # type: ignore[misc]
        self._calibration_stale = False

    def _calibration_dataloader(self) -> Iterable[Any] | None:
        trainer = getattr(self, "_trainer", None)
        if trainer is None:
            return None
        loader = trainer.train_dataloader
        if loader is not None:
            return loader
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and getattr(datamodule, "train_data", None) is not None:
            return datamodule.train_dataloader()
        return None

    def _refresh_residual_calibration(self) -> None:
        calibration = self.residual_calibration_module
        if calibration is None or (calibration.fitted and not self._calibration_stale):
            return
        loader = self._calibration_dataloader()
        if loader is None:
            if calibration.fitted:  # stale, but no training images to refit on: keep the last fit
                logger.warning(
                    "%s: the network trained since its residual calibration was fitted and no training data is "
                    "attached to refit it; the last fit is used.",
                    type(self).__name__,
                )
                return
            msg = (
                f"{type(self).__name__}: residual_calibration is on but not fitted, and no training data is "
                "attached to fit it. Pass the training datamodule (e.g. `engine.test(model, datamodule=...)`), "
                "load a checkpoint saved after training, or build the model with residual_calibration=False."
            )
            raise RuntimeError(msg)
        self.fit_residual_calibration(loader)

    @torch.no_grad()
    def fit_residual_calibration(self, dataloader: Iterable[Any]) -> None:
        """Fit the statistics on every batch of ``dataloader`` (the training images), network in eval mode."""
        calibration = self.residual_calibration_module
        if calibration is None:
            msg = f"{type(self).__name__} has residual_calibration off; there is nothing to fit."
            raise RuntimeError(msg)
        start = time.perf_counter()
        network = self.model  # type: ignore[attr-defined]
        moments = ResidualMoments(max(1, network.category_prototypes.num_categories))
        transform = getattr(getattr(self, "pre_processor", None), "transform", None)
        was_training = network.training
        network.eval()
        try:
            # The pass draws the loader's shuffle seed: restore the random state, so training is unchanged.
            with torch.random.fork_rng(devices=[]):
                for batch in dataloader:
                    images = batch.image.to(self.device)  # type: ignore[attr-defined]
                    if transform is not None:
                        images = transform(images)
                    level_maps, categories = network.inference_level_maps(images)
                    moments.update(level_maps, categories)
        finally:
            network.train(was_training)
        moments.all_reduce()
        calibration.fit(moments)
        self._calibration_stale = False
        logger.info(
            "%s: residual calibration fitted on %d training images, %d categories (%.1f s).",
            type(self).__name__,
            int(moments.counts.sum()),
            moments.num_categories,
            time.perf_counter() - start,
        )
