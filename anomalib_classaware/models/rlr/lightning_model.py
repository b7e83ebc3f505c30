"""RLR: learning a unified reference representation for unsupervised multi-class anomaly detection.

He, Jiang, Chen, Zhang, Li, Luo, Huang, Fan, "Learning Unified Reference Representation for
Unsupervised Multi-class Anomaly Detection", ECCV 2024 (https://arxiv.org/abs/2403.11561).

The Lightning module wires the official training recipe around :class:`RlrModel`: Adam with
learning rate 1e-4 (no weight decay, no schedule) on the reconstruction transformers (the
backbone is frozen), feature jitter (scale 4, probability 1) in training, loss MSE + (1 - cos)
per level (Sec. 3.4). The official code trains 100 epochs with batch 16 at 256 px.

Deviations from the official code: no model selection at all (the official code keeps the
epoch with the best *test* image AUROC; here the weights of the last step are used, and the
post-processor's threshold and normalisation come from the validation split); the anomaly map
is blurred before every metric (the official code computes pixel AUROC before smoothing).

No class label is used: batches from multi-class datamodules may carry ``category_id``; it is
ignored.

Example:
    >>> from anomalib.engine import Engine
    >>> from anomalib_classaware import MultiClassMVTecAD, Rlr
    >>> model = Rlr()  # tf_efficientnet_b6 levels 2-3, 256 px
    >>> engine = Engine(max_epochs=100)
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

from anomalib_classaware.models.components.lightning.category_head import CategoryPrototypesMixin
from anomalib_classaware.models.components.lightning.category_names import validate_category_names
from anomalib_classaware.models.components.lightning.model_base import MultiClassModelMixin
from anomalib_classaware.models.components.lightning.pre_processing import DEFAULT_INPUT_SIZE
from anomalib_classaware.models.components.networks.anomaly_map import ScoreReduction

from .loss import RlrLoss
from .torch_model import RlrModel


class Rlr(CategoryPrototypesMixin, MultiClassModelMixin, AnomalibModule):
    """RLR Lightning module (unified multi-class recipe).

    Args:
        backbone: timm CNN name. Defaults to ``"tf_efficientnet_b6"`` (official code).
        layers: timm ``out_indices`` of the reconstructed levels. Defaults to ``(2, 3)`` (strides
            8 and 16 for EfficientNets, MobileNets and ResNets).
        pre_trained: load timm's pretrained weights. Defaults to ``True``.
        weights_path: local weights file of the full timm classifier for air-gapped machines;
            overrides ``pre_trained``. Defaults to ``None``.
        input_size: ``(H, W)`` of the default pre-processor's resize; it also fixes the size of the
            learnable references and attention masks, so the model accepts only this size. A
            custom ``pre_processor`` that resizes sets the size instead. Defaults to ``(256, 256)``.
        hidden_dims: ``d_model`` per level; ``None``: ``32 * stride`` (official: 256 at stride 8,
            512 at stride 16). Defaults to ``None``.
        num_layers: layers per transformer. Defaults to ``3`` (official code).
        num_heads: attention heads. Defaults to ``8``.
        ffn_ratio: FFN width as a multiple of ``d_model``. Defaults to ``4.0``.
        window_sizes: side of the local window per level; ``None``: 5 at 16x16, 7 at 32x32, 11 at
            64x64 (official) and ``min(h, w) // 8 + 3`` rounded up to odd otherwise. Defaults to ``None``.
        reference_weight: weight of the reference attention in ``w * A_lc + A_mlk``. Defaults to ``2.0``.
        pool_size: side of the stride-1 average pooling of the features (1 disables). Defaults to ``3``.
        jitter_scale: feature-jitter scale in training (0 disables). Defaults to ``4.0``.
        jitter_probability: probability that a training batch is jittered. Defaults to ``1.0``.
        score_reduction: ``"max"`` (official code) or ``"topk_mean"``. Defaults to ``"max"``.
        topk_ratio: fraction of pixels averaged by ``"topk_mean"``. Defaults to ``0.01``.
        blur_sigma: sigma of the anomaly-map Gaussian blur. Defaults to ``4.0``.
        blur_kernel_size: blur kernel size; ``None`` uses anomalib's ``2 * int(4 * sigma + 0.5) + 1``.
            Defaults to ``None``.
        lr: Adam learning rate. Defaults to ``1e-4`` (official code).
        weight_decay: Adam weight decay. Defaults to ``0.0``.
        pre_processor: pre-processor instance or flag to use the default (resize + ImageNet norm).
        post_processor: post-processor instance or flag to use the default.
        evaluator: evaluator instance or flag to use the default.
        visualizer: visualizer instance or flag to use the default.
        category_names: category names ordered by ``category_id``; filled from the datamodule at
            fit start and saved in the checkpoint (RLR itself never uses class labels).

    """

    def __init__(
        self,
        backbone: str = "tf_efficientnet_b6",
        layers: Sequence[int] = (2, 3),
        pre_trained: bool = True,
        weights_path: str | None = None,
        input_size: Sequence[int] = DEFAULT_INPUT_SIZE,
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
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
        category_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__(self.resolve_pre_processor(pre_processor, input_size), post_processor, evaluator, visualizer)
        self.lr = lr
        self.weight_decay = weight_decay
        self.category_names = validate_category_names(category_names)

        self.model: RlrModel = RlrModel(
            **self.backbone_arguments(backbone, layers, pre_trained, weights_path, input_size),
            hidden_dims=None if hidden_dims is None else tuple(int(dim) for dim in hidden_dims),
            num_layers=num_layers,
            num_heads=num_heads,
            ffn_ratio=ffn_ratio,
            window_sizes=None if window_sizes is None else tuple(int(size) for size in window_sizes),
            reference_weight=reference_weight,
            pool_size=pool_size,
            jitter_scale=jitter_scale,
            jitter_probability=jitter_probability,
            score_reduction=score_reduction,
            topk_ratio=topk_ratio,
            blur_sigma=blur_sigma,
            blur_kernel_size=blur_kernel_size,
        )
        self.loss = RlrLoss()

    def on_fit_start(self) -> None:
        """Record the datamodule's category names (or one class, said once in the log) in the hyperparameters."""
        self._record_category_names()

    def on_train_start(self) -> None:
        """Fit the category prototypes once (restored ones are kept)."""
        self._fit_category_prototypes()

    def configure_optimizers(self) -> OptimizerLRScheduler:
        """Adam on the reconstruction transformers (the backbone is frozen)."""
        return torch.optim.Adam(self.model.transformers.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Reconstruct the jittered features of the batch and return the summed per-level loss."""
        del args, kwargs  # These variables are not used.
        losses = self.loss.level_losses(self.model(batch.image))
        loss = torch.stack(losses).sum()
        terms = {f"train_loss_level{level}": level_loss for level, level_loss in enumerate(losses)}
        self.log_training_loss(loss, batch.image.shape[0], terms)
        return {"loss": loss}
