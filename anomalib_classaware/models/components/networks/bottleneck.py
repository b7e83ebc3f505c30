"""Multi-scale fusion bottleneck (Reverse Distillation's one-class bottleneck embedding, OCBE).

Deng & Li, "Anomaly Detection via Reverse Distillation from One-Class Embedding", CVPR 2022,
Sec. 3.3 (multi-scale feature fusion + one-class embedding); reused by ReContrast (NeurIPS 2023,
Sec. 3.1). Built from the backbone's ``feature_info`` instead of ResNet's fixed widths.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .blocks import Activation, BlockType, init_weights, make_activation, make_stage


class MultiScaleFusionBottleneck(nn.Module):
    """Fuse encoder levels at the deepest level's resolution and compress them into one embedding.

    Level ``i`` is brought to the deepest level's stride by a chain of stride-2 3x3 convolutions
    (+BN+activation); each step's width is that of the encoder level at the reached stride, so for
    ResNets this is exactly RD's ``conv1``/``conv2``/``conv3`` layout. The deepest level is used as
    it is. The concatenation goes through a residual stage that halves the resolution once more.

    Args:
        channels: channels of the encoder levels, shallow to deep.
        reductions: strides of the encoder levels, shallow to deep (powers of two).
        out_channels: embedding channels; defaults to twice the deepest level's (RD: 2048 for
            Wide-ResNet-50-2, 512 for ResNet-18).
        block: residual block type of the embedding stage.
        num_blocks: blocks in the embedding stage (RD: 3 bottleneck or 2 basic blocks).
        width_ratio: inner width of bottleneck blocks as a fraction of ``out_channels``.
        activation: ``"relu"`` (RD, ReContrast) or ``"gelu"``.

    Attributes:
        out_channels: embedding channels.
        out_reduction: embedding stride, twice the deepest level's.

    """

    def __init__(
        self,
        channels: Sequence[int],
        reductions: Sequence[int],
        out_channels: int | None = None,
        block: BlockType = "basic",
        num_blocks: int = 2,
        width_ratio: float = 0.5,
        activation: Activation = "relu",
    ) -> None:
        super().__init__()
        if len(channels) != len(reductions) or not channels:
            msg = f"channels {list(channels)} and reductions {list(reductions)} must be non-empty and equally long."
            raise ValueError(msg)
        deepest_channels, deepest_reduction = int(channels[-1]), int(reductions[-1])
        width_at = {int(r): int(c) for c, r in zip(channels, reductions, strict=True)}  # deepest wins on ties

        self.projections = nn.ModuleList()
        for index, (level_channels, level_reduction) in enumerate(zip(channels, reductions, strict=True)):
            steps = deepest_reduction // int(level_reduction)
            if steps < 1 or 2 ** round(math.log2(steps)) != steps:
                msg = f"Reduction {level_reduction} cannot reach the deepest reduction {deepest_reduction} by halving."
                raise ValueError(msg)
            if index == len(channels) - 1:
                self.projections.append(nn.Identity())
                continue
            layers: list[nn.Module] = []
            in_width, reduction = int(level_channels), int(level_reduction)
            if steps == 1:  # same stride as the deepest level: only adapt the width
                layers += [nn.Conv2d(in_width, deepest_channels, 3, padding=1, bias=False)]
                layers += [nn.BatchNorm2d(deepest_channels), make_activation(activation)]
            while reduction < deepest_reduction:
                reduction *= 2
                out_width = width_at.get(reduction, deepest_channels)
                layers += [nn.Conv2d(in_width, out_width, 3, stride=2, padding=1, bias=False)]
                layers += [nn.BatchNorm2d(out_width), make_activation(activation)]
                in_width = out_width
            self.projections.append(nn.Sequential(*layers))

        self.out_channels = int(out_channels or 2 * deepest_channels)
        self.out_reduction = 2 * deepest_reduction
        self.embedding = make_stage(
            deepest_channels * len(channels),
            self.out_channels,
            num_blocks,
            block=block,
            stride=2,
            width_ratio=width_ratio,
            activation=activation,
        )
        init_weights(self)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Fuse the encoder levels (shallow to deep) into the one-class embedding ``(B, out_channels, h, w)``."""
        target_size = features[-1].shape[-2:]
        fused = []
        for projection, feature in zip(self.projections, features, strict=True):
            projected = projection(feature)
            if projected.shape[-2:] != target_size:  # static shapes only: inputs not a multiple of the stride
                projected = F.interpolate(projected, size=target_size, mode="bilinear", align_corners=False)
            fused.append(projected)
        return self.embedding(torch.cat(fused, dim=1)).contiguous()
