"""MINT-AD loss: ``w_rec * L_MSE + w_ce * L_CE + w_prior * L_Prior`` (arXiv 2403.14213, abstract).

The paper names the three terms; their forms and default weights are ours:

- ``L_MSE``: mean squared error between the backbone features (detached) and their
  reconstruction, as UniAD's loss (You et al., NeurIPS 2022, Sec. 3.5).
- ``L_CE``: cross-entropy of the classifier logits against the category ids.
- ``L_Prior``: KL divergence of each class-embedding Gaussian ``N(mu_k, diag sigma_k^2)`` to the
  unit Gaussian prior, averaged over classes and dimensions:
  ``0.5 * mean(mu^2 + sigma^2 - 1 - log sigma^2)``; exactly zero at ``mu = 0, log sigma^2 = 0``.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn
from torch.nn import functional as F

from .torch_model import MintAdOutput


def prior_kl(mean: Tensor, log_var: Tensor) -> Tensor:
    """Mean over rows and dimensions of ``KL(N(mean, diag exp(log_var)) || N(0, I))``."""
    return 0.5 * (mean.pow(2) + log_var.exp() - 1 - log_var).mean()


class MintAdLossTerms(NamedTuple):
    """The weighted total and the three unweighted terms."""

    total: Tensor
    reconstruction: Tensor
    classification: Tensor
    prior: Tensor


class MintAdLoss(nn.Module):
    """Weighted sum of the reconstruction, classification and prior losses.

    Args:
        reconstruction_weight: weight of ``L_MSE``.
        classification_weight: weight of ``L_CE``.
        prior_weight: weight of ``L_Prior``.

    """

    def __init__(
        self,
        reconstruction_weight: float = 1.0,
        classification_weight: float = 1.0,
        prior_weight: float = 0.01,
    ) -> None:
        super().__init__()
        weights = {"reconstruction": reconstruction_weight, "classification": classification_weight}
        weights["prior"] = prior_weight
        for name, weight in weights.items():
            if weight < 0:
                msg = f"The {name} loss weight must be >= 0, got {weight}."
                raise ValueError(msg)
        self.reconstruction_weight = float(reconstruction_weight)
        self.classification_weight = float(classification_weight)
        self.prior_weight = float(prior_weight)

    def forward(self, output: MintAdOutput, category_ids: Tensor) -> MintAdLossTerms:
        """Loss terms of one training batch; ``category_ids`` are the ``(B,)`` class targets."""
        reconstruction = F.mse_loss(output.reconstruction, output.features.detach())
        classification = F.cross_entropy(output.class_logits, category_ids)
        prior = prior_kl(output.embedding_mean, output.embedding_log_var)
        total = (
            self.reconstruction_weight * reconstruction
            + self.classification_weight * classification
            + self.prior_weight * prior
        )
        return MintAdLossTerms(total, reconstruction, classification, prior)
