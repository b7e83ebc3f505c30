"""Tests of the class-aware contrastive component: SupCon, dense InfoNCE, position matching, views, noise."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from anomalib_classaware.models.components import feature_jitter, position_noise
from anomalib_classaware.models.components.lightning.pre_processing import imagenet_pre_processor
from anomalib_classaware.models.components.training.contrastive_losses import (
    ClassAwareContrastiveLoss,
    ViewEncoding,
    dense_contrastive_loss,
    gather_with_grad,
    match_positions,
    supervised_contrastive_loss,
)
from anomalib_classaware.models.components.training.view_augmentation import (
    ContrastiveViewAugmentation,
    find_normalisation,
)


def test_supcon_matches_a_hand_computed_value() -> None:
    # z1 = (1, 0), z2 = (0.6, 0.8), z3 = (0, 1); classes 0, 0, 1; tau = 0.5.
    embeddings = torch.tensor([[2.0, 0.0], [0.6, 0.8], [0.0, 3.0]])  # not normalised on purpose
    labels = torch.tensor([0, 0, 1])
    s12, s13, s23 = 0.6 / 0.5, 0.0 / 0.5, 0.8 / 0.5
    anchor1 = -(s12 - math.log(math.exp(s12) + math.exp(s13)))
    anchor2 = -(s12 - math.log(math.exp(s12) + math.exp(s23)))
    # anchor 3 has no positive and is left out of the mean
    expected = (anchor1 + anchor2) / 2
    assert supervised_contrastive_loss(embeddings, labels, temperature=0.5).item() == pytest.approx(expected, rel=1e-6)


def test_supcon_is_lower_when_classes_cluster_and_rejects_bad_shapes() -> None:
    labels = torch.tensor([0, 0, 1, 1])
    clustered = torch.tensor([[1.0, 0.05], [1.0, -0.05], [-1.0, 0.05], [-1.0, -0.05]])
    mixed = clustered[[0, 2, 1, 3]]
    assert supervised_contrastive_loss(clustered, labels) < supervised_contrastive_loss(mixed, labels)
    single = supervised_contrastive_loss(torch.randn(1, 4, requires_grad=True), torch.tensor([0]))
    assert single.item() == 0.0
    assert single.requires_grad
    with pytest.raises(ValueError, match=r"\(N, D\) embeddings"):
        supervised_contrastive_loss(torch.randn(4, 2), torch.tensor([0, 1]))


def test_match_positions_recovers_a_flip() -> None:
    features = torch.randn(2, 16, 5, 6)
    flipped = features.flip(-1)
    matches = match_positions(features, flipped)
    rows, cols = torch.meshgrid(torch.arange(5), torch.arange(6), indexing="ij")
    expected = (rows * 6 + (5 - cols)).flatten()
    assert torch.equal(matches, expected.expand(2, -1))


def test_dense_loss_is_zero_for_one_class_and_lower_when_positives_align() -> None:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(4, 8, 4, 4, generator=generator, requires_grad=True)
    identity = torch.arange(16).expand(4, -1)
    one_class = dense_contrastive_loss(features, features, identity, torch.zeros(4, dtype=torch.long))
    assert one_class.item() == 0.0
    one_class.backward()  # keeps a graph (DDP needs every parameter to take part)
    labels = torch.tensor([0, 0, 1, 1])
    aligned = dense_contrastive_loss(features, features + 0.01 * torch.randn(4, 8, 4, 4), identity, labels)
    unrelated = dense_contrastive_loss(features, torch.randn(4, 8, 4, 4, generator=generator), identity, labels)
    assert aligned < unrelated
    sampled = dense_contrastive_loss(features, features, identity, labels, negatives="one", generator=generator)
    assert 0 < sampled.item() < aligned.item() + 1.0
    with pytest.raises(ValueError, match="'all' or 'one'"):
        dense_contrastive_loss(features, features, identity, labels, negatives="some")  # type: ignore[arg-type]


def test_dense_loss_uses_only_other_class_negatives() -> None:
    # Two images of class 0 with identical features: if they were negatives of each other, the loss
    # of a perfectly aligned pair would be log 2; with only other-class negatives (none) it is left out.
    features = torch.ones(2, 4, 2, 2)
    labels = torch.tensor([0, 0])
    loss = dense_contrastive_loss(features, features, torch.arange(4).expand(2, -1), labels)
    assert loss.item() == 0.0
    three = torch.cat([features, -torch.ones(1, 4, 2, 2)])
    value = dense_contrastive_loss(three, three, torch.arange(4).expand(3, -1), torch.tensor([0, 0, 1]), 1.0)
    # anchors of class 0: positive cos 1, one negative cos -1 -> log(1 + e^-2); class-1 anchor: two negatives
    expected = (2 * math.log(1 + math.exp(-2)) + math.log(1 + 2 * math.exp(-2))) / 3
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_class_aware_loss_weights_and_gradients() -> None:
    torch.manual_seed(0)
    levels = [torch.randn(4, 8, 4, 4, requires_grad=True), torch.randn(4, 16, 2, 2, requires_grad=True)]
    embedding = torch.randn(4, 6, requires_grad=True)
    view = ViewEncoding([level.detach() for level in levels], levels, embedding)
    augmented = ViewEncoding(
        [level.detach().flip(-1) for level in levels], [level.flip(-1) for level in levels], embedding * 1.1
    )
    labels = torch.tensor([0, 1, 0, 1])
    both = ClassAwareContrastiveLoss(0.05, 1.0, 1.0).compare_views(labels, view, augmented)
    global_only = ClassAwareContrastiveLoss(0.05, 1.0, 0.0).compare_views(labels, view, augmented)
    local_only = ClassAwareContrastiveLoss(0.05, 0.0, 2.0).compare_views(labels, view, augmented)
    assert both.total.item() == pytest.approx(both.global_loss.item() + both.local_loss.item(), rel=1e-6)
    assert global_only.local_loss.item() == 0.0
    assert global_only.global_loss.item() == pytest.approx(both.global_loss.item())
    assert local_only.total.item() == pytest.approx(2 * both.local_loss.item(), rel=1e-6)
    both.total.backward()
    assert all(level.grad is not None and level.grad.abs().sum() > 0 for level in levels)
    assert not ClassAwareContrastiveLoss(global_weight=0.0, local_weight=0.0).enabled
    with pytest.raises(ValueError, match="temperature"):
        ClassAwareContrastiveLoss(temperature=0.0)
    with pytest.raises(ValueError, match="local_negatives"):
        ClassAwareContrastiveLoss(local_negatives="few")  # type: ignore[arg-type]


def test_gather_is_the_identity_without_ddp() -> None:
    tensor = torch.randn(3, 2)
    assert gather_with_grad(tensor) is tensor


def test_view_augmentation_keeps_shape_and_normalisation() -> None:
    mean, std = find_normalisation(imagenet_pre_processor((32, 32)).transform)
    assert mean == pytest.approx([0.485, 0.456, 0.406])
    assert std == pytest.approx([0.229, 0.224, 0.225])
    augmentation = ContrastiveViewAugmentation((32, 40), mean, std)
    raw = torch.rand(3, 3, 32, 40)
    normalised = (raw - augmentation.mean) / augmentation.std
    view = augmentation(normalised)
    assert view.shape == normalised.shape
    assert not torch.allclose(view, normalised)
    augmentation.augment = nn.Identity()  # de-normalise -> identity -> normalise is lossless
    assert torch.allclose(augmentation(normalised), normalised, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        augmentation(torch.rand(2, 1, 32, 40))


def test_position_noise_hits_the_requested_fraction_of_whole_positions() -> None:
    generator = torch.Generator().manual_seed(0)
    features = torch.zeros(4, 8, 32, 32)
    noisy = position_noise(features, std=1.0, position_fraction=0.5, batch_probability=1.0, generator=generator)
    changed = noisy != 0
    assert changed.any(dim=1).float().mean().item() == pytest.approx(0.5, abs=0.03)
    assert torch.equal(changed.any(dim=1), changed.all(dim=1))  # all channels of a chosen position
    assert position_noise(features, batch_probability=0.0) is features
    hits = sum(
        bool((position_noise(features, batch_probability=0.5, generator=generator) != 0).any()) for _ in range(400)
    )
    assert 160 <= hits <= 240


def test_feature_jitter_scales_with_the_token_norm() -> None:
    generator = torch.Generator().manual_seed(0)
    tokens = torch.full((20000, 16), 2.0)  # norm 8 per token, C = 16 -> noise std = scale * 0.5
    noise = feature_jitter(tokens, scale=4.0, generator=generator) - tokens
    assert noise.std().item() == pytest.approx(2.0, rel=0.05)
    assert feature_jitter(tokens, scale=4.0, probability=0.0) is tokens
    maps = torch.full((2, 16, 8, 8), 2.0)
    assert (feature_jitter(maps, 4.0, channel_dim=1, generator=generator) - maps).std().item() == pytest.approx(
        2.0, rel=0.1
    )


def test_one_class_batch_falls_back_to_instance_discrimination() -> None:
    # Two images of one class and their views; the only positive of each anchor is its other view (InfoNCE).
    z1, z2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    v1, v2 = torch.tensor([0.6, 0.8]), torch.tensor([0.8, 0.6])
    tau = 0.5

    def anchor(positive: float, others: list[float]) -> float:
        return -(positive / tau - math.log(sum(math.exp(value / tau) for value in others)))

    expected = (
        anchor(0.6, [0.0, 0.6, 0.8])  # z1: positive v1; others z2, v1, v2
        + anchor(0.6, [0.0, 0.8, 0.6])  # z2: positive v2; others z1, v1, v2
        + anchor(0.6, [0.6, 0.8, 0.96])  # v1: positive z1; others z1, z2, v2
        + anchor(0.6, [0.8, 0.6, 0.96])  # v2: positive z2; others z1, z2, v1
    ) / 4
    levels = [torch.randn(2, 4, 2, 2)]
    view = ViewEncoding(levels, levels, torch.stack([z1, z2]))
    augmented = ViewEncoding(levels, levels, torch.stack([v1, v2]))
    loss = ClassAwareContrastiveLoss(tau, 1.0, 0.0).compare_views(torch.tensor([3, 3]), view, augmented)
    assert loss.global_loss.item() == pytest.approx(expected, rel=1e-6)
    collapsed = supervised_contrastive_loss(torch.stack([z1, z2, v1, v2]), torch.tensor([3, 3, 3, 3]), tau)
    assert collapsed.item() != pytest.approx(expected, rel=1e-3)  # plain SupCon: every image a positive
    # with two classes the loss is plain SupCon on the labels
    two = ClassAwareContrastiveLoss(tau, 1.0, 0.0).compare_views(torch.tensor([0, 1]), view, augmented)
    plain = supervised_contrastive_loss(torch.stack([z1, z2, v1, v2]), torch.tensor([0, 1, 0, 1]), tau)
    assert two.global_loss.item() == pytest.approx(plain.item(), rel=1e-6)
