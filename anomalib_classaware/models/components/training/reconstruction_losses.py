"""Feature-reconstruction losses.

- :func:`pixel_cosine_loss`: Reverse Distillation's loss (Deng & Li, CVPR 2022, eq. 2-3): mean
  over pixels of ``1 - cos`` between target and reconstruction, summed over levels.
- :func:`global_cosine_hard_mining_loss`: ReContrast's global cosine loss with hard mining
  (Guo et al., NeurIPS 2023, Sec. 3.3, eq. 4-5): ``1 - cos`` between whole flattened maps, with
  the gradient of "easy" points (per-point distance below ``mean + alpha * std``) multiplied by
  ``factor``; :func:`alpha_schedule` ramps ``alpha``.

Targets are always detached (stop-gradient): only the reconstruction receives gradients.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F


def _check_pairs(targets: Sequence[Tensor], reconstructions: Sequence[Tensor]) -> None:
    if len(targets) != len(reconstructions) or not targets:
        msg = f"Expected equally long non-empty lists, got {len(targets)} targets, {len(reconstructions)} maps."
        raise ValueError(msg)


def pixel_cosine_loss(targets: Sequence[Tensor], reconstructions: Sequence[Tensor]) -> Tensor:
    """RD loss: per level, the mean over batch and pixels of ``1 - cos`` over channels; summed over levels."""
    _check_pairs(targets, reconstructions)
    losses = [
        (1 - F.cosine_similarity(target.detach(), reconstruction, dim=1)).mean()
        for target, reconstruction in zip(targets, reconstructions, strict=True)
    ]
    return torch.stack(losses).sum()


def scale_easy_gradients(reconstruction: Tensor, easy: Tensor, factor: float) -> Tensor:
    """Return ``reconstruction`` unchanged in value, with its gradient multiplied by ``factor`` where ``easy``.

    Implements ReContrast's gradient hook ``grad[easy] *= factor`` without a hook:
    ``x * factor + x.detach() * (1 - factor)`` equals ``x`` and has gradient ``factor``.

    Args:
        reconstruction: ``(B, C, h, w)`` map.
        easy: boolean ``(B, 1, h, w)`` mask of points whose gradient is scaled.
        factor: gradient multiplier on easy points (0 drops them).

    """
    scaled = reconstruction * factor + reconstruction.detach() * (1 - factor)
    return torch.where(easy, scaled, reconstruction)


def global_cosine_hard_mining_loss(
    targets: Sequence[Tensor],
    reconstructions: Sequence[Tensor],
    alpha: float = 1.0,
    factor: float = 0.0,
) -> Tensor:
    """ReContrast's global cosine loss with hard mining, summed over levels.

    Per level: ``d = 1 - cos(target, reconstruction)`` per point over channels (no gradient);
    points with ``d < mean(d) + alpha * std(d)`` (statistics over the whole batch) have their
    gradient multiplied by ``factor``; the loss is the batch mean of ``1 - cos`` between the
    flattened target and reconstruction maps ("global cosine").

    Args:
        targets: target feature maps; detached (stop-gradient).
        reconstructions: reconstructed feature maps, same shapes.
        alpha: threshold in standard deviations above the mean distance.
        factor: gradient multiplier on easy points (ReContrast's code: 0).

    """
    _check_pairs(targets, reconstructions)
    losses = []
    for target, reconstruction in zip(targets, reconstructions, strict=True):
        target = target.detach()
        with torch.no_grad():
            distance = (1 - F.cosine_similarity(target, reconstruction, dim=1)).unsqueeze(1)
            threshold = distance.mean() + alpha * distance.flatten().std()
            easy = distance < threshold
        mined = scale_easy_gradients(reconstruction, easy, factor)
        cosine = F.cosine_similarity(target.flatten(1), mined.flatten(1), dim=1)
        losses.append((1 - cosine).mean())
    return torch.stack(losses).sum()


def alpha_schedule(
    step: int,
    total_steps: int,
    start: float = -3.0,
    end: float = 1.0,
    warmup_fraction: float = 0.1,
) -> float:
    """Return the hard-mining threshold ``alpha`` at ``step`` (ReContrast, Sec. 3.3: -3 to 1 over 10 %).

    ``alpha`` grows linearly from ``start`` to ``end`` over the first ``warmup_fraction`` of
    ``total_steps`` and stays at ``end`` afterwards.
    """
    ramp_steps = warmup_fraction * total_steps
    if ramp_steps <= 0:
        return float(end)
    progress = min(max(step / ramp_steps, 0.0), 1.0)
    return float(start + (end - start) * progress)
