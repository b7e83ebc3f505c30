"""Mirrored feature decoder with optional sets of 1x1 output heads.

Reverse Distillation's student decoder (Deng & Li, CVPR 2022, Sec. 3.2) mirrors the encoder:
from the one-class embedding it up-samples level by level and returns one feature map per
encoder level. ReContrast (Guo et al., NeurIPS 2023, Sec. 3.2) shares one decoder between two
encoders and gives it two sets of 1x1 output convolutions per level, one per reconstruction
direction, and uses GELU instead of ReLU. This module builds both from the backbone's
``feature_info`` (channels, reductions) instead of ResNet's fixed widths.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torch.nn import functional as F

from .blocks import Activation, BlockType, init_weights, make_stage


class FeatureDecoder(nn.Module):
    """Decode an embedding into one feature map per encoder level.

    Stage ``i`` (deepest first) up-samples the previous output by ``reduction[i+1] / reduction[i]``
    with a transposed convolution (the embedding's reduction for the deepest level) and outputs
    ``channels[i]`` channels; ``num_heads_sets`` sets of 1x1 convolutions (with bias) then map
    each level's shared feature to that set's reconstruction.

    Args:
        channels: channels of the encoder levels, shallow to deep.
        reductions: strides of the encoder levels, shallow to deep.
        in_channels: channels of the embedding; defaults to ``2 * channels[-1]``.
        in_reduction: stride of the embedding; defaults to ``2 * reductions[-1]``.
        block: residual block type.
        num_blocks: blocks per stage, one int or one per level (shallow to deep).
        width_ratio: inner width of bottleneck blocks as a fraction of the stage's output channels.
        activation: ``"relu"`` (RD) or ``"gelu"`` (ReContrast).
        num_heads_sets: sets of output heads (1 for RD, 2 for ReContrast).

    """

    def __init__(
        self,
        channels: Sequence[int],
        reductions: Sequence[int],
        in_channels: int | None = None,
        in_reduction: int | None = None,
        block: BlockType = "basic",
        num_blocks: int | Sequence[int] = 2,
        width_ratio: float = 0.5,
        activation: Activation = "relu",
        num_heads_sets: int = 1,
    ) -> None:
        super().__init__()
        if len(channels) != len(reductions) or not channels:
            msg = f"channels {list(channels)} and reductions {list(reductions)} must be non-empty and equally long."
            raise ValueError(msg)
        if num_heads_sets < 1:
            msg = f"num_heads_sets must be >= 1, got {num_heads_sets}."
            raise ValueError(msg)
        blocks = [int(num_blocks)] * len(channels) if isinstance(num_blocks, int) else [int(n) for n in num_blocks]
        if len(blocks) != len(channels):
            msg = f"num_blocks {blocks} must give one count per level ({len(channels)} levels)."
            raise ValueError(msg)

        self.channels = tuple(int(c) for c in channels)
        self.num_heads_sets = num_heads_sets
        previous_channels = int(in_channels or 2 * channels[-1])
        previous_reduction = int(in_reduction or 2 * reductions[-1])
        stages: list[nn.Module] = []
        for level_channels, level_reduction, level_blocks in reversed(
            list(zip(self.channels, reductions, blocks, strict=True)),
        ):
            factor = previous_reduction // int(level_reduction)
            if factor < 1 or factor * int(level_reduction) != previous_reduction:
                msg = f"Cannot up-sample from reduction {previous_reduction} to {level_reduction} by an integer factor."
                raise ValueError(msg)
            stages.append(
                make_stage(
                    previous_channels,
                    level_channels,
                    level_blocks,
                    block=block,
                    upsample=factor,
                    width_ratio=width_ratio,
                    activation=activation,
                ),
            )
            previous_channels, previous_reduction = level_channels, int(level_reduction)
        self.stages = nn.ModuleList(reversed(stages))  # indexed by level, shallow to deep
        self.heads = nn.ModuleList(
            nn.ModuleList(nn.Conv2d(c, c, kernel_size=1) for c in self.channels) for _ in range(num_heads_sets)
        )
        init_weights(self)

    def forward_features(self, embedding: Tensor, output_sizes: Sequence[Sequence[int]] | None = None) -> list[Tensor]:
        """Return the shared decoder feature of each level (shallow to deep), before the heads.

        Args:
            embedding: bottleneck output.
            output_sizes: exact ``(H, W)`` of each level's target; when an up-sampled map differs
                (inputs that are not a multiple of the total stride) it is resized bilinearly
                before the stage's remaining blocks.

        """
        outputs: list[Tensor] = [embedding] * len(self.stages)
        x = embedding
        for level in reversed(range(len(self.stages))):
            stage = self.stages[level]
            x = stage[0](x)
            if output_sizes is not None and tuple(x.shape[-2:]) != tuple(output_sizes[level]):
                x = F.interpolate(x, size=tuple(output_sizes[level]), mode="bilinear", align_corners=False)
            for block in stage[1:]:
                x = block(x)
            outputs[level] = x
        return outputs

    def apply_heads(self, features: Sequence[Tensor], head_set: int = 0) -> list[Tensor]:
        """Apply head set ``head_set`` to the shared level features."""
        return [head(feature) for head, feature in zip(self.heads[head_set], features, strict=True)]

    def forward(self, embedding: Tensor, output_sizes: Sequence[Sequence[int]] | None = None) -> list[list[Tensor]]:
        """Decode; returns ``[head_set][level]`` feature maps (levels shallow to deep)."""
        features = self.forward_features(embedding, output_sizes)
        return [self.apply_heads(features, head_set) for head_set in range(self.num_heads_sets)]
