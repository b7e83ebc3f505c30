"""Reverse Distillation's trainable student (fusion bottleneck + mirrored decoder), sized for any backbone.

:func:`frozen_teacher_and_student` builds the whole RD network: the frozen timm teacher and the student
sized from its ``feature_info`` (ReverseDistillationModel, ReContrastModel; ClassAwareReconModel
builds its projection layers between the two, so it calls the pieces itself).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import nn

from .backbone import create_feature_extractor, get_feature_info
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

    The block layout follows :func:`reverse_distillation_blocks` (one block type and width ratio for both);
    ``num_heads_sets`` output head sets share one decoder (ReContrast uses two, Sec. 3.2).
    """
    blocks = reverse_distillation_blocks(channels)
    layout = {"block": blocks.block, "width_ratio": blocks.width_ratio}
    bottleneck = MultiScaleFusionBottleneck(
        channels, reductions, num_blocks=blocks.bottleneck_blocks, activation="relu", **layout
    )
    decoder = FeatureDecoder(
        channels,
        reductions,
        in_channels=bottleneck.out_channels,
        in_reduction=bottleneck.out_reduction,
        num_blocks=blocks.decoder_blocks,
        activation=decoder_activation,
        num_heads_sets=num_heads_sets,
        **layout,
    )
    return bottleneck, decoder


def frozen_teacher_and_student(
    backbone: str,
    layers: Sequence[int],
    pre_trained: bool = True,
    weights_path: str | Path | None = None,
    decoder_activation: str = "relu",
    num_heads_sets: int = 1,
) -> tuple[nn.Module, MultiScaleFusionBottleneck, FeatureDecoder]:
    """RD's network: the frozen timm teacher (no gradients) and :func:`build_reverse_distillation_student` for it.

    The teacher must run in eval mode (see :class:`~.frozen_encoders.EvalModeEncoders`).
    """
    teacher = create_feature_extractor(backbone, layers, pre_trained, weights_path).requires_grad_(False)
    channels, reductions = get_feature_info(teacher)
    return (teacher, *build_reverse_distillation_student(channels, reductions, decoder_activation, num_heads_sets))
