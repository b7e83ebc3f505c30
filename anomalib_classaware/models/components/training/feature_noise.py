"""Feature noise used in training by the reconstruction models (never at inference).

- :func:`feature_jitter`: UniAD's feature jitter (You et al., NeurIPS 2022, Sec. 3.4), used by RLR
  and MINT-AD: with probability ``probability`` per call, add Gaussian noise whose standard
  deviation at each token is ``scale * ||token|| / C``.
- :func:`position_noise`: the class-aware contrastive model's feature noise (Fan et al., arXiv
  2412.04769, code): with probability ``batch_probability`` per call, add ``N(0, std^2)`` noise
  to a random ``position_fraction`` of the spatial positions of a ``(B, C, H, W)`` map.

Both return the input unchanged when ``scale``/``std`` or the probability is zero, and both
accept an optional ``torch.Generator`` so that tests are deterministic.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _draw(generator: torch.Generator | None) -> float:
    return float(torch.rand((), generator=generator))


def feature_jitter(
    features: Tensor,
    scale: float,
    probability: float = 1.0,
    channel_dim: int = -1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """UniAD feature jitter: ``x + eps``, ``eps ~ N(0, (scale * ||x||_2 / C)^2)`` per token.

    Args:
        features: tokens or maps; ``channel_dim`` holds the ``C`` channels.
        scale: jitter scale (UniAD: 20; RLR: 4).
        probability: chance that this call adds noise at all.
        channel_dim: the channel dimension (``-1`` for ``(..., C)`` tokens, ``1`` for ``(B, C, H, W)``).
        generator: optional random generator (the noise is drawn on CPU and moved to the device).

    """
    if scale <= 0 or probability <= 0 or (probability < 1 and _draw(generator) >= probability):
        return features
    channels = features.shape[channel_dim]
    norms = features.detach().norm(dim=channel_dim, keepdim=True) / channels
    noise = torch.randn(features.shape, generator=generator, dtype=features.dtype).to(features.device)
    return features + noise * norms * scale


def position_noise(
    features: Tensor,
    std: float = 1.0,
    position_fraction: float = 0.5,
    batch_probability: float = 0.5,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Add ``N(0, std^2)`` noise to a random ``position_fraction`` of the positions of ``(B, C, H, W)`` maps.

    With probability ``1 - batch_probability`` the call returns ``features`` unchanged. The
    positions are drawn independently per image; all channels of a chosen position get noise.
    """
    if std <= 0 or position_fraction <= 0 or batch_probability <= 0:
        return features
    if batch_probability < 1 and _draw(generator) >= batch_probability:
        return features
    batch, channels, height, width = features.shape
    chosen = torch.rand((batch, 1, height, width), generator=generator) < position_fraction
    noise = torch.randn((batch, channels, height, width), generator=generator, dtype=features.dtype) * std
    return features + (noise * chosen).to(features.device)
