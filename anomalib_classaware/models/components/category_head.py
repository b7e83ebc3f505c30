"""The category of an image from the image alone: nearest prototype of globally pooled frozen features.

A unified model deployed on a line gets images without a category; its per-category thresholds
(:class:`~anomalib_classaware.post_processing.PerCategoryPostProcessor`) need one. MINT-AD has a
classifier; the other models use :class:`CategoryPrototypes`: the L2-normalised mean of the pooled
frozen-backbone descriptor (:func:`~.pseudo_labels.pooled_descriptor`) of each category's training
images, fitted once when training starts and saved in the checkpoint; an image's category is the
prototype of highest cosine similarity. With ``class_labels="pseudo"`` on one-category data the
prototypes are the k-means clusters. The frozen features are those the model computes anyway, so
inference costs one matrix product.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn import functional as F

from anomalib_classaware._buffers import ResizableBuffersMixin

from .contrastive import gather_no_grad
from .pseudo_labels import pooled_descriptor

logger = logging.getLogger(__name__)

CHECKPOINT_KEY = "predicted_category_names"


class CategoryPrototypes(ResizableBuffersMixin):
    """``(B,)`` category id of each descriptor: the prototype of highest cosine similarity.

    Before :meth:`fit` (or with one category) every image is category 0, so a one-category model
    behaves exactly as without the head.
    """

    prototypes: Tensor
    resizable_buffers = ("prototypes",)

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("prototypes", torch.empty(0))

    @property
    def num_categories(self) -> int:
        """Number of prototypes (0 before fitting)."""
        return int(self.prototypes.shape[0]) if self.prototypes.ndim == 2 else 0

    def fit(self, descriptors: Tensor, labels: Tensor, num_categories: int | None = None) -> None:
        """Set each category's prototype to the normalised mean of its ``(N, D)`` descriptors.

        Raises:
            ValueError: if a category in ``range(num_categories)`` has no descriptor.

        """
        count = int(num_categories if num_categories is not None else int(labels.max()) + 1)
        sums = torch.zeros(count, descriptors.shape[1], dtype=descriptors.dtype, device=descriptors.device)
        sums.index_add_(0, labels.long().to(descriptors.device), descriptors)
        counts = torch.bincount(labels.long().cpu(), minlength=count)
        if bool((counts == 0).any()):
            missing = torch.nonzero(counts == 0).reshape(-1).tolist()
            msg = f"Category prototypes: categories {missing} have no training image; every category needs one."
            raise ValueError(msg)
        self.prototypes = F.normalize(sums, dim=1).to(self.prototypes.device)

    def set_prototypes(self, prototypes: Tensor) -> None:
        """Use given ``(K, D)`` prototypes (e.g. k-means centroids), normalised."""
        self.prototypes = F.normalize(prototypes.detach().float(), dim=1).to(self.prototypes.device)

    def forward(self, descriptors: Tensor) -> Tensor:
        """``(B,)`` long: nearest prototype by cosine similarity (zeros before fitting)."""
        if self.num_categories <= 1:
            return torch.zeros(descriptors.shape[0], dtype=torch.long, device=descriptors.device)
        return (F.normalize(descriptors, dim=1) @ self.prototypes.T).argmax(dim=1)

    def predict(self, features: Sequence[Tensor]) -> Tensor:
        """``(B,)`` category of the images whose frozen multi-level features are ``features``."""
        return self(pooled_descriptor(features))


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
