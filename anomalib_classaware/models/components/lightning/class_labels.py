"""Class labels for training losses: the datamodule's ``category_id`` or k-means pseudo-classes.

Used by Lightning modules whose training uses classes (``ClassAwareRecon``, ``ReContrast`` with
``class_aware=True``). ``class_labels="dataset"`` reads ``batch.category_id`` (anomalib's
single-category datamodules carry none: one class, said once in the log by
:class:`~.category_names.CategoryNamesMixin`). ``class_labels="pseudo"`` clusters the training set
once when training starts (:mod:`..training.pseudo_labels`) and labels each batch by nearest centroid.
Under DDP the descriptors of all processes are gathered, clustered identically on every process
and rank 0's centroids are broadcast.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor

from ..training.distributed import gather_no_grad
from ..training.pseudo_labels import NumClusters, PseudoClassLabeler, pooled_descriptor
from .category_names import batch_category_ids

logger = logging.getLogger(__name__)

ClassLabelSource = Literal["dataset", "pseudo"]


def validate_class_labels(class_labels: str) -> ClassLabelSource:
    """Check the ``class_labels`` argument."""
    if class_labels not in {"dataset", "pseudo"}:
        msg = f"`class_labels` must be 'dataset' (the datamodule's category ids) or 'pseudo', got {class_labels!r}."
        raise ValueError(msg)
    return class_labels  # type: ignore[return-value]


def order_invariant(descriptors: Tensor) -> Tensor:
    """Sort descriptors by a fixed random projection, so clustering does not depend on the loader's order."""
    generator = torch.Generator().manual_seed(0)
    direction = torch.randn(descriptors.shape[1], generator=generator, dtype=descriptors.dtype).to(descriptors.device)
    return descriptors[torch.argsort(descriptors @ direction)]


class ClassLabelsMixin:
    """Adds ``class_labels`` handling to a Lightning module.

    The host sets ``self.class_labels`` and ``self.pseudo_labeler`` via :meth:`_init_class_labels`,
    implements :meth:`teacher_features` (frozen features of pre-processed images), calls
    :meth:`_fit_pseudo_labels` from ``on_train_start`` and :meth:`training_labels` in ``training_step``.
    """

    class_labels: ClassLabelSource
    pseudo_labeler: PseudoClassLabeler

    def _init_class_labels(self, class_labels: str, num_pseudo_classes: NumClusters, max_pseudo_classes: int) -> None:
        self.class_labels = validate_class_labels(class_labels)
        self.pseudo_labeler = PseudoClassLabeler(num_pseudo_classes, max_classes=max_pseudo_classes)

    def teacher_features(self, images: Tensor) -> Sequence[Tensor]:
        """Frozen-teacher features of a pre-processed batch (implemented by the host)."""
        raise NotImplementedError

    @torch.no_grad()
    def _fit_pseudo_labels(self) -> None:
        if self.class_labels != "pseudo" or self.pseudo_labeler.fitted:
            return
        trainer = self.trainer  # type: ignore[attr-defined]
        transform = getattr(getattr(self, "pre_processor", None), "transform", None)
        descriptors, categories = [], []
        for batch in trainer.train_dataloader:
            images = batch.image.to(self.device)  # type: ignore[attr-defined]
            if transform is not None:
                images = transform(images)
            descriptors.append(pooled_descriptor(self.teacher_features(images)))
            ids = getattr(batch, "category_id", None)
            categories.append(None if ids is None else torch.as_tensor(ids).reshape(-1).long())
        all_descriptors = gather_no_grad(torch.cat(descriptors))
        labels = self.pseudo_labeler.fit(order_invariant(all_descriptors).cpu())
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(self.pseudo_labeler.centroids, src=0)
        chosen = len(self.pseudo_labeler.centroids)
        message = f"{type(self).__name__}: {chosen} pseudo-classes by k-means on {len(labels)} training images"
        if self.pseudo_labeler.silhouette_scores:
            scores = ", ".join(f"{k}: {v:.3f}" for k, v in self.pseudo_labeler.silhouette_scores.items())
            message += f" (chosen by silhouette score; {scores})"
        if all(ids is not None for ids in categories) and not dist.is_initialized():
            from torchmetrics.functional.clustering import adjusted_rand_score

            assigned = self.pseudo_labeler(torch.cat(descriptors).cpu())
            ari = float(adjusted_rand_score(assigned, torch.cat(categories)))  # type: ignore[arg-type]
            self.pseudo_label_ari = ari
            message += f"; adjusted Rand index vs the dataset's categories: {ari:.3f}"
        logger.info(message)

    def training_labels(self, batch: object, teacher_features: Sequence[Tensor]) -> Tensor:
        """``(B,)`` class of each training image: dataset ids, or nearest pseudo-class centroid."""
        batch_size = teacher_features[0].shape[0]
        if self.class_labels == "pseudo":
            return self.pseudo_labeler(pooled_descriptor([f.detach() for f in teacher_features]))
        return batch_category_ids(batch, batch_size, teacher_features[0].device)
