"""RLR loss (He et al., ECCV 2024, Sec. 3.4; official code): per level MSE + (1 - cos), summed over levels.

Per level: the mean squared error over all elements plus the mean over tokens of ``1 - cos``
between the reconstruction (from jittered tokens) and the clean pooled features, which are
detached (the backbone is frozen). The official code steps the optimiser once per level; the
levels' transformers share no parameter, so one step on the sum is the same update with Adam.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .torch_model import RlrOutput


class RlrLoss(nn.Module):
    """Sum over levels of ``MSE + mean(1 - cos)`` between reconstructed and clean features."""

    @staticmethod
    def level_losses(output: RlrOutput) -> list[Tensor]:
        """``MSE + mean(1 - cos)`` of each level, shallow to deep."""
        losses = []
        for target, reconstruction in zip(output.features, output.reconstructions, strict=True):
            target = target.detach()
            cosine = F.cosine_similarity(target, reconstruction, dim=1)
            losses.append(F.mse_loss(reconstruction, target) + (1 - cosine).mean())
        return losses

    def forward(self, output: RlrOutput) -> Tensor:
        """Loss of one training batch."""
        return torch.stack(self.level_losses(output)).sum()
