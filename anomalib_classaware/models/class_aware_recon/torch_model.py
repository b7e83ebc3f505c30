"""PyTorch model of the class-aware contrastive reconstruction model (Fan et al., arXiv 2412.04769, Sec. 3.2).

Reverse Distillation base: frozen teacher -> per-level :class:`ProjectionLayer` -> multi-scale
fusion bottleneck -> mirrored decoder, which reconstructs the raw teacher features. The global
embedding of an image is the average-pooled bottleneck output on its **clean** projected
features. In training, feature noise is added to the projected features that feed the
bottleneck for reconstruction only (authors' code): the contrastive losses see clean features,
so a noised batch runs the bottleneck once more on the clean features for its embedding (with
frozen BatchNorm running statistics, :meth:`embed`). :meth:`encode_view` encodes the augmented
view (teacher, projection, bottleneck; no decoder). At inference only teacher -> projection ->
bottleneck -> decoder runs: no class label, no contrastive branch, no augmentation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from anomalib_classaware.data.dataclasses import ClassAwareInferenceBatch
from anomalib_classaware.models.class_aware_recon.projection import ProjectionLayer
from anomalib_classaware.models.components import (
    AnomalyMapGenerator,
    build_reverse_distillation_student,
    create_feature_extractor,
    frozen_batchnorm_statistics,
    get_feature_info,
    position_noise,
)
from anomalib_classaware.models.components.networks.anomaly_map import MapReduction, ScoreReduction
from anomalib_classaware.models.components.networks.category_prototypes import CategoryPrototypes
from anomalib_classaware.models.components.networks.frozen_encoders import EvalModeEncoders
from anomalib_classaware.models.components.networks.residual_calibration import ResidualCalibration
from anomalib_classaware.models.components.training.contrastive_losses import ViewEncoding


class ClassAwareReconOutput(NamedTuple):
    """Training output: the original view's encoding and the decoder's reconstructions of its teacher features."""

    view: ViewEncoding
    reconstructions: list[Tensor]


class ClassAwareReconModel(EvalModeEncoders):
    """Frozen teacher, projection layers, RD bottleneck and decoder.

    Args:
        backbone: timm CNN name (paper: ``"wide_resnet50_2"``).
        layers: timm ``out_indices`` of the reconstructed levels (paper: ResNet stages 1-3).
        input_size: ``(H, W)`` of the model input; anomaly maps have this size.
        pre_trained: load timm's pretrained weights into the teacher.
        weights_path: local weights file for the teacher (overrides ``pre_trained``).
        noise_std: std of the training feature noise on projected features (0 disables it).
        noise_fraction: fraction of positions that get noise.
        noise_probability: probability that a training batch gets noise.
        map_reduction: combine the level maps by ``"mean"`` or ``"sum"``.
        score_reduction: ``"max"`` or ``"topk_mean"``.
        topk_ratio: fraction of pixels averaged by ``"topk_mean"``.
        blur_sigma: sigma of the anomaly-map Gaussian blur.
        residual_calibration: calibrate each level map per predicted category and position
            (:class:`ResidualCalibration`; identity until fitted on the training images).

    """

    eval_encoders = ("teacher",)

    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        layers: Sequence[int] = (1, 2, 3),
        input_size: Sequence[int] = (256, 256),
        pre_trained: bool = True,
        weights_path: str | Path | None = None,
        noise_std: float = 1.0,
        noise_fraction: float = 0.5,
        noise_probability: float = 0.5,
        map_reduction: MapReduction = "mean",
        score_reduction: ScoreReduction = "max",
        topk_ratio: float = 0.01,
        blur_sigma: float = 4.0,
        residual_calibration: bool = True,
    ) -> None:
        super().__init__()
        self.teacher = create_feature_extractor(backbone, layers, pre_trained, weights_path).requires_grad_(False)
        channels, reductions = get_feature_info(self.teacher)
        self.projections = nn.ModuleList(ProjectionLayer(channel) for channel in channels)
        self.bottleneck, self.decoder = build_reverse_distillation_student(channels, reductions)
        self.category_prototypes = CategoryPrototypes()
        self.noise_std = noise_std
        self.noise_fraction = noise_fraction
        self.noise_probability = noise_probability
        self.anomaly_map_generator = AnomalyMapGenerator(
            image_size=input_size,
            reduction=map_reduction,
            sigma=blur_sigma,
            score_reduction=score_reduction,
            topk_ratio=topk_ratio,
        )
        self.residual_calibration = ResidualCalibration() if residual_calibration else None
        self.train()

    @torch.no_grad()
    def teacher_features(self, images: Tensor) -> list[Tensor]:
        """Frozen-teacher features (no graph)."""
        self.encoders_eval()
        return list(self.teacher(images))

    def frozen_features(self, images: Tensor) -> list[Tensor]:
        """Frozen features the predicted category is computed from (the teacher's)."""
        return self.teacher_features(images)

    def project(self, teacher_features: Sequence[Tensor]) -> list[Tensor]:
        """Apply the per-level projection layers."""
        return [projection(feature) for projection, feature in zip(self.projections, teacher_features, strict=True)]

    def embed(self, projected: Sequence[Tensor]) -> Tensor:
        """``(B, D)`` global embedding: pooled bottleneck output, BatchNorm running statistics left untouched."""
        with frozen_batchnorm_statistics(self.bottleneck):
            return self.bottleneck(projected).mean(dim=(2, 3))

    def encode_view(self, images: Tensor) -> ViewEncoding:
        """Teacher, projection and pooled bottleneck embedding of a view (training-time contrastive branch).

        The bottleneck's BatchNorm layers normalise the view with its own batch statistics but do not
        fold them into the running statistics used at inference (:func:`frozen_batchnorm_statistics`):
        augmented images (colour jitter, grayscale, rotation) are never seen at inference.
        """
        teacher_features = self.teacher_features(images)
        projected = self.project(teacher_features)
        return ViewEncoding(teacher_features, projected, self.embed(projected))

    def forward(self, images: Tensor, clean_embedding: bool = True) -> ClassAwareReconOutput | ClassAwareInferenceBatch:
        """Training: :class:`ClassAwareReconOutput`; eval: ``pred_score``, ``anomaly_map``, ``pred_category``.

        Args:
            images: pre-processed ``(B, 3, H, W)`` batch.
            clean_embedding: in a noised training batch, compute the global embedding on the clean
                projected features (one more bottleneck pass). ``False`` skips that pass when no loss
                uses the embedding; the returned embedding is then the noised path's.

        """
        if not self.training:
            level_maps, pred_category = self.inference_level_maps(images)
            if self.residual_calibration is not None:
                level_maps = self.residual_calibration(level_maps, pred_category)
            anomaly_map, pred_score = self.anomaly_map_generator.from_level_maps(level_maps)
            return ClassAwareInferenceBatch(pred_score=pred_score, anomaly_map=anomaly_map, pred_category=pred_category)
        teacher_features = self.teacher_features(images)
        projected = self.project(teacher_features)
        student_input = projected
        noised = float(torch.rand(())) < self.noise_probability  # one draw per batch
        if noised:
            student_input = [position_noise(level, self.noise_std, self.noise_fraction, 1.0) for level in projected]
        bottleneck = self.bottleneck(student_input)
        reconstructions = self.reconstruct(bottleneck, teacher_features)
        embedding = self.embed(projected) if noised and clean_embedding else bottleneck.mean(dim=(2, 3))
        return ClassAwareReconOutput(ViewEncoding(teacher_features, projected, embedding), reconstructions)

    def reconstruct(self, bottleneck: Tensor, teacher_features: Sequence[Tensor]) -> list[Tensor]:
        """The decoder's reconstructions of the teacher features, one per level."""
        return self.decoder(bottleneck, output_sizes=[tuple(feature.shape[-2:]) for feature in teacher_features])[0]

    def inference_level_maps(self, images: Tensor) -> tuple[list[Tensor], Tensor]:
        """Eval: the uncalibrated ``(B, 1, h, w)`` map of each level and the predicted category ``(B,)``."""
        teacher_features = self.teacher_features(images)
        reconstructions = self.reconstruct(self.bottleneck(self.project(teacher_features)), teacher_features)
        level_maps = self.anomaly_map_generator.level_maps(teacher_features, reconstructions)
        return level_maps, self.category_prototypes.predict(teacher_features)
