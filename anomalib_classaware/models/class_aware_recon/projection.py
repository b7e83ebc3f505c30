"""Per-scale projection layer of the class-aware contrastive model (Fan et al., arXiv 2412.04769, Sec. 3.2).

Between the frozen teacher and the Reverse Distillation bottleneck, each level gets a small
trainable convolutional network ``C -> C/2 -> C/4 -> C/2 -> C`` of 3x3 convolutions (authors'
code). The contrastive losses act on its output, so the teacher stays frozen while the student's
input becomes class-aware. Ours: InstanceNorm + LeakyReLU after the first three convolutions,
the last one linear (the projected features stand in for teacher features, which take any sign).
"""

from __future__ import annotations

import itertools

from torch import nn


class ProjectionLayer(nn.Sequential):
    """``C -> C/2 -> C/4 -> C/2 -> C`` 3x3 convolutions (``C >= 4``), shape-preserving."""

    def __init__(self, channels: int, negative_slope: float = 0.2) -> None:
        if channels < 4:
            msg = f"ProjectionLayer needs at least 4 channels, got {channels}."
            raise ValueError(msg)
        widths = [channels, channels // 2, channels // 4, channels // 2, channels]
        layers: list[nn.Module] = []
        for index, (inputs, outputs) in enumerate(itertools.pairwise(widths)):
            layers.append(nn.Conv2d(inputs, outputs, kernel_size=3, padding=1, bias=index == len(widths) - 2))
            if index < len(widths) - 2:
                layers += [nn.InstanceNorm2d(outputs, affine=True), nn.LeakyReLU(negative_slope)]
        super().__init__(*layers)
