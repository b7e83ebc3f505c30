"""Reverse Distillation's trainable student (fusion bottleneck + mirrored decoder), sized for any backbone."""

from __future__ import annotations

from collections.abc import Sequence

from .blocks import reverse_distillation_blocks
from .bottleneck import MultiScaleFusionBottleneck
from .decoder import FeatureDecoder


def build_reverse_distillation_student(
    channels: Sequence[int],
    reductions: Sequence[int],
    decoder_activation: str = "relu",
    num_heads_sets: int = 1,
) -> tuple[MultiScaleFusionBottleneck, FeatureDecoder]:
    """RD's trainable student for a backbone: fusion bottleneck and mirrored decoder (Deng & Li, CVPR 2022, Sec. 3).

    The block layout follows :func:`reverse_distillation_blocks`; ``num_heads_sets`` output head sets
    share one decoder (ReContrast uses two, Sec. 3.2).
    """
    blocks = reverse_distillation_blocks(channels)
    bottleneck = MultiScaleFusionBottleneck(
        channels,
        reductions,
        block=blocks.block,
        num_blocks=blocks.bottleneck_blocks,
        width_ratio=blocks.width_ratio,
        activation="relu",
    )
    decoder = FeatureDecoder(
        channels,
        reductions,
        in_channels=bottleneck.out_channels,
        in_reduction=bottleneck.out_reduction,
        block=blocks.block,
        num_blocks=blocks.decoder_blocks,
        width_ratio=blocks.width_ratio,
        activation=decoder_activation,
        num_heads_sets=num_heads_sets,
    )
    return bottleneck, decoder
