"""Baselines the benchmark needs but anomalib cannot build: Reverse Distillation on any timm CNN.

anomalib's ``ReverseDistillation`` hard-codes ResNet decoders, so it cannot take the backbone
shared by a benchmark table (e.g. ``efficientnet_lite0``). :class:`ComponentReverseDistillation`
wraps :class:`~anomalib_classaware.models.reverse_distillation.ReverseDistillationModel` (the
same architecture, assembled from the shared components) with anomalib's RD training recipe:
Adam (lr 0.005, betas 0.5/0.99) on bottleneck and decoder, the RD pixel-cosine loss, frozen
encoder. Rows produced with it are labelled as such in benchmark tables.

It is a benchmark baseline, not a model of the package: it is not listed in
``anomalib_classaware.models.__all__`` and the plugin does not register it.
"""

from __future__ import annotations

from collections.abc import Sequence

from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import optim

from anomalib_classaware.models.components import pixel_cosine_loss
from anomalib_classaware.models.components.lightning.backbone_model import BackboneModelMixin
from anomalib_classaware.models.components.lightning.mixins import FeatureReconstructionMixin
from anomalib_classaware.models.components.lightning.pre_processing import DEFAULT_INPUT_SIZE
from anomalib_classaware.models.components.networks.anomaly_map import MapReduction, ScoreReduction
from anomalib_classaware.models.reverse_distillation import ReverseDistillationModel


class ComponentReverseDistillation(FeatureReconstructionMixin, BackboneModelMixin, AnomalibModule):
    """Plain Reverse Distillation (Deng & Li, CVPR 2022) on any timm CNN, built from the shared components.

    Args:
        backbone: timm CNN name. Defaults to ``"wide_resnet50_2"``.
        layers: timm ``out_indices`` of the distilled levels. Defaults to ``(1, 2, 3)``.
        pre_trained: load timm's pretrained weights (needs the model hub). Defaults to ``True``.
        weights_path: local weights file of the full timm classifier; overrides ``pre_trained``.
        input_size: ``(H, W)`` of the default pre-processor's resize. Defaults to ``(256, 256)``.
        map_reduction: combine the level maps by ``"sum"`` (anomalib's RD) or ``"mean"``.
        score_reduction: ``"max"`` (anomalib's RD) or ``"topk_mean"``.
        lr: Adam learning rate. Defaults to ``0.005`` (anomalib's RD).
        betas: Adam betas. Defaults to ``(0.5, 0.99)`` (anomalib's RD).
        pre_processor: pre-processor instance or flag to use the default (resize + ImageNet norm).
        post_processor: post-processor instance or flag to use the default.
        evaluator: evaluator instance or flag to use the default.
        visualizer: visualizer instance or flag to use the default.

    """

    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        layers: Sequence[int] = (1, 2, 3),
        pre_trained: bool = True,
        weights_path: str | None = None,
        input_size: Sequence[int] = DEFAULT_INPUT_SIZE,
        map_reduction: MapReduction = "sum",
        score_reduction: ScoreReduction = "max",
        lr: float = 0.005,
        betas: Sequence[float] = (0.5, 0.99),
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        super().__init__(self.resolve_pre_processor(pre_processor, input_size), post_processor, evaluator, visualizer)
        self.lr = lr
        self.betas = (float(betas[0]), float(betas[1]))
        self.model: ReverseDistillationModel = ReverseDistillationModel(
            **self.backbone_arguments(backbone, layers, pre_trained, weights_path or None, input_size),
            map_reduction=map_reduction,
            score_reduction=score_reduction,
        )

    def configure_optimizers(self) -> optim.Adam:
        """Adam on the bottleneck and decoder (the encoder is frozen)."""
        return optim.Adam(
            params=[*self.model.decoder.parameters(), *self.model.bottleneck.parameters()],
            lr=self.lr,
            betas=self.betas,
        )

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Distil the encoder's features of the batch into the decoder; return the RD loss."""
        del args, kwargs  # These variables are not used.
        loss = pixel_cosine_loss(*self.model(batch.image))
        self.log_training_loss(loss, len(batch.image))
        return {"loss": loss}
