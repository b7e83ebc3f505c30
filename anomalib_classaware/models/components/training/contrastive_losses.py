"""Class-aware contrastive losses for reconstruction models (Fan et al., arXiv 2412.04769, Sec. 3.2-3.3).

A plug-and-play training-only component: it never runs at inference or export.

- :func:`supervised_contrastive_loss`: SupCon (Khosla et al., NeurIPS 2020, eq. 2, "L_out") over
  L2-normalised embeddings; samples of the same class are positives. The global term of the
  paper applies it to the pooled bottleneck embeddings of a batch and of its augmented view.
  (The authors' v2 code adds a term that rewards similarity to negatives; we use standard SupCon.)
  When the (global) batch holds one class, e.g. with anomalib's single-category datamodules,
  SupCon would make every other image a positive and have no negative: its minimum is the
  collapsed state. The global term then falls back to instance discrimination (InfoNCE / NT-Xent,
  SimCLR): each image's only positive is its own augmented view (ours).
- :func:`match_positions`: for every position of an image's original view, the most similar
  position of its augmented view (cosine on frozen-teacher features).
- :func:`dense_contrastive_loss`: the local term, InfoNCE per position: anchor = projected
  feature of the original view, positive = projected feature of the augmented view at the
  matched position, negatives = projected features of **other-class** images at the same
  position (all of them, or one sampled image as in the authors' code). Anchors without a
  negative (a batch of one class) contribute nothing; the loss is zero when no anchor has one.
- :class:`ClassAwareContrastiveLoss`: both terms, weighted (``l1 = l2 = 1``, ``tau = 0.05``), with
  tensors gathered across DDP processes (with gradients) so that positives and negatives come from
  the global batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .distributed import gather_no_grad, gather_with_grad

LocalNegatives = Literal["all", "one"]


def supervised_contrastive_loss(embeddings: Tensor, labels: Tensor, temperature: float = 0.05) -> Tensor:
    """SupCon ``L_out`` (Khosla et al. 2020, eq. 2) averaged over anchors that have a positive.

    Args:
        embeddings: ``(N, D)`` embeddings (normalised here).
        labels: ``(N,)`` integer classes; ``i != j`` with equal labels are positives.
        temperature: softmax temperature ``tau``.

    Returns:
        Scalar loss; ``0`` (with a graph) when no anchor has a positive.

    """
    if embeddings.ndim != 2 or labels.shape != embeddings.shape[:1]:
        msg = f"Expected (N, D) embeddings and (N,) labels, got {tuple(embeddings.shape)} and {tuple(labels.shape)}."
        raise ValueError(msg)
    features = F.normalize(embeddings, dim=1)
    logits = features @ features.T / temperature
    self_mask = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    log_prob = logits - torch.logsumexp(logits.masked_fill(self_mask, float("-inf")), dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    counts = positives.sum(dim=1)
    has_positive = counts > 0
    if not has_positive.any():
        return embeddings.sum() * 0.0
    mean_log_prob = (log_prob * positives).sum(dim=1)[has_positive] / counts[has_positive]
    return -mean_log_prob.mean()


@torch.no_grad()
def match_positions(features: Tensor, augmented_features: Tensor) -> Tensor:
    """``(B, H*W)`` index of the augmented-view position most similar (cosine) to each original position.

    Computed one image at a time, so memory stays at ``(H*W)^2`` floats.
    """
    if features.shape != augmented_features.shape:
        msg = f"Views must have equal shapes, got {tuple(features.shape)} and {tuple(augmented_features.shape)}."
        raise ValueError(msg)
    original = F.normalize(features.flatten(2), dim=1)  # (B, C, P)
    augmented = F.normalize(augmented_features.flatten(2), dim=1)
    return torch.stack([(o.T @ a).argmax(dim=1) for o, a in zip(original, augmented, strict=True)])


def dense_contrastive_loss(
    features: Tensor,
    augmented_features: Tensor,
    matches: Tensor,
    labels: Tensor,
    temperature: float = 0.05,
    negatives: LocalNegatives = "all",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Position-wise InfoNCE with other-class negatives at the same position.

    Args:
        features: ``(B, C, H, W)`` projected features of the original view (anchors, negatives).
        augmented_features: ``(B, C, H, W)`` projected features of the augmented view (positives).
        matches: ``(B, H*W)`` from :func:`match_positions`.
        labels: ``(B,)`` classes.
        temperature: softmax temperature.
        negatives: ``"all"`` other-class images, or ``"one"`` sampled per anchor image (authors' code).
        generator: random generator for ``"one"``.

    Returns:
        Mean over anchors that have at least one negative; ``0`` (with a graph) when none has.

    """
    batch = features.shape[0]
    anchors = F.normalize(features.flatten(2), dim=1)  # (B, C, P)
    augmented = F.normalize(augmented_features.flatten(2), dim=1)
    positives = torch.gather(augmented, 2, matches[:, None, :].expand(-1, anchors.shape[1], -1))
    positive_logits = (anchors * positives).sum(dim=1) / temperature  # (B, P)
    other_class = labels[:, None] != labels[None, :]  # (B, B)
    if negatives == "one":
        scores = torch.rand((batch, batch), generator=generator).to(labels.device).masked_fill(~other_class, -1.0)
        chosen = scores.argmax(dim=1)
        other_class = F.one_hot(chosen, batch).bool() & other_class
    elif negatives != "all":
        msg = f"`negatives` must be 'all' or 'one', got {negatives!r}."
        raise ValueError(msg)
    has_negative = other_class.any(dim=1)
    if not has_negative.any():
        return features.sum() * 0.0 + augmented_features.sum() * 0.0
    negative_logits = torch.einsum("bcp,dcp->bdp", anchors, anchors) / temperature  # (B, B, P)
    negative_logits = negative_logits.masked_fill(~other_class[:, :, None], float("-inf"))
    logits = torch.cat([positive_logits[:, None, :], negative_logits], dim=1)  # (B, 1 + B, P)
    loss = torch.logsumexp(logits, dim=1) - positive_logits  # (B, P)
    return loss[has_negative].mean()


class ViewEncoding(NamedTuple):
    """What the contrastive terms need from one view (levels shallow to deep).

    ``teacher_features`` are frozen features (position matching and reconstruction targets),
    ``projected_features`` the trainable features the local term acts on, ``embedding`` the
    ``(B, D)`` global embedding (pooled bottleneck output) the global term acts on.
    """

    teacher_features: list[Tensor]
    projected_features: list[Tensor]
    embedding: Tensor


class ContrastiveLosses(NamedTuple):
    """The weighted total and its two unweighted terms."""

    total: Tensor
    global_loss: Tensor
    local_loss: Tensor


class ClassAwareContrastiveLoss(nn.Module):
    """Global SupCon + local dense contrastive loss, ``l1 * L_global + l2 * L_local`` (paper Sec. 3.3).

    Args:
        temperature: ``tau`` of both terms (code: 0.05).
        global_weight: ``l1`` (code: 1). ``0`` skips the term.
        local_weight: ``l2`` (code: 1). ``0`` skips the term.
        local_negatives: ``"all"`` other-class images of the batch (ours) or ``"one"`` (code).

    """

    def __init__(
        self,
        temperature: float = 0.05,
        global_weight: float = 1.0,
        local_weight: float = 1.0,
        local_negatives: LocalNegatives = "all",
    ) -> None:
        super().__init__()
        if temperature <= 0:
            msg = f"`temperature` must be positive, got {temperature}."
            raise ValueError(msg)
        if global_weight < 0 or local_weight < 0:
            msg = f"Loss weights must be >= 0, got global_weight={global_weight}, local_weight={local_weight}."
            raise ValueError(msg)
        if local_negatives not in {"all", "one"}:
            msg = f"`local_negatives` must be 'all' or 'one', got {local_negatives!r}."
            raise ValueError(msg)
        self.temperature = temperature
        self.global_weight = global_weight
        self.local_weight = local_weight
        self.local_negatives: LocalNegatives = local_negatives

    @property
    def enabled(self) -> bool:
        """Whether any term has a positive weight (else the augmented view need not be computed)."""
        return self.global_weight > 0 or self.local_weight > 0

    def compare_views(self, labels: Tensor, original: ViewEncoding, augmented: ViewEncoding) -> ContrastiveLosses:
        """:meth:`forward` on two :class:`ViewEncoding` of the same images."""
        return self(
            labels,
            original.embedding,
            augmented.embedding,
            original.projected_features,
            augmented.projected_features,
            original.teacher_features,
            augmented.teacher_features,
        )

    def forward(
        self,
        labels: Tensor,
        embeddings: Tensor,
        augmented_embeddings: Tensor,
        features: Sequence[Tensor],
        augmented_features: Sequence[Tensor],
        matching_features: Sequence[Tensor],
        augmented_matching_features: Sequence[Tensor],
    ) -> ContrastiveLosses:
        """Compute both terms on the (DDP-global) batch.

        A batch of one class makes the global term instance discrimination (own view the only positive).

        Args:
            labels: ``(B,)`` class per image (dataset ids or pseudo labels).
            embeddings: ``(B, D)`` global embeddings of the original view.
            augmented_embeddings: ``(B, D)`` global embeddings of the augmented view.
            features: per level ``(B, C, H, W)`` trainable (projected) features of the original view.
            augmented_features: the same for the augmented view.
            matching_features: per level frozen features of the original view (position matching).
            augmented_matching_features: the same for the augmented view.

        """
        all_labels = gather_no_grad(labels)
        zero = embeddings.sum() * 0.0
        global_loss = zero
        if self.global_weight > 0:
            joint = torch.cat([gather_with_grad(embeddings), gather_with_grad(augmented_embeddings)])
            global_labels = all_labels
            if bool((all_labels == all_labels[0]).all()):  # one class: instance discrimination, not collapse
                global_labels = torch.arange(len(all_labels), device=all_labels.device)
            global_loss = supervised_contrastive_loss(
                joint, torch.cat([global_labels, global_labels]), self.temperature
            )
        local_loss = zero
        if self.local_weight > 0:
            levels = []
            for level, augmented, matching, augmented_matching in zip(
                features, augmented_features, matching_features, augmented_matching_features, strict=True
            ):
                matches = gather_no_grad(match_positions(matching, augmented_matching))
                levels.append(
                    dense_contrastive_loss(
                        gather_with_grad(level),
                        gather_with_grad(augmented),
                        matches,
                        all_labels,
                        self.temperature,
                        self.local_negatives,
                    )
                )
            local_loss = torch.stack(levels).mean()
        total = self.global_weight * global_loss + self.local_weight * local_loss
        return ContrastiveLosses(total, global_loss, local_loss)
