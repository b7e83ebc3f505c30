"""PyTorch model of MINT-AD.

Jiang, Chen, Nie, Liu, Liu, Wang, Zheng, "Toward Multi-class Anomaly Detection: Exploring
Class-aware Unified Model against Inter-class Interference", arXiv 2403.14213 (2024).

The paper (abstract) gives the idea: an implicit neural representation (INR) maps category and
position to class-aware query embeddings of a transformer decoder that reconstructs features;
training uses a reconstruction loss, a classification loss and a prior-probability loss, and
class labels are used in training only. No code is public, and the body of the paper could not
be read (see the Lightning module's docstring), so the rest is ours, built on UniAD
(You et al., NeurIPS 2022), the reconstruction transformer MINT-AD extends:

1. Frozen timm CNN; the chosen levels are resized to one grid at ``feature_stride`` (16) and
   concatenated (UniAD, Sec. 3.2), then (ours, default) standardised per channel with training
   statistics: these features are the reconstruction target.
2. Tokens: linear (1x1) projection to ``hidden_dim``; feature jitter in training (UniAD, Sec. 3.4).
3. Encoder: post-norm layers with neighbour-masked attention (UniAD's NME, Sec. 3.3), fixed 2-D
   sine-cosine positions.
4. Classifier: LayerNorm + linear on the mean of the encoder tokens -> class logits (L_CE). In
   training the encoder runs twice: on the jittered tokens for the reconstruction and on the clean
   tokens for the classifier (UniAD's jitter, scale 20, would otherwise train the classifier on
   inputs that look nothing like those it sees at inference).
5. Class embeddings: one diagonal Gaussian ``N(mu_k, diag exp(log_var_k))`` per class. Training:
   ``z = mu_y + exp(log_var_y / 2) * eps`` for the image's class ``y`` (reparameterisation).
   Inference: ``z = sum_k softmax(logits)_k * mu_k`` (no label needed) or ``mu_y`` when the true
   class is given (an evaluation ablation). L_Prior: KL of each class's Gaussian to ``N(0, I)``.
6. INR: MLP on ``[z, fourier_features(x, y)]`` -> one query per position and per decoder layer.
7. Decoder: UniAD's layer-wise query decoder (Sec. 3.3) with the INR queries instead of learned
   ones; LayerNorm and a linear back-projection to the backbone's channels.
8. Anomaly map: per-position L2 distance of features and reconstruction, up-sampled, blurred
   (sigma 4); image score: maximum.

``class_aware=False`` keeps everything but gives every image the same single embedding (the
ablation "queries from one shared embedding").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from anomalib_classaware.data.dataclasses import ClassAwareInferenceBatch
from anomalib_classaware.models.components import (
    create_feature_extractor,
    feature_jitter,
    fourier_features,
    get_feature_info,
    grid_coordinates,
    neighbourhood_mask,
    sincos_positions,
)
from anomalib_classaware.models.components.networks.anomaly_map import ScoreReduction
from anomalib_classaware.models.components.networks.frozen_encoders import EvalModeEncoders
from anomalib_classaware.models.components.networks.transformer import (
    LayerwiseQueryDecoderLayer,
    NeighbourMaskedEncoderLayer,
    check_attention_mask,
)
from anomalib_classaware.models.mint_ad.standardizer import RunningStandardizer

from .anomaly_map import L2AnomalyMapGenerator


class MintAdOutput(NamedTuple):
    """Training output of :class:`MintAdModel`.

    Attributes:
        features: ``(B, C, h, w)`` concatenated backbone features: the reconstruction target.
        reconstruction: ``(B, C, h, w)`` their reconstruction.
        class_logits: ``(B, K)`` classifier logits.
        embedding_mean: ``(K', E)`` means of the class-embedding Gaussians (``K' = 1`` without class awareness).
        embedding_log_var: ``(K', E)`` their log-variances.

    """

    features: Tensor
    reconstruction: Tensor
    class_logits: Tensor
    embedding_mean: Tensor
    embedding_log_var: Tensor


def resize_to_grid(feature: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize a ``(B, C, h, w)`` map to ``size``: average pooling for exact integer down-scaling, else bilinear.

    Sizes are Python ints at trace time, so the branch is export-safe.
    """
    height, width = int(feature.shape[-2]), int(feature.shape[-1])
    if (height, width) == size:
        return feature
    if height >= size[0] and width >= size[1] and height % size[0] == 0 and width % size[1] == 0:
        kernel = (height // size[0], width // size[1])
        return F.avg_pool2d(feature, kernel_size=kernel, stride=kernel)
    return F.interpolate(feature, size=size, mode="bilinear", align_corners=False)


class ClassEmbeddings(nn.Module):
    """One diagonal Gaussian per class: means ``(K, E)`` (init ``N(0, 1)``) and log-variances (init 0)."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.dim = int(dim)
        self.mean = nn.Parameter(torch.randn(num_classes, dim))
        self.log_var = nn.Parameter(torch.zeros(num_classes, dim))

    @property
    def num_classes(self) -> int:
        """Number of Gaussians (rows)."""
        return int(self.mean.shape[0])

    def sample(self, class_ids: Tensor) -> Tensor:
        """Reparameterised samples ``mu_y + sigma_y * eps``, ``(B, E)``."""
        mean, log_var = self.mean[class_ids], self.log_var[class_ids]
        return mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)

    def expected(self, weights: Tensor) -> Tensor:
        """``(B, K)`` class weights -> ``(B, E)`` weighted means."""
        return weights @ self.mean


class QueryINR(nn.Module):
    """Implicit neural representation of the decoder queries: ``(z, position) -> queries``.

    An MLP (GELU) on the concatenation of a class embedding ``z`` and the Fourier features of the
    cell-centre coordinates of each grid position; it outputs ``num_queries`` vectors of width
    ``query_dim`` per position (one per decoder layer).

    Args:
        grid_size: ``(h, w)`` token grid.
        embedding_dim: width ``E`` of ``z``.
        num_frequencies: Fourier frequencies ``2^k * pi``, ``k < F`` (``4 F`` position features).
        hidden_dim: MLP width.
        num_layers: number of linear layers (>= 2).
        query_dim: width of each query.
        num_queries: queries per position (decoder layers).

    """

    def __init__(
        self,
        grid_size: tuple[int, int],
        embedding_dim: int,
        num_frequencies: int,
        hidden_dim: int,
        num_layers: int,
        query_dim: int,
        num_queries: int,
    ) -> None:
        super().__init__()
        if num_layers < 2:
            msg = f"The INR needs at least 2 linear layers, got {num_layers}."
            raise ValueError(msg)
        self.num_queries = int(num_queries)
        self.query_dim = int(query_dim)
        positions = fourier_features(grid_coordinates(*grid_size), num_frequencies)
        self.register_buffer("positions", positions, persistent=False)  # (N, 4F)
        layers: list[nn.Module] = [nn.Linear(embedding_dim + positions.shape[1], hidden_dim), nn.GELU()]
        for _ in range(num_layers - 2):
            layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
        layers.append(nn.Linear(hidden_dim, num_queries * query_dim))
        self.mlp = nn.Sequential(*layers)

    def forward(self, embeddings: Tensor) -> Tensor:
        """``(B, E)`` embeddings -> ``(num_queries, B, N, query_dim)`` queries."""
        batch, tokens = embeddings.shape[0], self.positions.shape[0]
        inputs = torch.cat(
            [
                embeddings[:, None, :].expand(batch, tokens, embeddings.shape[1]),
                self.positions[None].expand(batch, tokens, self.positions.shape[1]),
            ],
            dim=-1,
        )
        queries = self.mlp(inputs).view(batch, tokens, self.num_queries, self.query_dim)
        return queries.permute(2, 0, 1, 3)


class MintAdModel(EvalModeEncoders):
    """MINT-AD: UniAD-style reconstruction transformer with class-aware INR queries.

    Args:
        backbone: timm CNN name (UniAD: ``"efficientnet_b4"``).
        layers: timm ``out_indices`` (UniAD: EfficientNet-B4 stages at strides 2-16 = ``(0, 1, 2, 3)``, 272 channels).
        input_size: ``(H, W)`` of the model input.
        pre_trained: load timm's pretrained weights.
        weights_path: local weights file of the full timm classifier (overrides ``pre_trained``).
        num_classes: number of classes ``K`` of the classifier (and of the embeddings if class-aware).
        class_aware: one embedding per class (MINT-AD) or one shared embedding (ablation).
        feature_stride: stride of the token grid; every level is resized to ``ceil(H / stride)``.
        hidden_dim: transformer width (multiple of 4 and of ``num_heads``).
        num_encoder_layers: encoder layers.
        num_decoder_layers: decoder layers.
        num_heads: attention heads.
        feedforward_dim: feed-forward width.
        dropout: transformer dropout.
        neighbour_window: side of the masked neighbourhood (odd; 0 disables the mask).
        jitter_scale: feature-jitter scale in training (0 disables it).
        jitter_probability: chance per batch that jitter is added.
        embedding_dim: class-embedding width ``E``.
        inr_hidden_dim: INR MLP width.
        inr_layers: INR linear layers.
        fourier_frequencies: Fourier frequencies of the INR's position input.
        standardize_features: standardise the target features per channel with training statistics
            (:class:`RunningStandardizer`); ``False`` reconstructs the raw features (UniAD).
        blur_sigma: Gaussian blur of the anomaly map (0 disables it).
        score_reduction: ``"max"`` or ``"topk_mean"``.
        topk_ratio: fraction of pixels averaged by ``"topk_mean"``.

    """

    eval_encoders = ("backbone",)

    def __init__(
        self,
        backbone: str = "efficientnet_b4",
        layers: Sequence[int] = (0, 1, 2, 3),
        input_size: Sequence[int] = (224, 224),
        pre_trained: bool = True,
        weights_path: str | Path | None = None,
        num_classes: int = 1,
        class_aware: bool = True,
        feature_stride: int = 16,
        hidden_dim: int = 256,
        num_encoder_layers: int = 4,
        num_decoder_layers: int = 4,
        num_heads: int = 8,
        feedforward_dim: int = 1024,
        dropout: float = 0.1,
        neighbour_window: int = 7,
        jitter_scale: float = 20.0,
        jitter_probability: float = 1.0,
        embedding_dim: int = 64,
        inr_hidden_dim: int = 256,
        inr_layers: int = 3,
        fourier_frequencies: int = 2,
        standardize_features: bool = True,
        blur_sigma: float = 4.0,
        score_reduction: ScoreReduction = "max",
        topk_ratio: float = 0.01,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            msg = f"`num_classes` must be >= 1, got {num_classes}."
            raise ValueError(msg)
        if hidden_dim % 4 or hidden_dim % num_heads:
            msg = f"`hidden_dim` ({hidden_dim}) must be a multiple of 4 and of `num_heads` ({num_heads})."
            raise ValueError(msg)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.grid_size = (
            math.ceil(self.input_size[0] / feature_stride),
            math.ceil(self.input_size[1] / feature_stride),
        )
        self.class_aware = bool(class_aware)
        self.jitter_scale = float(jitter_scale)
        self.jitter_probability = float(jitter_probability)

        self.backbone = create_feature_extractor(backbone, layers, pre_trained, weights_path).requires_grad_(False)
        self.feature_channels = sum(get_feature_info(self.backbone).channels)
        self.standardizer = RunningStandardizer(self.feature_channels) if standardize_features else nn.Identity()

        height, width = self.grid_size
        self.register_buffer("positions", sincos_positions(hidden_dim, height, width), persistent=False)
        allowed = ~neighbourhood_mask(height, width, neighbour_window) if neighbour_window > 0 else None
        if allowed is not None:
            grid = f"{neighbour_window}x{neighbour_window} neighbour mask on the {height}x{width} token grid"
            check_attention_mask(allowed, grid)
        self.register_buffer("attention_mask", allowed, persistent=False)  # True = may attend

        self.input_proj = nn.Linear(self.feature_channels, hidden_dim)
        self.encoder = nn.ModuleList(
            NeighbourMaskedEncoderLayer(hidden_dim, num_heads, feedforward_dim, dropout)
            for _ in range(num_encoder_layers)
        )
        self.decoder = nn.ModuleList(
            LayerwiseQueryDecoderLayer(hidden_dim, num_heads, feedforward_dim, dropout)
            for _ in range(num_decoder_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.output_proj = nn.Linear(hidden_dim, self.feature_channels)
        for module in (self.input_proj, self.encoder, self.decoder, self.output_proj):
            for parameter in module.parameters():
                if parameter.dim() > 1:
                    nn.init.xavier_uniform_(parameter)  # UniAD's initialiser

        self.class_norm = nn.LayerNorm(hidden_dim)
        self.class_head = nn.Linear(hidden_dim, num_classes)
        self.embeddings = ClassEmbeddings(num_classes if self.class_aware else 1, embedding_dim)
        self.inr = QueryINR(
            self.grid_size,
            embedding_dim=embedding_dim,
            num_frequencies=fourier_frequencies,
            hidden_dim=inr_hidden_dim,
            num_layers=inr_layers,
            query_dim=hidden_dim,
            num_queries=num_decoder_layers,
        )
        self.anomaly_map_generator = L2AnomalyMapGenerator(
            image_size=self.input_size,
            reduction="sum",
            sigma=blur_sigma,
            score_reduction=score_reduction,
            topk_ratio=topk_ratio,
        )
        self.train()

    @property
    def num_classes(self) -> int:
        """Number of classes of the classifier."""
        return int(self.class_head.out_features)

    def set_num_classes(self, num_classes: int) -> None:
        """Rebuild the classifier (and, if class-aware, the class embeddings) for ``num_classes`` classes.

        The new parameters are freshly initialised; call this before the optimiser is created.
        """
        if num_classes < 1:
            msg = f"`num_classes` must be >= 1, got {num_classes}."
            raise ValueError(msg)
        if num_classes == self.num_classes:
            return
        device = self.class_head.weight.device
        self.class_head = nn.Linear(self.class_head.in_features, num_classes).to(device)
        if self.class_aware:
            self.embeddings = ClassEmbeddings(num_classes, self.embeddings.dim).to(device)

    @torch.no_grad()
    def remap_classes(self, source: Sequence[int]) -> None:
        """Rebuild the class table with ``len(source)`` rows; row ``i`` copies old row ``source[i]`` (``-1``: fresh).

        Classifier rows and (if class-aware) class Gaussians of known classes are kept, new classes
        start from the initialisation. The parameters are new: call this before the optimiser is created.
        """
        if not source or any(index < -1 or index >= self.num_classes for index in source):
            msg = f"Invalid class remapping {list(source)} for {self.num_classes} classes."
            raise ValueError(msg)
        old_head, old_embeddings = self.class_head, self.embeddings
        device = old_head.weight.device
        self.class_head = nn.Linear(old_head.in_features, len(source)).to(device)
        if self.class_aware:
            self.embeddings = ClassEmbeddings(len(source), old_embeddings.dim).to(device)
        for row, index in enumerate(source):
            if index < 0:
                continue
            self.class_head.weight[row] = old_head.weight[index]
            self.class_head.bias[row] = old_head.bias[index]
            if self.class_aware:
                self.embeddings.mean[row] = old_embeddings.mean[index]
                self.embeddings.log_var[row] = old_embeddings.log_var[index]

    def extract(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` images -> ``(B, C, h, w)`` concatenated (and standardised) features on the token grid.

        In training mode the standardiser adds the batch to its statistics.
        """
        self.encoders_eval()
        levels = self.backbone(images)
        return self.standardizer(torch.cat([resize_to_grid(level, self.grid_size) for level in levels], dim=1))

    def project(self, features: Tensor) -> Tensor:
        """``(B, C, h, w)`` features -> ``(B, N, D)`` tokens (row-major), by the 1x1 input projection."""
        return self.input_proj(features.flatten(2).transpose(1, 2))

    def encode(self, tokens: Tensor) -> Tensor:
        """Neighbour-masked encoder: ``(B, N, D)`` -> ``(B, N, D)``."""
        for layer in self.encoder:
            tokens = layer(tokens, self.positions, self.attention_mask)
        return tokens

    def classify(self, memory: Tensor) -> Tensor:
        """``(B, N, D)`` encoder tokens -> ``(B, K)`` class logits."""
        return self.class_head(self.class_norm(memory.mean(dim=1)))

    def class_embedding(self, logits: Tensor, category_ids: Tensor | None = None) -> Tensor:
        """The embedding ``z`` of each image, ``(B, E)``.

        Training: a reparameterised sample of the true class's Gaussian (``category_ids`` required
        unless there is one class). Eval: the mean of the true class if ``category_ids`` is given,
        else the means weighted by the softmax of ``logits``. Without class awareness: the single
        shared Gaussian (sampled in training, its mean in eval).
        """
        batch = logits.shape[0]
        if not self.class_aware:
            shared = torch.zeros(batch, dtype=torch.long, device=logits.device)
            return self.embeddings.sample(shared) if self.training else self.embeddings.mean[shared]
        if self.training:
            if category_ids is None:
                if self.num_classes > 1:
                    msg = "Training MINT-AD with more than one class needs `category_ids`."
                    raise ValueError(msg)
                category_ids = torch.zeros(batch, dtype=torch.long, device=logits.device)
            return self.embeddings.sample(category_ids)
        if category_ids is not None:
            return self.embeddings.mean[category_ids]
        return self.embeddings.expected(logits.softmax(dim=-1))

    def queries(self, embeddings: Tensor) -> Tensor:
        """``(B, E)`` embeddings -> ``(L, B, N, D)`` decoder queries (one set per decoder layer)."""
        return self.inr(embeddings)

    def decode(self, memory: Tensor, queries: Tensor) -> Tensor:
        """Reconstruct ``(B, C, h, w)`` features from encoder tokens and per-layer queries."""
        previous = memory
        for layer, query in zip(self.decoder, queries, strict=True):
            previous = layer(query, memory, previous, self.positions, self.attention_mask)
        reconstruction = self.output_proj(self.decoder_norm(previous))  # (B, N, C)
        batch = memory.shape[0]
        return reconstruction.transpose(1, 2).reshape(batch, self.feature_channels, *self.grid_size)

    def reconstruct(self, images: Tensor, category_ids: Tensor | None = None) -> MintAdOutput:
        """Run the whole network and return targets, reconstruction, logits and the embedding Gaussians."""
        features = self.extract(images)
        tokens = self.project(features)
        memory = self.encode(tokens)
        logits = self.classify(memory)  # always from clean tokens: the same input distribution as at inference
        if self.training:
            jittered = feature_jitter(tokens, self.jitter_scale, self.jitter_probability)
            if jittered is not tokens:
                memory = self.encode(jittered)  # the reconstruction path learns to undo the jitter
        reconstruction = self.decode(memory, self.queries(self.class_embedding(logits, category_ids)))
        return MintAdOutput(features, reconstruction, logits, self.embeddings.mean, self.embeddings.log_var)

    def predict(self, images: Tensor, category_ids: Tensor | None = None) -> tuple[ClassAwareInferenceBatch, Tensor]:
        """Eval prediction and the class logits; ``category_ids`` (optional) conditions on the true class.

        ``pred_category`` is the classifier's class (or ``category_ids`` when given).
        """
        output = self.reconstruct(images, category_ids)
        anomaly_map, pred_score = self.anomaly_map_generator([output.features], [output.reconstruction])
        pred_category = output.class_logits.argmax(dim=-1) if category_ids is None else category_ids.long()
        batch = ClassAwareInferenceBatch(pred_score=pred_score, anomaly_map=anomaly_map, pred_category=pred_category)
        return batch, output.class_logits

    def forward(self, images: Tensor, category_ids: Tensor | None = None) -> MintAdOutput | ClassAwareInferenceBatch:
        """Training: :class:`MintAdOutput`; eval: ``InferenceBatch(pred_score (B,), anomaly_map (B, 1, H, W))``.

        In eval the class is predicted from the image unless ``category_ids`` is given, so the
        exported graph takes the image only.
        """
        if self.training:
            return self.reconstruct(images, category_ids)
        return self.predict(images, category_ids)[0]
