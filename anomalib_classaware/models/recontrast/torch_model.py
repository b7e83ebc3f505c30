"""PyTorch model of ReContrast.

Guo et al., "ReContrast: Domain-Specific Anomaly Detection via Contrastive Reconstruction",
NeurIPS 2023.

Two copies of one pretrained CNN encoder: ``encoder`` is trained (small learning rate, kept in
eval mode so its BatchNorm statistics stay the pretrained ones) and ``frozen_encoder`` is fixed.
Their features are concatenated along the batch and go through one shared multi-scale fusion
bottleneck and one shared decoder with two head sets (Sec. 3.2). Cross reconstruction: head set 0
applied to the decoding of the trainable encoder's features reconstructs the frozen encoder's
features, head set 1 applied to the decoding of the frozen encoder's features reconstructs the
trainable encoder's features (Sec. 3.2, eq. 3). The loss (``loss.py``) detaches the targets.

At inference the six distance maps (3 levels x 2 directions) are averaged, blurred and reduced
to an image score (Sec. 3.3). No class label is used anywhere.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from anomalib_classaware.data.dataclasses import ClassAwareInferenceBatch
from anomalib_classaware.models.components import (
    AnomalyMapGenerator,
    frozen_batchnorm_statistics,
    frozen_teacher_and_student,
)
from anomalib_classaware.models.components.networks.anomaly_map import ScoreReduction
from anomalib_classaware.models.components.networks.category_prototypes import CategoryPrototypes
from anomalib_classaware.models.components.networks.frozen_encoders import EvalModeEncoders
from anomalib_classaware.models.components.training.contrastive_losses import ViewEncoding


class ReContrastOutput(NamedTuple):
    """Training output of :class:`ReContrastModel` (levels shallow to deep).

    ``frozen_reconstructions[i]`` (decoded from the trainable encoder) reconstructs
    ``frozen_features[i]``; ``trainable_reconstructions[i]`` (decoded from the frozen encoder)
    reconstructs ``trainable_features[i]``.
    """

    frozen_features: list[Tensor]
    trainable_features: list[Tensor]
    frozen_reconstructions: list[Tensor]
    trainable_reconstructions: list[Tensor]
    trainable_embedding: Tensor | None = None

    def view(self) -> ViewEncoding:
        """The trainable-encoder view the class-aware contrastive terms act on (``class_aware=True``)."""
        if self.trainable_embedding is None:
            msg = "This output carries no embedding."
            raise ValueError(msg)
        return ViewEncoding(self.frozen_features, self.trainable_features, self.trainable_embedding)

    def targets(self) -> list[Tensor]:
        """Return the six targets, in the order of :meth:`reconstructions`."""
        return [*self.frozen_features, *self.trainable_features]

    def reconstructions(self) -> list[Tensor]:
        """Return the six reconstructions, in the order of :meth:`targets`."""
        return [*self.frozen_reconstructions, *self.trainable_reconstructions]


class ReContrastModel(EvalModeEncoders):
    """ReContrast: trainable + frozen encoder, shared bottleneck and two-head decoder.

    Args:
        backbone: timm CNN name (paper: ``"wide_resnet50_2"``).
        layers: timm ``out_indices`` of the reconstructed levels (paper: ResNet stages 1-3).
        input_size: ``(H, W)`` of the model input; anomaly maps are produced at this size.
        pre_trained: load timm's pretrained weights into the encoders.
        weights_path: local weights file for the encoders (overrides ``pre_trained``).
        score_reduction: ``"topk_mean"`` (paper: mean of the top 1 % pixels) or ``"max"``.
        topk_ratio: fraction of pixels averaged by ``"topk_mean"``.
        blur_sigma: sigma of the Gaussian blur of the anomaly map.
        blur_kernel_size: blur kernel size; ``None`` uses anomalib's ``2 * int(4 * sigma + 0.5) + 1``.
        decoder_activation: ``"gelu"`` (unified recipe) or ``"relu"``.

    """

    #: Both encoders keep their pretrained BatchNorm statistics (the trainable one learns its weights only).
    eval_encoders = ("frozen_encoder", "encoder")

    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        layers: Sequence[int] = (1, 2, 3),
        input_size: Sequence[int] = (256, 256),
        pre_trained: bool = True,
        weights_path: str | Path | None = None,
        score_reduction: ScoreReduction = "topk_mean",
        topk_ratio: float = 0.01,
        blur_sigma: float = 4.0,
        blur_kernel_size: int | None = 5,
        decoder_activation: str = "gelu",
    ) -> None:
        super().__init__()
        frozen_encoder, bottleneck, decoder = frozen_teacher_and_student(
            backbone, layers, pre_trained, weights_path, decoder_activation=decoder_activation, num_heads_sets=2
        )
        self.frozen_encoder = frozen_encoder
        self.encoder = copy.deepcopy(frozen_encoder).requires_grad_(True)
        self.bottleneck, self.decoder = bottleneck, decoder
        self.category_prototypes = CategoryPrototypes()
        self.anomaly_map_generator = AnomalyMapGenerator(
            image_size=input_size,
            reduction="mean",
            sigma=blur_sigma,
            kernel_size=blur_kernel_size,
            score_reduction=score_reduction,
            topk_ratio=topk_ratio,
        )
        self.train()

    def cross_reconstruct(self, images: Tensor) -> ReContrastOutput:
        """Encode with both encoders, decode their batch concatenation, and pair the reconstructions."""
        self.encoders_eval()
        trainable_features = list(self.encoder(images))
        frozen_features = list(self.frozen_encoder(images))  # parameters frozen: no graph is built
        batch_size = images.shape[0]
        joint = [torch.cat([a, f], dim=0) for a, f in zip(trainable_features, frozen_features, strict=True)]
        fused = self.bottleneck(joint)
        decoded = self.decoder.forward_features(
            fused,
            output_sizes=[tuple(feature.shape[-2:]) for feature in frozen_features],
        )
        frozen_reconstructions = self.decoder.apply_heads([d[:batch_size] for d in decoded], head_set=0)
        trainable_reconstructions = self.decoder.apply_heads([d[batch_size:] for d in decoded], head_set=1)
        return ReContrastOutput(
            frozen_features,
            trainable_features,
            frozen_reconstructions,
            trainable_reconstructions,
            fused[:batch_size].mean(dim=(2, 3)),
        )

    def encode_view(self, images: Tensor) -> ViewEncoding:
        """Frozen and trainable features and pooled bottleneck embedding of a view (``class_aware=True``).

        The class-aware terms (Fan et al., arXiv 2412.04769) act on the trainable encoder, ReContrast's
        counterpart of the projection layer; positions are matched on the frozen encoder's features. The
        bottleneck's BatchNorm layers normalise the view with its batch statistics without updating the
        running statistics used at inference (augmented images are never seen there).
        """
        self.encoders_eval()
        trainable_features = list(self.encoder(images))
        with torch.no_grad():
            frozen_features = list(self.frozen_encoder(images))
        with frozen_batchnorm_statistics(self.bottleneck):
            embedding = self.bottleneck(trainable_features).mean(dim=(2, 3))
        return ViewEncoding(frozen_features, trainable_features, embedding)

    def frozen_features(self, images: Tensor) -> list[Tensor]:
        """Frozen-encoder features (no graph): what the predicted category is computed from."""
        with torch.no_grad():
            return list(self.frozen_encoder(images))

    def forward(self, images: Tensor) -> ReContrastOutput | ClassAwareInferenceBatch:
        """Training: :class:`ReContrastOutput`; eval: ``pred_score``, ``anomaly_map``, ``pred_category``."""
        output = self.cross_reconstruct(images)
        if self.training:
            return output
        anomaly_map, pred_score = self.anomaly_map_generator(output.targets(), output.reconstructions())
        pred_category = self.category_prototypes.predict(output.frozen_features)
        return ClassAwareInferenceBatch(pred_score=pred_score, anomaly_map=anomaly_map, pred_category=pred_category)
