"""``CategoryPrototypesMixin``: fits the torch model's category prototypes once when training starts."""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.distributed as dist

from ..networks.category_prototypes import CategoryPrototypes, pooled_descriptor
from ..training.distributed import gather_no_grad

logger = logging.getLogger(__name__)

CHECKPOINT_KEY = "predicted_category_names"


class CategoryPrototypesMixin:
    """Fits ``self.model.category_prototypes`` once when training starts (Lightning module mixin).

    The host's torch model has ``category_prototypes`` (:class:`CategoryPrototypes`) and
    ``frozen_features(images)``; the host has ``category_names`` and calls
    :meth:`_fit_category_prototypes` from ``on_train_start`` (after pseudo labels, if any).
    Prototypes restored from a checkpoint are kept when the categories are the same.
    """

    predicted_category_names: list[str] | None = None

    @torch.no_grad()
    def _fit_category_prototypes(self) -> None:
        head: CategoryPrototypes = self.model.category_prototypes  # type: ignore[attr-defined]
        names = list(getattr(self, "category_names", None) or [])
        pseudo = getattr(self, "pseudo_labeler", None)
        if len(names) <= 1 and getattr(self, "class_labels", None) == "pseudo" and pseudo is not None and pseudo.fitted:
            head.set_prototypes(pseudo.centroids)
            self.predicted_category_names = [f"pseudo_{index}" for index in range(head.num_categories)]
            logger.info(
                "%s: the predicted category is the nearest of %d pseudo-class centroids.",
                type(self).__name__,
                head.num_categories,
            )
            return
        if head.num_categories == len(names) and self.predicted_category_names == names:
            return
        self.predicted_category_names = names or None
        if len(names) <= 1:
            head.prototypes = torch.empty(0, device=head.prototypes.device)
            return
        trainer = self.trainer  # type: ignore[attr-defined]
        transform = getattr(getattr(self, "pre_processor", None), "transform", None)
        descriptors, labels = [], []
        # The pass draws the loader's shuffle seed: restore the random state, so training is unchanged.
        with torch.random.fork_rng(devices=[]):
            for batch in trainer.train_dataloader:
                images = batch.image.to(self.device)  # type: ignore[attr-defined]
                if transform is not None:
                    images = transform(images)
                descriptors.append(pooled_descriptor(self.model.frozen_features(images)))  # type: ignore[attr-defined]
                labels.append(torch.as_tensor(batch.category_id).reshape(-1).long().to(self.device))  # type: ignore[attr-defined]
        all_descriptors = gather_no_grad(torch.cat(descriptors))
        all_labels = gather_no_grad(torch.cat(labels))
        head.fit(all_descriptors, all_labels, len(names))
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(head.prototypes, src=0)
        accuracy = float((head(torch.cat(descriptors)) == torch.cat(labels)).float().mean())
        logger.info(
            "%s: category prototypes of %d categories from %d training images (training-set category accuracy %.3f).",
            type(self).__name__,
            len(names),
            len(all_labels),
            accuracy,
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Save the names of the predicted category ids."""
        super().on_save_checkpoint(checkpoint)  # type: ignore[misc]
        checkpoint[CHECKPOINT_KEY] = self.predicted_category_names

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the names of the predicted category ids."""
        super().on_load_checkpoint(checkpoint)  # type: ignore[misc]
        names = checkpoint.get(CHECKPOINT_KEY)
        self.predicted_category_names = list(names) if names else None
