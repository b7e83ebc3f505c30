"""Anomaly maps and image scores from target/reconstructed feature pairs.

Per pair ``1 - cos`` over channels (RD, Deng & Li CVPR 2022, eq. 3; ReContrast NeurIPS 2023,
Sec. 3.3), optionally plus the channel-mean squared error (RLR, ECCV 2024), bilinearly
up-sampled to the input size, summed or averaged over pairs, blurred with a Gaussian
(sigma 4), and reduced to an image score by the maximum or the mean of the top-k pixels.

Export-safe: the output size and ``k`` are fixed Python ints computed at construction, there is
no branching on tensor values and no adaptive pooling.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .blur import SeparableGaussianBlur2d

MapReduction = Literal["sum", "mean"]
ScoreReduction = Literal["max", "topk_mean"]


def cosine_distance_map(target: Tensor, reconstruction: Tensor) -> Tensor:
    """Per-pixel ``1 - cos(target, reconstruction)`` over channels, shape ``(B, 1, h, w)``."""
    return (1 - F.cosine_similarity(target, reconstruction, dim=1)).unsqueeze(1)


class AnomalyMapGenerator(nn.Module):
    """Turn lists of (target, reconstruction) feature maps into an anomaly map and an image score.

    Args:
        image_size: ``(H, W)`` of the model input; the map is produced at this size.
        reduction: combine the per-pair maps by ``"sum"`` or ``"mean"``.
        sigma: standard deviation of the Gaussian blur (0 disables it).
        kernel_size: blur kernel size; defaults to anomalib's ``2 * int(4 * sigma + 0.5) + 1``.
        mse_weight: weight of the channel-mean squared error added to ``1 - cos`` (0: cosine only).
        score_reduction: image score = ``"max"`` of the map or ``"topk_mean"``, the mean of the
            ``topk_ratio`` highest pixels.
        topk_ratio: fraction of pixels averaged by ``"topk_mean"`` (at least one pixel).

    """

    def __init__(
        self,
        image_size: Sequence[int],
        reduction: MapReduction = "sum",
        sigma: float = 4.0,
        kernel_size: int | None = None,
        mse_weight: float = 0.0,
        score_reduction: ScoreReduction = "max",
        topk_ratio: float = 0.01,
    ) -> None:
        super().__init__()
        if reduction not in {"sum", "mean"}:
            msg = f"Unknown map reduction {reduction!r}; expected 'sum' or 'mean'."
            raise ValueError(msg)
        if score_reduction not in {"max", "topk_mean"}:
            msg = f"Unknown score reduction {score_reduction!r}; expected 'max' or 'topk_mean'."
            raise ValueError(msg)
        if not 0 < topk_ratio <= 1:
            msg = f"topk_ratio must be in (0, 1], got {topk_ratio}."
            raise ValueError(msg)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.reduction = reduction
        self.mse_weight = float(mse_weight)
        self.score_reduction = score_reduction
        self.topk_ratio = float(topk_ratio)
        self.topk = max(1, int(self.topk_ratio * self.image_size[0] * self.image_size[1]))
        self.blur: nn.Module = (
            SeparableGaussianBlur2d(float(sigma), channels=1, kernel_size=kernel_size) if sigma > 0 else nn.Identity()
        )

    def pair_map(self, target: Tensor, reconstruction: Tensor) -> Tensor:
        """Distance map of one pair at feature resolution, ``(B, 1, h, w)``."""
        distance = cosine_distance_map(target, reconstruction)
        if self.mse_weight:
            distance = distance + self.mse_weight * (target - reconstruction).pow(2).mean(dim=1, keepdim=True)
        return distance

    def level_maps(self, targets: Sequence[Tensor], reconstructions: Sequence[Tensor]) -> list[Tensor]:
        """Distance map of each pair at its feature resolution, ``(B, 1, h, w)`` each."""
        if len(targets) != len(reconstructions) or not targets:
            msg = f"Expected equally long non-empty lists, got {len(targets)} targets, {len(reconstructions)} maps."
            raise ValueError(msg)
        return [
            self.pair_map(target, reconstruction)
            for target, reconstruction in zip(targets, reconstructions, strict=True)
        ]

    def combine(self, level_maps: Sequence[Tensor]) -> Tensor:
        """Blurred anomaly map ``(B, 1, H, W)``: level maps up-sampled to the input size, summed or averaged."""
        anomaly_map: Tensor | None = None
        for level_map in level_maps:
            distance = F.interpolate(level_map, size=self.image_size, mode="bilinear", align_corners=True)
            anomaly_map = distance if anomaly_map is None else anomaly_map + distance
        if anomaly_map is None:
            msg = "Expected at least one level map."
            raise ValueError(msg)
        if self.reduction == "mean":
            anomaly_map = anomaly_map / len(level_maps)
        return self.blur(anomaly_map)

    def compute_anomaly_map(self, targets: Sequence[Tensor], reconstructions: Sequence[Tensor]) -> Tensor:
        """Blurred anomaly map ``(B, 1, H, W)`` from equally long lists of feature maps."""
        return self.combine(self.level_maps(targets, reconstructions))

    def from_level_maps(self, level_maps: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Return ``(anomaly_map (B, 1, H, W), pred_score (B,))`` from (possibly calibrated) level maps."""
        anomaly_map = self.combine(level_maps)
        return anomaly_map, self.compute_score(anomaly_map)

    def compute_score(self, anomaly_map: Tensor) -> Tensor:
        """Image scores ``(B,)``: maximum or mean of the top-k pixels of each map."""
        flat = anomaly_map.flatten(1)
        if self.score_reduction == "max":
            return flat.amax(dim=1)
        return torch.topk(flat, self.topk, dim=1).values.mean(dim=1)

    def forward(self, targets: Sequence[Tensor], reconstructions: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Return ``(anomaly_map (B, 1, H, W), pred_score (B,))``."""
        anomaly_map = self.compute_anomaly_map(targets, reconstructions)
        return anomaly_map, self.compute_score(anomaly_map)
