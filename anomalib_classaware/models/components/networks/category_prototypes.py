"""The category of an image from the image alone: nearest prototype of globally pooled frozen features.

A unified model deployed on a line gets images without a category; its per-category thresholds
(:class:`~anomalib_classaware.post_processing.PerCategoryPostProcessor`) need one. MINT-AD has a
classifier; the other models use :class:`CategoryPrototypes`: the L2-normalised mean of the pooled
frozen-backbone descriptor (:func:`pooled_descriptor`) of each category's training
images, fitted once when training starts and saved in the checkpoint; an image's category is the
prototype of highest cosine similarity. With ``class_labels="pseudo"`` on one-category data the
prototypes are the k-means clusters. The frozen features are those the model computes anyway, so
inference costs one matrix product.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from anomalib_classaware._buffers import ResizableBuffersMixin


def pooled_descriptor(features: Sequence[Tensor]) -> Tensor:
    """``(B, sum C)`` image descriptor: L2-normalised global average pool per level, concatenated, normalised."""
    pooled = [F.normalize(level.mean(dim=(2, 3)), dim=1) for level in features]
    return F.normalize(torch.cat(pooled, dim=1), dim=1)


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
