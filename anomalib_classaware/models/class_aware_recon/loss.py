"""Loss of the class-aware contrastive reconstruction model (Fan et al., arXiv 2412.04769, Sec. 3.3).

``L = L_rec + l1 * L_global + l2 * L_local``: ``L_rec`` is Reverse Distillation's pixel cosine loss
summed over levels (teacher features detached); the contrastive terms come from the shared
:class:`~anomalib_classaware.models.components.training.contrastive_losses.ClassAwareContrastiveLoss`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from torch import Tensor, nn

from anomalib_classaware.models.components import pixel_cosine_loss
from anomalib_classaware.models.components.training.contrastive_losses import (
    ClassAwareContrastiveLoss,
    ViewEncoding,
)

from .torch_model import ClassAwareReconOutput


class ClassAwareReconLosses(NamedTuple):
    """Total loss and its unweighted parts."""

    total: Tensor
    reconstruction: Tensor
    global_contrastive: Tensor
    local_contrastive: Tensor


class ClassAwareReconLoss(nn.Module):
    """Reconstruction + class-aware contrastive loss.

    Args:
        *args: the arguments of :class:`ClassAwareContrastiveLoss` (``temperature``, ``global_weight``,
            ``local_weight``, ``local_negatives``).
        **kwargs: the same, by name.

    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.contrastive = ClassAwareContrastiveLoss(*args, **kwargs)

    def forward(
        self, output: ClassAwareReconOutput, augmented: ViewEncoding | None, labels: Tensor
    ) -> ClassAwareReconLosses:
        """Combine the terms; ``augmented`` may be ``None`` only when both contrastive weights are zero."""
        reconstruction = pixel_cosine_loss(output.view.teacher_features, output.reconstructions)
        if not self.contrastive.enabled:
            zero = reconstruction.detach() * 0.0
            return ClassAwareReconLosses(reconstruction, reconstruction, zero, zero)
        if augmented is None:
            msg = "The contrastive terms need the augmented view's encoding."
            raise ValueError(msg)
        contrastive = self.contrastive.compare_views(labels, output.view, augmented)
        return ClassAwareReconLosses(
            reconstruction + contrastive.total, reconstruction, contrastive.global_loss, contrastive.local_loss
        )
