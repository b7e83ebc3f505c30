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

No class label is used: batches from multi-class datamodules may carry ``category_id``; it is
ignored.

Example:
    >>> from anomalib.engine import Engine
    >>> from anomalib_classaware import MultiClassMVTecAD, ReContrast
    >>> model = ReContrast()  # wide_resnet50_2, 256 px
    >>> engine = Engine(max_steps=5000)
    >>> engine.fit(model, datamodule=MultiClassMVTecAD(root="./datasets/MVTecAD"))  # doctest: +SKIP

"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.fabric.utilities.types import _MAP_LOCATION_TYPE
from lightning.pytorch.utilities.types import STEP_OUTPUT, OptimizerLRScheduler

from anomalib_classaware.models.components import alpha_schedule
from anomalib_classaware.models.components.anomaly_map import ScoreReduction
from anomalib_classaware.models.components.categories import CategoryNamesMixin, validate_category_names
from anomalib_classaware.models.components.pre_processing import DEFAULT_INPUT_SIZE, imagenet_pre_processor

from .loss import ReContrastLoss
from .torch_model import ReContrastModel


class ReContrast(CategoryNamesMixin, AnomalibModule):
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
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
        category_names: Sequence[str] | None = None,
    ) -> None:
        if pre_processor is True:
            pre_processor = self.configure_pre_processor(image_size=(int(input_size[0]), int(input_size[1])))
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        model_input_size = self.input_size or input_size
        self.alpha_start = alpha_start
        self.alpha_end = alpha_end
        self.alpha_warmup_fraction = alpha_warmup_fraction
        self.lr = lr
        self.encoder_lr = encoder_lr
        self.weight_decay = weight_decay
        self.lr_decay_fraction = lr_decay_fraction
        self.lr_decay_factor = lr_decay_factor
        self._planned_steps: int | None = None
        self.category_names = validate_category_names(category_names)

        self.model: ReContrastModel = ReContrastModel(
            backbone=backbone,
            layers=tuple(int(layer) for layer in layers),
            input_size=(int(model_input_size[0]), int(model_input_size[1])),
            pre_trained=pre_trained,
            weights_path=weights_path,
            score_reduction=score_reduction,
            topk_ratio=topk_ratio,
            blur_sigma=blur_sigma,
            blur_kernel_size=blur_kernel_size,
            decoder_activation=decoder_activation,
        )
        self.loss = ReContrastLoss(factor=hard_mining_factor)

    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Resize to ``image_size`` (default 256 x 256) and normalise with ImageNet statistics."""
        return imagenet_pre_processor(image_size)

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | Path,
        map_location: _MAP_LOCATION_TYPE = None,
        hparams_file: str | Path | None = None,
        strict: bool | None = None,
        weights_only: bool = True,
        **kwargs: Any,
    ) -> ReContrast:
        """Load a checkpoint without fetching backbone weights (the checkpoint holds both encoders).

        ``pre_trained`` defaults to ``False`` and ``weights_path`` to ``None`` here, so that loading
        works on machines without the model hub or the original weights file; pass them to override.
        """
        kwargs.setdefault("pre_trained", False)
        kwargs.setdefault("weights_path", None)
        return super().load_from_checkpoint(
            checkpoint_path,
            map_location=map_location,
            hparams_file=hparams_file,
            strict=strict,
            weights_only=weights_only,
            **kwargs,
        )

    @property
    def planned_steps(self) -> int:
        """Optimizer steps this fit is planned to take (``trainer.estimated_stepping_batches``)."""
        if self._planned_steps is None:
            steps = self.trainer.estimated_stepping_batches
            if not math.isfinite(steps) or steps < 1:
                msg = "ReContrast's schedules need a finite training length: set max_steps or max_epochs."
                raise ValueError(msg)
            self._planned_steps = int(steps)
        return self._planned_steps

    def setup(self, stage: str) -> None:
        """Forget a previous fit's planned steps (runs before ``configure_optimizers``; a new trainer may differ)."""
        super().setup(stage)
        self._planned_steps = None

    def on_fit_start(self) -> None:
        """Record the datamodule's category names (or one class, said once in the log) in the hyperparameters."""
        self._record_category_names()

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
        milestone = max(1, int(self.lr_decay_fraction * self.planned_steps))
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[milestone], gamma=self.lr_decay_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

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
        """Cross-reconstruct the batch and return the hard-mining global cosine loss."""
        del args, kwargs  # These variables are not used.
        alpha = self.current_alpha()
        loss = self.loss(self.model(batch.image), alpha=alpha)
        batch_size = batch.image.shape[0]
        self.log("train_loss", loss.detach(), on_step=True, on_epoch=True, prog_bar=True, batch_size=batch_size)
        self.log("train_hard_mining_alpha", alpha, on_step=True, on_epoch=False, batch_size=batch_size)
        return {"loss": loss}

    def validation_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Predict scores and maps; the post-processor learns its threshold and normalisation from them."""
        del args, kwargs  # These variables are not used.
        predictions = self.model(batch.image)
        return batch.update(**predictions._asdict())

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """No gradient clipping, no sanity validation; the training length is left to the user."""
        return {"gradient_clip_val": 0, "num_sanity_val_steps": 0}

    @property
    def learning_type(self) -> LearningType:
        """ReContrast learns from normal images only."""
        return LearningType.ONE_CLASS
