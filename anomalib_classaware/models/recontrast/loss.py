"""ReContrast loss (Guo et al., NeurIPS 2023, Sec. 3.3, eq. 4-5).

``L = 0.5 * Lg(E_f, D_0(E_a)) + 0.5 * Lg(E_a, D_1(E_f))``: global cosine distance with hard
mining in both cross-reconstruction directions; targets are detached (stop-gradient), so the
trainable encoder learns only through the decoder path that starts from its own features.
"""

from __future__ import annotations

from torch import Tensor, nn

from anomalib_classaware.models.components import global_cosine_hard_mining_loss

from .torch_model import ReContrastOutput


class ReContrastLoss(nn.Module):
    """Average of the two directions' global cosine hard-mining losses.

    Args:
        factor: gradient multiplier on easy points (ReContrast's code: 0).

    """

    def __init__(self, factor: float = 0.0) -> None:
        super().__init__()
        self.factor = float(factor)

    def forward(self, output: ReContrastOutput, alpha: float = 1.0) -> Tensor:
        """Loss of one training batch; ``alpha`` is the hard-mining threshold of :func:`alpha_schedule`."""
        frozen_term = global_cosine_hard_mining_loss(
            output.frozen_features,
            output.frozen_reconstructions,
            alpha=alpha,
            factor=self.factor,
        )
        trainable_term = global_cosine_hard_mining_loss(
            output.trainable_features,
            output.trainable_reconstructions,
            alpha=alpha,
            factor=self.factor,
        )
        return 0.5 * frozen_term + 0.5 * trainable_term
