"""Reverse Distillation on any timm CNN.

Deng & Li, "Anomaly Detection via Reverse Distillation from One-Class Embedding", CVPR 2022.

anomalib's ``ReverseDistillation`` supports ResNet-type backbones only (its bottleneck and
decoder are hard-coded). This torch model assembles the same architecture from the shared
components, sized from the backbone's ``feature_info``: frozen encoder, multi-scale fusion
bottleneck (OCBE, Sec. 3.3), mirrored ReLU decoder with one 1x1 head per level (Sec. 3.2).
Train it with :func:`~anomalib_classaware.models.components.pixel_cosine_loss` on
``(encoder_features, decoder_features)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from anomalib.data import InferenceBatch
from torch import Tensor

from anomalib_classaware.models.components import AnomalyMapGenerator, frozen_teacher_and_student
from anomalib_classaware.models.components.networks.anomaly_map import MapReduction, ScoreReduction
from anomalib_classaware.models.components.networks.frozen_encoders import EvalModeEncoders


class ReverseDistillationModel(EvalModeEncoders):
    """Frozen encoder -> fusion bottleneck -> mirrored decoder; maps from ``1 - cos`` per level.

    Args:
        backbone: timm CNN name.
        layers: timm ``out_indices`` of the distilled levels.
        input_size: ``(H, W)`` of the model input.
        pre_trained: load timm's pretrained weights into the encoder.
        weights_path: local weights file for the encoder (overrides ``pre_trained``).
        map_reduction: combine the level maps by ``"sum"`` (anomalib's RD "add") or ``"mean"``.
        score_reduction: ``"max"`` (anomalib's RD) or ``"topk_mean"``.
        topk_ratio: fraction of pixels averaged by ``"topk_mean"``.

    """

    eval_encoders = ("encoder",)

    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        layers: Sequence[int] = (1, 2, 3),
        input_size: Sequence[int] = (256, 256),
        pre_trained: bool = True,
        weights_path: str | Path | None = None,
        map_reduction: MapReduction = "sum",
        score_reduction: ScoreReduction = "max",
        topk_ratio: float = 0.01,
    ) -> None:
        super().__init__()
        self.encoder, self.bottleneck, self.decoder = frozen_teacher_and_student(
            backbone, layers, pre_trained, weights_path
        )
        self.anomaly_map_generator = AnomalyMapGenerator(
            image_size=input_size,
            reduction=map_reduction,
            score_reduction=score_reduction,
            topk_ratio=topk_ratio,
        )
        self.train()

    def forward(self, images: Tensor) -> tuple[list[Tensor], list[Tensor]] | InferenceBatch:
        """Training: ``(encoder_features, decoder_features)``; eval: ``InferenceBatch(pred_score, anomaly_map)``."""
        self.encoders_eval()
        encoder_features = list(self.encoder(images))
        decoder_features = self.decoder(
            self.bottleneck(encoder_features),
            output_sizes=[tuple(feature.shape[-2:]) for feature in encoder_features],
        )[0]
        if self.training:
            return encoder_features, decoder_features
        anomaly_map, pred_score = self.anomaly_map_generator(encoder_features, decoder_features)
        return InferenceBatch(pred_score=pred_score, anomaly_map=anomaly_map)
