"""Residual blocks shared by the fusion bottleneck and the mirrored decoder.

The blocks follow ResNet's basic (two 3x3 convolutions) and bottleneck (1x1-3x3-1x1) designs,
as Reverse Distillation's one-class bottleneck and decoder do (Deng & Li, CVPR 2022, Sec. 3.2),
with three generalisations: any input/output width, down-sampling by a strided 3x3 convolution or
up-sampling by a transposed convolution of any integer factor, and a configurable activation
(ReContrast's decoder uses GELU, NeurIPS 2023, Sec. 4.1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

from torch import Tensor, nn

BlockType = Literal["basic", "bottleneck"]
Activation = Literal["relu", "gelu"]


def make_activation(name: str) -> nn.Module:
    """Return a new activation module: ``"relu"`` or ``"gelu"``."""
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "gelu":
        return nn.GELU()
    msg = f"Unknown activation {name!r}; expected 'relu' or 'gelu'."
    raise ValueError(msg)


def _spatial_conv(in_channels: int, out_channels: int, stride: int, upsample: int) -> nn.Module:
    if upsample > 1:
        return nn.ConvTranspose2d(in_channels, out_channels, kernel_size=upsample, stride=upsample, bias=False)
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class ResidualBlock(nn.Module):
    """ResNet-style residual block that may down- or up-sample.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        block: ``"basic"`` (3x3, 3x3) or ``"bottleneck"`` (1x1, 3x3, 1x1).
        stride: down-sampling factor of the 3x3 convolution (1 or 2).
        upsample: up-sampling factor; the 3x3 convolution becomes a transposed convolution with
            kernel and stride ``upsample`` (RD's decoder uses 2).
        width: inner width of a bottleneck block; defaults to ``out_channels // 4``.
        activation: ``"relu"`` or ``"gelu"``.

    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        block: BlockType = "basic",
        stride: int = 1,
        upsample: int = 1,
        width: int | None = None,
        activation: Activation = "relu",
    ) -> None:
        super().__init__()
        if stride > 1 and upsample > 1:
            msg = "A block either down-samples (stride) or up-samples (upsample), not both."
            raise ValueError(msg)
        if block == "basic":
            self.body = nn.Sequential(
                _spatial_conv(in_channels, out_channels, stride, upsample),
                nn.BatchNorm2d(out_channels),
                make_activation(activation),
                nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        elif block == "bottleneck":
            width = width or max(1, out_channels // 4)
            self.body = nn.Sequential(
                nn.Conv2d(in_channels, width, kernel_size=1, bias=False),
                nn.BatchNorm2d(width),
                make_activation(activation),
                _spatial_conv(width, width, stride, upsample),
                nn.BatchNorm2d(width),
                make_activation(activation),
                nn.Conv2d(width, out_channels, kernel_size=1, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            msg = f"Unknown block type {block!r}; expected 'basic' or 'bottleneck'."
            raise ValueError(msg)

        if upsample > 1:
            self.shortcut: nn.Module = nn.Sequential(
                nn.ConvTranspose2d(in_channels, out_channels, kernel_size=upsample, stride=upsample, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        elif stride > 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()
        self.activation = make_activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        """Return ``activation(body(x) + shortcut(x))``."""
        return self.activation(self.body(x) + self.shortcut(x))


def make_stage(
    in_channels: int,
    out_channels: int,
    num_blocks: int,
    block: BlockType = "basic",
    stride: int = 1,
    upsample: int = 1,
    width_ratio: float = 0.5,
    activation: Activation = "relu",
) -> nn.Sequential:
    """Build a stage: one (re-sampling) block ``in -> out``, then ``num_blocks - 1`` blocks ``out -> out``.

    ``width_ratio`` sets a bottleneck block's inner width as a fraction of ``out_channels``
    (0.5 reproduces Wide-ResNet-50-2's RD decoder, 0.25 ResNet-50's).
    """
    if num_blocks < 1:
        msg = f"A stage needs at least one block, got {num_blocks}."
        raise ValueError(msg)
    width = max(1, round(out_channels * width_ratio))
    blocks = [ResidualBlock(in_channels, out_channels, block, stride, upsample, width, activation)]
    blocks += [
        ResidualBlock(out_channels, out_channels, block, width=width, activation=activation)
        for _ in range(num_blocks - 1)
    ]
    return nn.Sequential(*blocks)


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal (fan-out) convolutions and unit/zero norm layers, as RD initialises its bottleneck/decoder."""
    for submodule in module.modules():
        if isinstance(submodule, nn.Conv2d):
            nn.init.kaiming_normal_(submodule.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(submodule, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.constant_(submodule.weight, 1)
            nn.init.constant_(submodule.bias, 0)


class BlockConfig(NamedTuple):
    """Block layout of a fusion bottleneck and decoder pair."""

    block: BlockType
    bottleneck_blocks: int
    decoder_blocks: tuple[int, ...]  # per level, shallow to deep
    width_ratio: float


def reverse_distillation_blocks(channels: Sequence[int]) -> BlockConfig:
    """Block layout of RD's bottleneck and decoder, generalised from the backbone's channels.

    Wide channels (deepest level >= 1024, the ResNet-50 family) get bottleneck blocks, 3 in the
    fusion stage and 6/4/3 per decoder level from shallow to deep, inner width half the output
    (as RD's ``de_wide_resnet50_2``). Narrower backbones (ResNet-18/34, EfficientNet,
    MobileNet...) get basic blocks, 2 per stage (as RD's ``de_resnet18``).
    """
    num_levels = len(channels)
    if channels[-1] >= 1024:
        deep_to_shallow = [3, 4, 6] + [6] * max(0, num_levels - 3)
        return BlockConfig("bottleneck", 3, tuple(reversed(deep_to_shallow[:num_levels])), 0.5)
    return BlockConfig("basic", 2, (2,) * num_levels, 0.5)
