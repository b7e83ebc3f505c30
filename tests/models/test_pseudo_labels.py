"""Tests of k-means pseudo-class labels: clustering, silhouette, "auto", centroids in checkpoints."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.functional.clustering import adjusted_rand_score

from anomalib_classaware.models.components.lightning.class_labels import order_invariant, validate_class_labels
from anomalib_classaware.models.components.training.pseudo_labels import (
    PseudoClassLabeler,
    choose_num_clusters,
    kmeans,
    pooled_descriptor,
    silhouette_score,
)


def blobs(centres: int, per_centre: int, dim: int = 8, spread: float = 0.05, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    means = torch.randn(centres, dim, generator=generator) * 3
    points = means.repeat_interleave(per_centre, 0) + spread * torch.randn(
        centres * per_centre, dim, generator=generator
    )
    return points, torch.arange(centres).repeat_interleave(per_centre)


def test_kmeans_recovers_well_separated_clusters() -> None:
    points, truth = blobs(4, 25)
    labels, centroids, inertia = kmeans(points, 4)
    assert adjusted_rand_score(labels, truth).item() == pytest.approx(1.0)
    assert centroids.shape == (4, 8)
    assert inertia < 100 * 0.05**2 * 8 * 2
    with pytest.raises(ValueError, match="Cannot make 5 clusters from 4"):
        kmeans(points[:4], 5)


def test_silhouette_matches_a_hand_computed_value() -> None:
    points = torch.tensor([[0.0], [1.0], [10.0], [11.0]])
    labels = torch.tensor([0, 0, 1, 1])
    expected = (9.5 / 10.5 + 8.5 / 9.5 + 8.5 / 9.5 + 9.5 / 10.5) / 4
    assert silhouette_score(points, labels) == pytest.approx(expected)
    with pytest.raises(ValueError, match="at least two clusters"):
        silhouette_score(points, torch.zeros(4, dtype=torch.long))


def test_auto_picks_the_true_number_of_clusters() -> None:
    points, truth = blobs(3, 20)
    chosen, scores = choose_num_clusters(points, range(2, 8))
    assert chosen == 3
    assert set(scores) == set(range(2, 8))
    labeler = PseudoClassLabeler("auto", max_classes=8)
    labels = labeler.fit(points)
    assert labeler.centroids.shape[0] == 3
    assert adjusted_rand_score(labels, truth).item() == pytest.approx(1.0)
    assert torch.equal(labeler(points), labels)  # nearest centroid == k-means label on the training set


def test_centroids_survive_a_state_dict_round_trip() -> None:
    points, _ = blobs(3, 10)
    labeler = PseudoClassLabeler(3)
    labeler.fit(points)
    restored = PseudoClassLabeler(3)
    assert not restored.fitted
    restored.load_state_dict(labeler.state_dict())
    assert restored.fitted
    assert torch.equal(restored(points), labeler(points))
    with pytest.raises(RuntimeError, match="not fitted"):
        PseudoClassLabeler(2)(points)


def test_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match="num_pseudo_classes"):
        PseudoClassLabeler(0)
    with pytest.raises(ValueError, match="max_pseudo_classes"):
        PseudoClassLabeler("auto", max_classes=1)
    with pytest.raises(ValueError, match="'dataset'"):
        validate_class_labels("labels")


def test_descriptor_and_order_invariance() -> None:
    levels = [torch.randn(5, 4, 3, 3), torch.randn(5, 6, 2, 2)]
    descriptor = pooled_descriptor(levels)
    assert descriptor.shape == (5, 10)
    assert torch.allclose(descriptor.norm(dim=1), torch.ones(5))
    permutation = torch.randperm(5)
    assert torch.equal(order_invariant(descriptor), order_invariant(descriptor[permutation]))
