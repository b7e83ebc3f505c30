"""Pseudo-class labels: k-means on globally pooled frozen-teacher features, fitted once before training.

Fan et al. (arXiv 2412.04769) report that pseudo labels work about as well as dataset classes;
their code only holds an unused helper that clusters ImageNet ResNet-18 features with k-means.
Ours: descriptor = concatenation of the L2-normalised global average pools of every teacher level
(L2-normalised again); k-means++ with restarts (anomalib's ``KMeans`` has random initialisation,
no restarts and 10 iterations, too fragile for this); ``"auto"`` picks the number of clusters
with the best silhouette score. During training each image is assigned to its nearest centroid,
computed from the teacher features the training step already has, so no dataset index is needed.
The centroids are saved in the checkpoint (resuming does not re-cluster).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..networks.category_prototypes import pooled_descriptor

__all__ = [
    "NumClusters",
    "PseudoClassLabeler",
    "choose_num_clusters",
    "kmeans",
    "pooled_descriptor",
    "silhouette_score",
]

NumClusters = int | Literal["auto"]


def kmeans(
    points: Tensor,
    num_clusters: int,
    num_init: int = 10,
    max_iter: int = 100,
    seed: int = 0,
) -> tuple[Tensor, Tensor, float]:
    """k-means++ with ``num_init`` restarts; returns ``(labels (N,), centroids (K, D), inertia)`` of the best run.

    Raises:
        ValueError: if there are fewer points than clusters.

    """
    points = points.detach().double().cpu()
    count = points.shape[0]
    if not 1 <= num_clusters <= count:
        msg = f"Cannot make {num_clusters} clusters from {count} training images: lower `num_pseudo_classes`."
        raise ValueError(msg)
    generator = torch.Generator().manual_seed(seed)
    best: tuple[Tensor, Tensor, float] | None = None
    for _ in range(num_init):
        centroids = points[torch.randint(count, (1,), generator=generator)]
        for _ in range(1, num_clusters):
            distances = torch.cdist(points, centroids).min(dim=1).values.square()
            weights = distances if distances.sum() > 0 else torch.ones_like(distances)
            centroids = torch.cat([centroids, points[torch.multinomial(weights, 1, generator=generator)]])
        labels = torch.cdist(points, centroids).argmin(dim=1)
        for _ in range(max_iter):
            counts = torch.bincount(labels, minlength=num_clusters).unsqueeze(1)
            sums = torch.zeros_like(centroids).index_add_(0, labels, points)
            updated = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)  # empty clusters stay
            new_labels = torch.cdist(points, updated).argmin(dim=1)
            centroids = updated
            if torch.equal(new_labels, labels):
                break
            labels = new_labels
        inertia = float(torch.cdist(points, centroids).min(dim=1).values.square().sum())
        if best is None or inertia < best[2]:
            best = (labels, centroids, inertia)
    assert best is not None
    return best[0], best[1].float(), best[2]


def silhouette_score(points: Tensor, labels: Tensor) -> float:
    """Mean silhouette (Rousseeuw 1987) with Euclidean distances; singleton clusters score 0."""
    points = points.detach().double().cpu()
    labels = labels.cpu()
    clusters = labels.unique()
    if len(clusters) < 2:
        msg = "The silhouette score needs at least two clusters."
        raise ValueError(msg)
    distances = torch.cdist(points, points)
    membership = F.one_hot(labels, int(labels.max()) + 1).double()[:, clusters]  # (N, K)
    sizes = membership.sum(dim=0)
    own = membership.argmax(dim=1)
    sums = distances @ membership  # (N, K): summed distance to each cluster
    own_size = sizes[own]
    intra = sums.gather(1, own[:, None]).squeeze(1) / (own_size - 1).clamp(min=1)
    other = (sums / sizes).masked_fill(F.one_hot(own, len(clusters)).bool(), float("inf")).min(dim=1).values
    scores = (other - intra) / torch.maximum(intra, other).clamp(min=1e-12)
    scores[own_size == 1] = 0.0
    return float(scores.mean())


def choose_num_clusters(points: Tensor, candidates: Sequence[int], seed: int = 0) -> tuple[int, dict[int, float]]:
    """Number of clusters with the highest silhouette score among ``candidates`` (each >= 2)."""
    scores = {}
    for candidate in candidates:
        if 2 <= candidate < points.shape[0]:
            labels, _, _ = kmeans(points, candidate, seed=seed)
            scores[candidate] = silhouette_score(points, labels) if len(labels.unique()) > 1 else -1.0
    if not scores:
        msg = f"No valid number of clusters among {list(candidates)} for {points.shape[0]} training images."
        raise ValueError(msg)
    return max(scores, key=lambda k: (scores[k], -k)), scores


class PseudoClassLabeler(nn.Module):
    """Holds k-means centroids (a buffer saved in checkpoints) and assigns images to the nearest one.

    Args:
        num_classes: number of pseudo classes, or ``"auto"`` (silhouette over ``2..max_classes``).
        max_classes: upper bound of the ``"auto"`` search.
        seed: k-means seed.

    """

    def __init__(self, num_classes: NumClusters = "auto", max_classes: int = 20, seed: int = 0) -> None:
        super().__init__()
        if num_classes != "auto" and (not isinstance(num_classes, int) or num_classes < 1):
            msg = f"`num_pseudo_classes` must be a positive int or 'auto', got {num_classes!r}."
            raise ValueError(msg)
        if max_classes < 2:
            msg = f"`max_pseudo_classes` must be >= 2, got {max_classes}."
            raise ValueError(msg)
        self.num_classes = num_classes
        self.max_classes = max_classes
        self.seed = seed
        self.silhouette_scores: dict[int, float] = {}
        self.register_buffer("centroids", torch.empty(0))

    @property
    def fitted(self) -> bool:
        """Whether centroids exist (fitted now or restored from a checkpoint)."""
        return self.centroids.numel() > 0

    def fit(self, descriptors: Tensor) -> Tensor:
        """Cluster ``(N, D)`` descriptors; returns the ``(N,)`` labels."""
        if self.num_classes == "auto":
            candidates = range(2, min(self.max_classes, descriptors.shape[0] - 1) + 1)
            chosen, self.silhouette_scores = choose_num_clusters(descriptors, candidates, seed=self.seed)
        else:
            chosen = int(self.num_classes)
        labels, centroids, _ = kmeans(descriptors, chosen, seed=self.seed)
        self.centroids = centroids.to(self.centroids.device)
        return labels

    def forward(self, descriptors: Tensor) -> Tensor:
        """``(B,)`` index of the nearest centroid of each ``(B, D)`` descriptor."""
        if not self.fitted:
            msg = "Pseudo-class centroids are not fitted: call `fit` on the training descriptors first."
            raise RuntimeError(msg)
        return torch.cdist(descriptors.float(), self.centroids.to(descriptors.device)).argmin(dim=1)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # The number of centroids is only known after fitting: take the checkpoint's shape.
        key = prefix + "centroids"
        if key in state_dict:
            self.centroids = torch.empty_like(state_dict[key], device=self.centroids.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
