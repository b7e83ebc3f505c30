"""ClassAwareRecon: class-aware contrastive learning on a reconstruction model.

Fan, Zhang, Wang, Feng, Zhou, Li, "Revitalizing Reconstruction Models for Multi-class Anomaly
Detection via Class-Aware Contrastive Learning", arXiv 2412.04769 (code: LGC-AD/AD-LGC).

Reverse Distillation with a trainable projection layer per scale between the frozen teacher
and the bottleneck (:mod:`.torch_model`), trained with ``L_rec + l1 * L_global + l2 * L_local``
(:mod:`.loss`): the class labels (the datamodule's ``category_id`` or k-means pseudo-classes)
make images of one class gather and images of other classes repel, globally (SupCon on the pooled
bottleneck embedding of the clean, un-noised projected features) and locally (dense InfoNCE on
projected features). The augmented view is
made on the device inside the training step. Recipe (authors' code): Adam, betas (0.5, 0.999),
lr 1e-3 for the projection layers and 5e-3 for bottleneck and decoder, both x0.1 at 80 % of the
planned steps, gradient clipping at 5, batch 16. Inference needs no class label and runs no
contrastive branch.

Example:
    >>> from anomalib.engine import Engine
    >>> from anomalib_classaware import ClassAwareRecon, MultiClassMVTecAD
    >>> model = ClassAwareRecon()  # wide_resnet50_2, 256 px, dataset class labels
    >>> engine = Engine(max_epochs=100)
    >>> engine.fit(model, datamodule=MultiClassMVTecAD(root="./datasets/MVTecAD"))  # doctest: +SKIP

"""

from __future__ import annotations

import logging
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

from anomalib_classaware.models.components.lightning.category_head import CategoryPrototypesMixin
from anomalib_classaware.models.components.lightning.category_names import validate_category_names
from anomalib_classaware.models.components.lightning.class_labels import ClassLabelsMixin
from anomalib_classaware.models.components.lightning.mixins import PlannedStepsMixin, step_decay_schedule
from anomalib_classaware.models.components.lightning.model_base import MultiClassModelMixin
from anomalib_classaware.models.components.lightning.pre_processing import DEFAULT_INPUT_SIZE
from anomalib_classaware.models.components.lightning.residual_calibration import ResidualCalibrationMixin
from anomalib_classaware.models.components.networks.anomaly_map import MapReduction, ScoreReduction
from anomalib_classaware.models.components.training.contrastive_losses import LocalNegatives
from anomalib_classaware.models.components.training.pseudo_labels import NumClusters
from anomalib_classaware.models.components.training.view_augmentation import ContrastiveViewAugmenter

from .loss import ClassAwareReconLoss
from .torch_model import ClassAwareReconModel

logger = logging.getLogger(__name__)


class ClassAwareRecon(
    PlannedStepsMixin,
    ClassLabelsMixin,
    CategoryPrototypesMixin,
    ResidualCalibrationMixin,
    MultiClassModelMixin,
    AnomalibModule,
):
    """Class-aware contrastive reconstruction (Reverse Distillation + projection + contrastive terms).

    Args:
        backbone: timm CNN name of the frozen teacher. Defaults to ``"wide_resnet50_2"`` (paper).
        layers: timm ``out_indices`` of the reconstructed levels. Defaults to ``(1, 2, 3)``.
        pre_trained: load timm's pretrained weights. Defaults to ``True``.
        weights_path: local weights file of the full timm classifier (air-gapped machines);
            overrides ``pre_trained``. Defaults to ``None``.
        input_size: ``(H, W)`` of the default pre-processor's resize. Defaults to ``(256, 256)``.
        class_labels: ``"dataset"`` (the datamodule's ``category_id``) or ``"pseudo"`` (k-means
            on pooled teacher features of the training set, fitted when training starts).
        num_pseudo_classes: number of pseudo-classes, or ``"auto"`` (best silhouette score).
        max_pseudo_classes: upper bound of the ``"auto"`` search. Defaults to ``20``.
        temperature: contrastive temperature. Defaults to ``0.05`` (code).
        global_weight: ``l1``, weight of the global SupCon term. Defaults to ``1.0``.
        local_weight: ``l2``, weight of the local dense term. Defaults to ``1.0``.
        local_negatives: ``"all"`` other-class images of the batch (ours) or ``"one"`` (code).
        noise_std: std of the training feature noise on projected features. Defaults to ``1.0``.
        noise_fraction: fraction of positions that get noise. Defaults to ``0.5``.
        noise_probability: probability that a batch gets noise. Defaults to ``0.5``.
        lr: learning rate of bottleneck and decoder. Defaults to ``5e-3``.
        projection_lr: learning rate of the projection layers. Defaults to ``1e-3``.
        betas: Adam betas. Defaults to ``(0.5, 0.999)``.
        lr_decay_fraction: fraction of the planned steps after which the learning rates are
            multiplied by ``lr_decay_factor``. Defaults to ``0.8``.
        lr_decay_factor: learning-rate multiplier. Defaults to ``0.1``.
        gradient_clip_val: gradient-norm clipping. Defaults to ``5.0``.
        map_reduction: combine level maps by ``"mean"`` or ``"sum"``. Defaults to ``"mean"``.
        score_reduction: ``"max"`` or ``"topk_mean"``. Defaults to ``"max"``.
        topk_ratio: fraction of pixels averaged by ``"topk_mean"``. Defaults to ``0.01``.
        blur_sigma: sigma of the anomaly-map Gaussian blur. Defaults to ``4.0``.
        residual_calibration: after training, calibrate each level map by the per-position mean and spread of
            the training images of the image's predicted category (ours, not the paper's:
            :mod:`~anomalib_classaware.models.components.networks.residual_calibration`). Defaults to ``True``.
        pre_processor: pre-processor instance or flag to use the default (resize + ImageNet norm).
        post_processor: post-processor instance or flag to use the default.
        evaluator: evaluator instance or flag to use the default.
        visualizer: visualizer instance or flag to use the default.
        category_names: category names ordered by ``category_id``; filled from the datamodule at
            fit start and saved in the checkpoint.

    """

    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        layers: Sequence[int] = (1, 2, 3),
        pre_trained: bool = True,
        weights_path: str | None = None,
        input_size: Sequence[int] = DEFAULT_INPUT_SIZE,
        class_labels: str = "dataset",
        num_pseudo_classes: NumClusters = "auto",
        max_pseudo_classes: int = 20,
        temperature: float = 0.05,
        global_weight: float = 1.0,
        local_weight: float = 1.0,
        local_negatives: LocalNegatives = "all",
        noise_std: float = 1.0,
        noise_fraction: float = 0.5,
        noise_probability: float = 0.5,
        lr: float = 5e-3,
        projection_lr: float = 1e-3,
        betas: Sequence[float] = (0.5, 0.999),
        lr_decay_fraction: float = 0.8,
        lr_decay_factor: float = 0.1,
        gradient_clip_val: float = 5.0,
        map_reduction: MapReduction = "mean",
        score_reduction: ScoreReduction = "max",
        topk_ratio: float = 0.01,
        blur_sigma: float = 4.0,
        residual_calibration: bool = True,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
        category_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__(self.resolve_pre_processor(pre_processor, input_size), post_processor, evaluator, visualizer)
        self.lr = lr
        self.projection_lr = projection_lr
        self.betas = (float(betas[0]), float(betas[1]))
        self.lr_decay_fraction = lr_decay_fraction
        self.lr_decay_factor = lr_decay_factor
        self.gradient_clip_val = gradient_clip_val
        self.category_names = validate_category_names(category_names)
        self._init_class_labels(class_labels, num_pseudo_classes, max_pseudo_classes)
        self._view_augmentation = ContrastiveViewAugmenter()

        self.model: ClassAwareReconModel = ClassAwareReconModel(
            **self.backbone_arguments(backbone, layers, pre_trained, weights_path, input_size),
            noise_std=noise_std,
            noise_fraction=noise_fraction,
            noise_probability=noise_probability,
            map_reduction=map_reduction,
            score_reduction=score_reduction,
            topk_ratio=topk_ratio,
            blur_sigma=blur_sigma,
            residual_calibration=residual_calibration,
        )
        self.loss = ClassAwareReconLoss(temperature, global_weight, local_weight, local_negatives)

    def teacher_features(self, images: Tensor) -> list[Tensor]:
        """Frozen-teacher features of a pre-processed batch (used for pseudo-labels)."""
        return self.model.teacher_features(images)

    def view_augmentation(self, images: Tensor) -> Tensor:
        """The augmented view of a pre-processed batch."""
        return self._view_augmentation(images, self.pre_processor)

    def on_fit_start(self) -> None:
        """Record category names; say once when the contrastive terms only see one class."""
        names = self._record_category_names()
        if self.class_labels == "dataset" and len(names) == 1 and self.loss.contrastive.enabled:
            logger.info(
                "ClassAwareRecon: one class in the training data, so the global term contrasts images only "
                "with their own augmented view and the local term is zero; set class_labels='pseudo' to "
                "cluster the training images into pseudo-classes instead."
            )

    def on_train_start(self) -> None:
        """Fit the pseudo-class centroids and the category prototypes once (restored ones are kept)."""
        self._fit_pseudo_labels()
        self._fit_category_prototypes()

    def configure_optimizers(self) -> OptimizerLRScheduler:
        """Adam with two learning-rate groups, multiplied by ``lr_decay_factor`` at ``lr_decay_fraction``."""
        optimizer = torch.optim.Adam(
            [
                {"params": list(self.model.projections.parameters()), "lr": self.projection_lr},
                {"params": [*self.model.bottleneck.parameters(), *self.model.decoder.parameters()], "lr": self.lr},
            ],
            lr=self.lr,
            betas=self.betas,
        )
        return step_decay_schedule(optimizer, self.planned_steps, self.lr_decay_fraction, self.lr_decay_factor)

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Reconstruct the batch, encode its augmented view, and return ``L_rec + l1 L_global + l2 L_local``."""
        del args, kwargs  # These variables are not used.
        output = self.model(batch.image, clean_embedding=self.loss.contrastive.global_weight > 0)
        labels = self.training_labels(batch, output.view.teacher_features)
        augmented = None
        if self.loss.contrastive.enabled:
            augmented = self.model.encode_view(self.view_augmentation(batch.image))
        losses = self.loss(output, augmented, labels)
        terms = {
            f"train_{name}_loss": getattr(losses, name)
            for name in ("reconstruction", "global_contrastive", "local_contrastive")
        }
        self.log_training_loss(losses.total, batch.image.shape[0], terms)
        return {"loss": losses.total}

    @property
    def wants_class_balanced_batches(self) -> bool:
        """Ask our datamodules for class-balanced batches: SupCon needs same-category images in a batch.

        True with dataset labels and the contrastive terms on (pseudo labels must not see the categories).
        """
        return self.class_labels == "dataset" and self.loss.contrastive.enabled
