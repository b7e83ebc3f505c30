"""PyTorch model of RLR.

He, Jiang, Chen, Zhang, Li, Luo, Huang, Fan, "Learning Unified Reference Representation for
Unsupervised Multi-class Anomaly Detection", ECCV 2024 (https://arxiv.org/abs/2403.11561).

A frozen CNN gives feature maps at a few levels (official code: ``tf_efficientnet_b6`` levels 2
and 3, strides 8 and 16); each map gets a 3x3 stride-1 average pool and becomes ``H*W`` tokens.
One transformer per level reconstructs the tokens from a **learnable reference representation**
(``H*W`` tokens, Sec. 3.2). Every layer runs two attentions in parallel (Sec. 3.3):

- locality-constrained reference attention ``A_lc``: queries = input tokens, keys = values =
  reference tokens inside a local window around the query's position;
- masked learnable-key attention ``A_mlk``: queries = input tokens, keys = reference tokens,
  values = input tokens, with the query's own neighbourhood masked out;

``LayerNorm(2 * A_lc + A_mlk)`` is followed by a residual FFN and a second LayerNorm. There is no
residual from the layer input: the only path from an input token to the output of another
position is ``A_mlk``'s values, which never include a query's own neighbourhood, so the model
cannot learn the identity shortcut. In training the input tokens get UniAD feature jitter and
are reconstructed into the clean pooled features.

Anomaly map (official code): per level, the channel mean of the squared error plus
``1 - cos``, bilinearly up-sampled, averaged over levels, Gaussian blur sigma 4; score = max.

The reference and the attention masks have one size per level, fixed by ``input_size``: a model
accepts only images of that size (a clear error otherwise). anomalib's pre-processor resizes
every image to ``input_size``, so this never triggers through the Lightning module or the
exported graph; build one model per input size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from anomalib_classaware.data.dataclasses import ClassAwareInferenceBatch
from anomalib_classaware.models.components import (
    AnomalyMapGenerator,
    create_feature_extractor,
    feature_jitter,
    get_feature_info,
    neighbourhood_mask,
    sincos_positions,
)
from anomalib_classaware.models.components.networks.anomaly_map import ScoreReduction
from anomalib_classaware.models.components.networks.attention import MaskedAttention
from anomalib_classaware.models.components.networks.category_prototypes import CategoryPrototypes
from anomalib_classaware.models.components.networks.frozen_encoders import EvalModeEncoders


class RlrOutput(NamedTuple):
    """Training output of :class:`RlrModel`, one ``(B, C, h, w)`` map per level, shallow to deep.

    ``reconstructions[i]`` (from the jittered tokens) reconstructs ``features[i]`` (the clean,
    pooled backbone features).
    """

    features: list[Tensor]
    reconstructions: list[Tensor]


def default_window(height: int, width: int) -> int:
    """RLR's local window for an ``height x width`` grid: ``side // 8 + 3`` rounded up to odd, ``side = min(h, w)``.

    The official code hard-codes 5 at 16x16, 7 at 32x32 and 11 at 64x64 (256 px and 512 px inputs);
    this rule reproduces the three and extends them to other sizes (3 at 4x4, 5 at 8x8). The window
    is then reduced, if needed, so that the masked attention keeps at least one key per query
    (see :func:`largest_masked_window`).
    """
    window = min(height, width) // 8 + 3
    window += 1 - window % 2
    return min(window, largest_masked_window(height, width))


def largest_masked_window(height: int, width: int) -> int:
    """Largest odd window that leaves every query at least one key outside its neighbourhood.

    The query that is closest to every token is the central one; its farthest token is
    ``ceil((max(h, w) - 1) / 2)`` rows or columns away (Chebyshev distance), so the window radius
    must stay below that.

    Raises:
        ValueError: for a 1 x 1 grid (no key outside any window).

    """
    farthest = math.ceil((max(height, width) - 1) / 2)
    if farthest < 1:
        msg = (
            f"A {height} x {width} token grid is too small for RLR's masked attention (no token lies outside a "
            "query's neighbourhood): use a larger input_size or shallower layers."
        )
        raise ValueError(msg)
    return 2 * (farthest - 1) + 1


class FeedForward(nn.Sequential):
    """Transformer FFN: ``Linear -> GELU -> Linear``."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__(nn.Linear(dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, dim))


class RlrLayer(nn.Module):
    """One RLR layer: ``x = LN(w * A_lc + A_mlk)``, ``out = LN(x + FFN(x))`` (no residual from the input).

    Args:
        dim: token width ``d_model``.
        num_heads: attention heads.
        ffn_ratio: FFN hidden width as a multiple of ``dim``.
        reference_weight: weight ``w`` of the reference attention (official code: 2).

    """

    def __init__(self, dim: int, num_heads: int, ffn_ratio: float = 4.0, reference_weight: float = 2.0) -> None:
        super().__init__()
        self.reference_attention = MaskedAttention(dim, num_heads)  # A_lc
        self.masked_attention = MaskedAttention(dim, num_heads)  # A_mlk
        self.reference_weight = float(reference_weight)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, int(dim * ffn_ratio))
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, tokens: Tensor, reference: Tensor, window_mask: Tensor) -> Tensor:
        """Tokens ``(B, L, d)``, embedded reference ``(1, L, d)``, window mask ``(L, L)`` (``True`` inside)."""
        local = self.reference_attention(tokens, reference, reference, window_mask)
        masked = self.masked_attention(tokens, reference, tokens, ~window_mask)
        attended = self.norm1(self.reference_weight * local + masked)
        return self.norm2(attended + self.ffn(attended))


class RlrTransformer(nn.Module):
    """Reconstruction transformer of one level (Sec. 3.2-3.3).

    Input tokens and the learnable reference (``H*W`` tokens of the backbone's width, ``randn``
    initialised) have separate linear embeddings to ``dim`` plus the same fixed 2-D sin-cos
    positions; ``num_layers`` :class:`RlrLayer` s, a final LayerNorm and a linear projection back to
    the backbone's width.

    Args:
        channels: backbone channels at this level.
        grid_size: ``(H, W)`` of the token grid.
        dim: ``d_model`` (multiple of 4 and of ``num_heads``).
        num_layers: number of layers (official code: 3).
        num_heads: attention heads (official code: 8).
        ffn_ratio: FFN width multiple (official code: 4).
        window: side of the local window (odd).
        reference_weight: weight of the reference attention (official code: 2).

    """

    def __init__(
        self,
        channels: int,
        grid_size: Sequence[int],
        dim: int,
        num_layers: int = 3,
        num_heads: int = 8,
        ffn_ratio: float = 4.0,
        window: int = 5,
        reference_weight: float = 2.0,
    ) -> None:
        super().__init__()
        height, width = (int(side) for side in grid_size)
        self.grid_size = (height, width)
        self.window = int(window)
        mask = neighbourhood_mask(height, width, self.window)
        if not (~mask).any(dim=1).all():
            msg = (
                f"Window {self.window} covers the whole {height} x {width} token grid for some query, so the masked "
                f"attention would have no key; use a window of at most {largest_masked_window(height, width)}."
            )
            raise ValueError(msg)
        self.register_buffer("window_mask", mask, persistent=False)
        self.register_buffer("positions", sincos_positions(dim, height, width).unsqueeze(0), persistent=False)
        self.reference = nn.Parameter(torch.randn(1, height * width, channels))
        self.embedding = nn.Linear(channels, dim)
        self.reference_embedding = nn.Linear(channels, dim)
        self.layers = nn.ModuleList(
            RlrLayer(dim, num_heads, ffn_ratio=ffn_ratio, reference_weight=reference_weight) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.projection = nn.Linear(dim, channels)
        for embedding in (self.embedding, self.reference_embedding):  # official code: Kaiming normal, fan-in
            nn.init.kaiming_normal_(embedding.weight, mode="fan_in", nonlinearity="leaky_relu")

    def forward(self, tokens: Tensor) -> Tensor:
        """Reconstruct ``(B, H*W, C)`` tokens (row-major grid)."""
        hidden = self.embedding(tokens) + self.positions
        reference = self.reference_embedding(self.reference) + self.positions
        for layer in self.layers:
            hidden = layer(hidden, reference, self.window_mask)
        return self.projection(self.norm(hidden))


class RlrModel(EvalModeEncoders):
    """RLR: frozen backbone, 3x3 average pooling, one reference-reconstruction transformer per level.

    Args:
        backbone: timm CNN name (official code: ``"tf_efficientnet_b6"``).
        layers: timm ``out_indices`` of the reconstructed levels (official code: ``(2, 3)``,
            strides 8 and 16 for EfficientNets, MobileNets and ResNets).
        input_size: ``(H, W)`` of the model input; fixes the token grids, references and masks.
        pre_trained: load timm's pretrained weights into the backbone.
        weights_path: local weights file for the backbone (overrides ``pre_trained``).
        hidden_dims: ``d_model`` per level; ``None``: ``32 * stride`` (official: 256 at stride 8,
            512 at stride 16).
        num_layers: layers per transformer (official code: 3).
        num_heads: attention heads (official code: 8).
        ffn_ratio: FFN width multiple (official code: 4).
        window_sizes: local window side per level; ``None``: :func:`default_window` of each grid.
        reference_weight: weight of the reference attention in the sum (official code: 2).
        pool_size: side of the stride-1 average pooling of the features (official: 3; 1 disables).
        jitter_scale: UniAD feature-jitter scale in training (RLR: 4; 0 disables).
        jitter_probability: probability that a training batch is jittered (RLR: 1).
        score_reduction: ``"max"`` (official code) or ``"topk_mean"``.
        topk_ratio: fraction of pixels averaged by ``"topk_mean"``.
        blur_sigma: sigma of the Gaussian blur of the anomaly map (official code: 4).
        blur_kernel_size: blur kernel size; ``None`` uses anomalib's ``2 * int(4 * sigma + 0.5) + 1``
            (33 for sigma 4, the support of the official ``scipy.ndimage.gaussian_filter``).

    """

    eval_encoders = ("feature_extractor",)

    def __init__(
        self,
        backbone: str = "tf_efficientnet_b6",
        layers: Sequence[int] = (2, 3),
        input_size: Sequence[int] = (256, 256),
        pre_trained: bool = True,
        weights_path: str | Path | None = None,
        hidden_dims: Sequence[int] | None = None,
        num_layers: int = 3,
        num_heads: int = 8,
        ffn_ratio: float = 4.0,
        window_sizes: Sequence[int] | None = None,
        reference_weight: float = 2.0,
        pool_size: int = 3,
        jitter_scale: float = 4.0,
        jitter_probability: float = 1.0,
        score_reduction: ScoreReduction = "max",
        topk_ratio: float = 0.01,
        blur_sigma: float = 4.0,
        blur_kernel_size: int | None = None,
    ) -> None:
        super().__init__()
        if pool_size < 1 or pool_size % 2 == 0:
            msg = f"`pool_size` must be a positive odd integer (1 disables pooling), got {pool_size}."
            raise ValueError(msg)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.jitter_scale = float(jitter_scale)
        self.jitter_probability = float(jitter_probability)
        self.feature_extractor = create_feature_extractor(backbone, layers, pre_trained, weights_path)
        self.feature_extractor.requires_grad_(False)
        self.feature_extractor.eval()
        self.category_prototypes = CategoryPrototypes()
        self.pool = nn.AvgPool2d(pool_size, stride=1, padding=pool_size // 2) if pool_size > 1 else nn.Identity()

        channels, reductions = get_feature_info(self.feature_extractor)
        with torch.no_grad():  # exact grid sizes (padding conventions differ between networks)
            probe = self.feature_extractor(torch.zeros(1, 3, *self.input_size))
        self.grid_sizes = [(int(feature.shape[-2]), int(feature.shape[-1])) for feature in probe]
        dims = list(hidden_dims) if hidden_dims is not None else [32 * reduction for reduction in reductions]
        windows = list(window_sizes) if window_sizes is not None else [default_window(*g) for g in self.grid_sizes]
        if not len(dims) == len(windows) == len(channels):
            msg = (
                f"Expected one hidden dim and one window per level ({len(channels)} levels), got "
                f"hidden_dims={dims} and window_sizes={windows}."
            )
            raise ValueError(msg)
        self.transformers = nn.ModuleList(
            RlrTransformer(
                channels=channel,
                grid_size=grid,
                dim=int(dim),
                num_layers=num_layers,
                num_heads=num_heads,
                ffn_ratio=ffn_ratio,
                window=int(window),
                reference_weight=reference_weight,
            )
            for channel, grid, dim, window in zip(channels, self.grid_sizes, dims, windows, strict=True)
        )
        self.anomaly_map_generator = AnomalyMapGenerator(
            image_size=self.input_size,
            reduction="mean",
            sigma=blur_sigma,
            kernel_size=blur_kernel_size,
            mse_weight=1.0,
            score_reduction=score_reduction,
            topk_ratio=topk_ratio,
        )

    def extract_features(self, images: Tensor) -> list[Tensor]:
        """Frozen, pooled backbone features ``(B, C, h, w)`` per level (no graph)."""
        self.encoders_eval()
        with torch.no_grad():
            features = [self.pool(feature) for feature in self.feature_extractor(images)]
        for level, (feature, grid) in enumerate(zip(features, self.grid_sizes, strict=True)):
            if tuple(feature.shape[-2:]) != grid:
                msg = (
                    f"RLR was built for input_size {self.input_size} (level {level}: a {grid[0]} x {grid[1]} token "
                    f"grid, the size of its learnable reference) but got images of size {tuple(images.shape[-2:])} "
                    f"({feature.shape[-2]} x {feature.shape[-1]} tokens). Resize the images to {self.input_size} "
                    "(the model's pre-processor does) or build the model with another input_size."
                )
                raise ValueError(msg)
        return features

    def reconstruct(self, features: Sequence[Tensor], jitter: bool = False) -> list[Tensor]:
        """Reconstruct each level's ``(B, C, h, w)`` map from its (optionally jittered) tokens."""
        reconstructions = []
        for feature, transformer in zip(features, self.transformers, strict=True):
            batch, channels, height, width = feature.shape
            tokens = feature.flatten(2).transpose(1, 2)  # (B, h*w, C), row-major
            if jitter:
                tokens = feature_jitter(tokens, self.jitter_scale, self.jitter_probability)
            output = transformer(tokens)
            reconstructions.append(output.transpose(1, 2).reshape(batch, channels, height, width))
        return reconstructions

    def frozen_features(self, images: Tensor) -> list[Tensor]:
        """Frozen, pooled backbone features: what the predicted category is computed from."""
        return self.extract_features(images)

    def forward(self, images: Tensor) -> RlrOutput | ClassAwareInferenceBatch:
        """Training: :class:`RlrOutput`; eval: ``pred_score`` (B,), ``anomaly_map`` (B, 1, H, W), ``pred_category``."""
        features = self.extract_features(images)
        reconstructions = self.reconstruct(features, jitter=self.training)
        if self.training:
            return RlrOutput(features, reconstructions)
        anomaly_map, pred_score = self.anomaly_map_generator(features, reconstructions)
        pred_category = self.category_prototypes.predict(features)
        return ClassAwareInferenceBatch(pred_score=pred_score, anomaly_map=anomaly_map, pred_category=pred_category)
