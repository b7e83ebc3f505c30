"""ReContrast: domain-specific anomaly detection via contrastive reconstruction.

Guo, Lu, Jia, Chen, Lo, "ReContrast: Domain-Specific Anomaly Detection via Contrastive
Reconstruction", NeurIPS 2023 (https://arxiv.org/abs/2306.02602).

The Lightning module wires the unified (multi-class) training recipe around
:class:`ReContrastModel`: one AdamW (amsgrad, eps 1e-10, weight decay 1e-5) with two learning
rates (2e-3 for bottleneck and decoder, 1e-5 for the trainable encoder), both multiplied by 0.2
at 80 % of the planned steps; the hard-mining threshold ``alpha`` ramps from -3 to 1 over the
first 10 % of the planned steps. "Planned steps" is ``trainer.estimated_stepping_batches``, so
the recipe follows ``max_steps`` or ``max_epochs`` (paper: 5000 iterations, batch 16) and both
schedules continue correctly when training resumes from a checkpoint.

By default no class label is used: batches from multi-class datamodules may carry
``category_id``; it is ignored. ``class_aware=True`` adds the class-aware contrastive terms of
Fan et al. (arXiv 2412.04769, "plug-and-play"): SupCon on the pooled bottleneck embedding of the
trainable encoder's features and dense InfoNCE on the trainable encoder's features, against an
augmented view made in the training step, with dataset or pseudo class labels. They cost nothing
at inference.

Example:
    >>> from anomalib.engine import Engine
    >>> from anomalib_classaware import MultiClassMVTecAD, ReContrast
    >>> model = ReContrast()  # wide_resnet50_2, 256 px
    >>> engine = Engine(max_steps=5000)
    >>> engine.fit(model, datamodule=MultiClassMVTecAD(root="./datasets/MVTecAD"))  # doctest: +SKIP

"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch.utilities.types import STEP_OUTPUT, OptimizerLRScheduler
from torch import Tensor

from anomalib_classaware.models.components import alpha_schedule
from anomalib_classaware.models.components.lightning.category_head import CategoryPrototypesMixin
from anomalib_classaware.models.components.lightning.category_names import validate_category_names
from anomalib_classaware.models.components.lightning.class_labels import ClassLabelsMixin
from anomalib_classaware.models.components.lightning.mixins import PlannedStepsMixin, step_decay_schedule
from anomalib_classaware.models.components.lightning.model_base import MultiClassModelMixin
from anomalib_classaware.models.components.lightning.pre_processing import DEFAULT_INPUT_SIZE
from anomalib_classaware.models.components.networks.anomaly_map import ScoreReduction
from anomalib_classaware.models.components.training.contrastive_losses import ClassAwareContrastiveLoss, LocalNegatives
from anomalib_classaware.models.components.training.pseudo_labels import NumClusters
from anomalib_classaware.models.components.training.view_augmentation import ContrastiveViewAugmenter

from .loss import ReContrastLoss
from .torch_model import ReContrastModel


class ReContrast(PlannedStepsMixin, ClassLabelsMixin, CategoryPrototypesMixin, MultiClassModelMixin, AnomalibModule):
    """ReContrast Lightning module (unified multi-class recipe).

    Args:
        backbone: timm CNN name. Defaults to ``"wide_resnet50_2"`` (paper).
        layers: timm ``out_indices`` of the reconstructed levels. Defaults to ``(1, 2, 3)``
            (ResNet ``layer1``-``layer3``, strides 4/8/16).
        pre_trained: load timm's pretrained weights. Defaults to ``True``.
        weights_path: local weights file of the full timm classifier for air-gapped machines;
            overrides ``pre_trained``. Defaults to ``None``.
        input_size: ``(H, W)`` of the default pre-processor's resize. A custom ``pre_processor``
            that resizes sets the size instead. Defaults to ``(256, 256)``.
        score_reduction: ``"topk_mean"`` (paper) or ``"max"``. Defaults to ``"topk_mean"``.
        topk_ratio: fraction of pixels averaged by ``"topk_mean"``. Defaults to ``0.01``.
        hard_mining_factor: gradient multiplier on easy points. Defaults to ``0.0`` (official code).
        alpha_start: hard-mining threshold at step 0. Defaults to ``-3.0``.
        alpha_end: hard-mining threshold after the ramp. Defaults to ``1.0``.
        alpha_warmup_fraction: fraction of the planned steps over which alpha ramps. Defaults to ``0.1``.
        lr: learning rate of bottleneck and decoder. Defaults to ``2e-3``.
        encoder_lr: learning rate of the trainable encoder. Defaults to ``1e-5``.
        weight_decay: AdamW weight decay. Defaults to ``1e-5``.
        lr_decay_fraction: fraction of the planned steps after which the learning rates are
            multiplied by ``lr_decay_factor``. Defaults to ``0.8``.
        lr_decay_factor: learning-rate multiplier. Defaults to ``0.2``.
        blur_sigma: sigma of the anomaly-map Gaussian blur. Defaults to ``4.0``.
        blur_kernel_size: blur kernel size; ``None`` uses anomalib's ``2 * int(4 * sigma + 0.5) + 1``.
            Defaults to ``5`` (official code).
        decoder_activation: ``"gelu"`` (unified recipe) or ``"relu"``. Defaults to ``"gelu"``.
        class_aware: add the class-aware contrastive terms. Defaults to ``False`` (paper).
        class_labels: with ``class_aware``: ``"dataset"`` or ``"pseudo"`` (see ``ClassAwareRecon``).
        num_pseudo_classes: number of pseudo-classes or ``"auto"``. Defaults to ``"auto"``.
        max_pseudo_classes: upper bound of the ``"auto"`` search. Defaults to ``20``.
        contrastive_temperature: temperature of the contrastive terms. Defaults to ``0.05``.
        contrastive_global_weight: weight of the global SupCon term. Defaults to ``1.0``.
        contrastive_local_weight: weight of the local dense term. Defaults to ``1.0``.
        local_negatives: ``"all"`` other-class images or ``"one"``. Defaults to ``"all"``.
        pre_processor: pre-processor instance or flag to use the default (resize + ImageNet norm).
        post_processor: post-processor instance or flag to use the default.
        evaluator: evaluator instance or flag to use the default.
        visualizer: visualizer instance or flag to use the default.
        category_names: category names ordered by ``category_id``; filled from the datamodule at
            fit start and saved in the checkpoint (ReContrast itself never uses class labels).

    """

    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        layers: Sequence[int] = (1, 2, 3),
        pre_trained: bool = True,
        weights_path: str | None = None,
        input_size: Sequence[int] = DEFAULT_INPUT_SIZE,
        score_reduction: ScoreReduction = "topk_mean",
        topk_ratio: float = 0.01,
        hard_mining_factor: float = 0.0,
        alpha_start: float = -3.0,
        alpha_end: float = 1.0,
        alpha_warmup_fraction: float = 0.1,
        lr: float = 2e-3,
        encoder_lr: float = 1e-5,
        weight_decay: float = 1e-5,
        lr_decay_fraction: float = 0.8,
        lr_decay_factor: float = 0.2,
        blur_sigma: float = 4.0,
        blur_kernel_size: int | None = 5,
        decoder_activation: str = "gelu",
        class_aware: bool = False,
        class_labels: str = "dataset",
        num_pseudo_classes: NumClusters = "auto",
        max_pseudo_classes: int = 20,
        contrastive_temperature: float = 0.05,
        contrastive_global_weight: float = 1.0,
        contrastive_local_weight: float = 1.0,
        local_negatives: LocalNegatives = "all",
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
        category_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__(self.resolve_pre_processor(pre_processor, input_size), post_processor, evaluator, visualizer)
        self.alpha_start = alpha_start
        self.alpha_end = alpha_end
        self.alpha_warmup_fraction = alpha_warmup_fraction
        self.lr = lr
        self.encoder_lr = encoder_lr
        self.weight_decay = weight_decay
        self.lr_decay_fraction = lr_decay_fraction
        self.lr_decay_factor = lr_decay_factor
        self.category_names = validate_category_names(category_names)
        self.class_aware = class_aware
        self._init_class_labels(class_labels, num_pseudo_classes, max_pseudo_classes)
        self.contrastive_loss = (
            ClassAwareContrastiveLoss(
                contrastive_temperature, contrastive_global_weight, contrastive_local_weight, local_negatives
            )
            if class_aware
            else None
        )
        self._view_augmentation = ContrastiveViewAugmenter()

        self.model: ReContrastModel = ReContrastModel(
            **self.backbone_arguments(backbone, layers, pre_trained, weights_path, input_size),
            score_reduction=score_reduction,
            topk_ratio=topk_ratio,
            blur_sigma=blur_sigma,
            blur_kernel_size=blur_kernel_size,
            decoder_activation=decoder_activation,
        )
        self.loss = ReContrastLoss(factor=hard_mining_factor)

    def on_fit_start(self) -> None:
        """Record the datamodule's category names (or one class, said once in the log) in the hyperparameters."""
        self._record_category_names()

    def on_train_start(self) -> None:
        """Fit pseudo-class centroids (``class_aware``, ``class_labels="pseudo"``) and category prototypes once."""
        if self.class_aware:
            self._fit_pseudo_labels()
        self._fit_category_prototypes()

    def teacher_features(self, images: Tensor) -> list[Tensor]:
        """Frozen-encoder features of a pre-processed batch (pseudo-labels)."""
        with torch.no_grad():
            return list(self.model.frozen_encoder(images))

    def configure_optimizers(self) -> OptimizerLRScheduler:
        """AdamW (amsgrad) with two learning-rate groups, multiplied by ``lr_decay_factor`` at ``lr_decay_fraction``."""
        decoder_parameters = [*self.model.bottleneck.parameters(), *self.model.decoder.parameters()]
        optimizer = torch.optim.AdamW(
            [
                {"params": decoder_parameters, "lr": self.lr},
                {"params": list(self.model.encoder.parameters()), "lr": self.encoder_lr},
            ],
            lr=self.lr,
            betas=(0.9, 0.999),
            eps=1e-10,
            weight_decay=self.weight_decay,
            amsgrad=True,
        )
        return step_decay_schedule(optimizer, self.planned_steps, self.lr_decay_fraction, self.lr_decay_factor)

    def current_alpha(self) -> float:
        """Hard-mining threshold at the current global step."""
        return alpha_schedule(
            self.global_step,
            self.planned_steps,
            start=self.alpha_start,
            end=self.alpha_end,
            warmup_fraction=self.alpha_warmup_fraction,
        )

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Cross-reconstruct the batch; hard-mining global cosine loss (+ contrastive terms if ``class_aware``)."""
        del args, kwargs  # These variables are not used.
        alpha = self.current_alpha()
        output = self.model(batch.image)
        loss = self.loss(output, alpha=alpha)
        terms: dict[str, Tensor | float] = {}
        if self.contrastive_loss is not None:
            labels = self.training_labels(batch, output.frozen_features)
            augmented = self.model.encode_view(self._view_augmentation(batch.image, self.pre_processor))
            contrastive = self.contrastive_loss.compare_views(labels, output.view(), augmented)
            loss = loss + contrastive.total
            terms["train_global_contrastive_loss"] = contrastive.global_loss
            terms["train_local_contrastive_loss"] = contrastive.local_loss
        terms["train_hard_mining_alpha"] = alpha
        self.log_training_loss(loss, batch.image.shape[0], terms)
        return {"loss": loss}

    @property
    def wants_class_balanced_batches(self) -> bool:
        """Ask our datamodules for class-balanced batches (``class_aware`` with dataset labels: SupCon needs them)."""
        return self.contrastive_loss is not None and self.contrastive_loss.enabled and self.class_labels == "dataset"
