"""MINT-AD: class-aware implicit-neural-representation queries for a reconstruction transformer.

Jiang, Chen, Nie, Liu, Liu, Wang, Zheng, "Toward Multi-class Anomaly Detection: Exploring
Class-aware Unified Model against Inter-class Interference", arXiv 2403.14213 (2024).

What comes from where (no code is public; the arXiv HTML version is indexed but only its
abstract and the start of its introduction could be read, so nothing below goes beyond the
abstract):

- [paper] A reconstruction transformer whose decoder queries are class-aware embeddings
  produced by an implicit neural representation (INR) of category and position; trained with
  L_MSE + L_CE + L_Prior; class labels are used in training only. Datasets: MVTec AD, VisA,
  CIFAR-10 (unified setting).
- [UniAD] The base network and recipe (You et al., NeurIPS 2022, checked in its public
  ``experiments/MVTec-AD/config.yaml``; MINT-AD is written as an extension of it): frozen
  EfficientNet-B4, stages at strides 2-16 (its ``outlayers [1, 2, 3, 4]``) resized to stride 16 and
  concatenated (272 channels), 1x1 projection to 256, 4 + 4 post-norm layers, 8 heads, FFN 1024,
  dropout 0.1, 7x7 neighbour mask on every attention, layer-wise query decoder, feature jitter
  (scale 20, probability 1), MSE on the features, L2 anomaly map, AdamW lr 1e-4 / weight decay
  1e-4 decayed x0.1 at 80 % of training, gradient-norm clipping 0.1, 224 px input, Xavier init.
- [ours] The INR is a GELU MLP (3 linear layers, width 256) on [class embedding (64-d), Fourier
  features of the normalised (x, y) cell centres at frequencies pi and 2 pi] giving one query per
  position and per decoder layer (UniAD's layer-wise queries). Class embeddings are diagonal
  Gaussians; training samples the true class's Gaussian by reparameterisation; L_Prior is their
  KL to N(0, I) averaged over classes and dimensions. The classifier is LayerNorm + linear on the
  mean of the encoder tokens; at inference its softmax weights the class means, so no label is
  needed. In training the encoder runs twice, on the jittered tokens (reconstruction) and on the
  clean ones (classifier), so the classifier sees in training what it sees at inference. The
  target features are standardised per channel with statistics gathered in training
  (``standardize_features``; UniAD regresses raw features, whose scale a short run cannot reach).
  Fixed sine-cosine positions (UniAD learns them). Level resizing by average pooling (UniAD:
  bilinear). Loss weights 1 / 1 / 0.01. Map blurred with sigma 4, score = max (UniAD: max of the
  16 x 16 average-pooled map, no blur).

Class count: the class table is sized from the datamodule's ``category_names`` in ``setup`` of
the fit stage (before the optimiser is created) and saved as ``category_names``; a checkpoint
restores it (``load_from_checkpoint``, or ``trainer.test(ckpt_path=...)`` on a freshly built
model). Resuming a fit (``ckpt_path``) with other categories than the checkpoint's is an error
that names both lists; fitting a loaded model on other categories remaps the class table by name
(known categories keep their embedding and classifier row, new ones start fresh).
``class_conditioning="true_label"`` evaluates with the true class's embedding instead of the
predicted mixture: only possible in validation/test, where the batch carries ``category_id``
(never in ``predict`` or in an exported model, which see the image only).

Example:
    >>> from anomalib.engine import Engine
    >>> from anomalib_classaware import MultiClassMVTecAD
    >>> from anomalib_classaware.models import MintAd
    >>> model = MintAd()  # efficientnet_b4, 224 px
    >>> engine = Engine(max_epochs=1000)
    >>> engine.fit(model, datamodule=MultiClassMVTecAD(root="./datasets/MVTecAD"))  # doctest: +SKIP

"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import torch
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.types import STEP_OUTPUT, OptimizerLRScheduler

from anomalib_classaware.models.components import batch_category_ids
from anomalib_classaware.models.components.lightning.category_names import (
    category_names_from_datamodule,
    validate_category_names,
)
from anomalib_classaware.models.components.lightning.mixins import (
    PlannedStepsMixin,
    attach_predictions,
    step_decay_schedule,
)
from anomalib_classaware.models.components.lightning.model_base import MultiClassModelMixin
from anomalib_classaware.models.components.lightning.pre_processing import imagenet_pre_processor
from anomalib_classaware.models.components.networks.anomaly_map import ScoreReduction

from .loss import MintAdLoss
from .torch_model import MintAdModel

logger = logging.getLogger(__name__)

ClassConditioning = Literal["predicted", "true_label"]
UNIAD_INPUT_SIZE = (224, 224)


class MintAd(PlannedStepsMixin, MultiClassModelMixin, AnomalibModule):
    """MINT-AD Lightning module (unified multi-class recipe on UniAD's base).

    Args:
        backbone: timm CNN name. Defaults to ``"efficientnet_b4"`` (UniAD).
        layers: timm ``out_indices``, resized to the stride-``feature_stride`` grid and concatenated.
            Defaults to ``(0, 1, 2, 3)`` (EfficientNet-B4 strides 2-16, 272 channels, as UniAD).
        pre_trained: load timm's pretrained weights. Defaults to ``True``.
        weights_path: local weights file of the full timm classifier; overrides ``pre_trained``.
        input_size: ``(H, W)`` of the default pre-processor's resize. Defaults to ``(224, 224)`` (UniAD).
        num_classes: number of classes before fitting (a fit resizes it to the datamodule's
            categories). Defaults to ``len(category_names)`` or 1.
        class_aware: one embedding per class (MINT-AD) or a single shared one (ablation). Defaults to ``True``.
        class_conditioning: ``"predicted"`` (default: the image's predicted class distribution
            weights the class embeddings) or ``"true_label"`` (validation/test only: the batch's
            ``category_id`` picks the embedding; batches without it fall back to the prediction).
        hidden_dim: transformer width. Defaults to ``256``.
        num_encoder_layers: encoder layers. Defaults to ``4``.
        num_decoder_layers: decoder layers. Defaults to ``4``.
        num_heads: attention heads. Defaults to ``8``.
        feedforward_dim: feed-forward width. Defaults to ``1024``.
        dropout: transformer dropout. Defaults to ``0.1``.
        neighbour_window: odd side of the masked neighbourhood, ``0`` disables it. Defaults to ``7``.
        feature_stride: stride of the token grid. Defaults to ``16``.
        jitter_scale: feature-jitter scale. Defaults to ``20.0``.
        jitter_probability: feature-jitter probability per batch. Defaults to ``1.0``.
        embedding_dim: class-embedding width. Defaults to ``64``.
        inr_hidden_dim: INR width. Defaults to ``256``.
        inr_layers: INR linear layers. Defaults to ``3``.
        fourier_frequencies: INR position frequencies ``2^k * pi``, ``k < F``. Defaults to ``2`` (smooth
            across the token grid: higher ones make neighbouring queries nearly as different as distant ones).
        standardize_features: standardise the target features per channel with statistics gathered in
            training (ours); ``False`` reconstructs the raw features as UniAD. Defaults to ``True``.
        reconstruction_weight: weight of L_MSE. Defaults to ``1.0``.
        classification_weight: weight of L_CE. Defaults to ``1.0``.
        prior_weight: weight of L_Prior. Defaults to ``0.01``.
        lr: AdamW learning rate. Defaults to ``1e-4``.
        weight_decay: AdamW weight decay. Defaults to ``1e-4``.
        lr_decay_fraction: fraction of the planned steps after which the learning rate is
            multiplied by ``lr_decay_factor``. Defaults to ``0.8``.
        lr_decay_factor: learning-rate multiplier. Defaults to ``0.1``.
        gradient_clip_val: gradient-norm clipping (a trainer argument). Defaults to ``0.1``.
        blur_sigma: sigma of the anomaly-map blur. Defaults to ``4.0``.
        score_reduction: ``"max"`` or ``"topk_mean"``. Defaults to ``"max"``.
        topk_ratio: fraction of pixels averaged by ``"topk_mean"``. Defaults to ``0.01``.
        pre_processor: pre-processor instance or flag to use the default (resize + ImageNet norm).
        post_processor: post-processor instance or flag to use the default.
        evaluator: evaluator instance or flag to use the default.
        visualizer: visualizer instance or flag to use the default.
        category_names: category names ordered by ``category_id``; filled from the datamodule when
            fitting and saved in the checkpoint.

    """

    def __init__(
        self,
        backbone: str = "efficientnet_b4",
        layers: Sequence[int] = (0, 1, 2, 3),
        pre_trained: bool = True,
        weights_path: str | None = None,
        input_size: Sequence[int] = UNIAD_INPUT_SIZE,
        num_classes: int | None = None,
        class_aware: bool = True,
        class_conditioning: ClassConditioning = "predicted",
        hidden_dim: int = 256,
        num_encoder_layers: int = 4,
        num_decoder_layers: int = 4,
        num_heads: int = 8,
        feedforward_dim: int = 1024,
        dropout: float = 0.1,
        neighbour_window: int = 7,
        feature_stride: int = 16,
        jitter_scale: float = 20.0,
        jitter_probability: float = 1.0,
        embedding_dim: int = 64,
        inr_hidden_dim: int = 256,
        inr_layers: int = 3,
        fourier_frequencies: int = 2,
        standardize_features: bool = True,
        reconstruction_weight: float = 1.0,
        classification_weight: float = 1.0,
        prior_weight: float = 0.01,
        lr: float = 1e-4,
        weight_decay: float = 1e-4,
        lr_decay_fraction: float = 0.8,
        lr_decay_factor: float = 0.1,
        gradient_clip_val: float = 0.1,
        blur_sigma: float = 4.0,
        score_reduction: ScoreReduction = "max",
        topk_ratio: float = 0.01,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
        category_names: Sequence[str] | None = None,
    ) -> None:
        if class_conditioning not in {"predicted", "true_label"}:
            msg = f"Unknown class_conditioning {class_conditioning!r}; expected 'predicted' or 'true_label'."
            raise ValueError(msg)
        names = validate_category_names(category_names)
        if names is not None and num_classes is not None and num_classes != len(names):
            msg = f"`num_classes` ({num_classes}) differs from the number of `category_names` ({len(names)})."
            raise ValueError(msg)
        super().__init__(self.resolve_pre_processor(pre_processor, input_size), post_processor, evaluator, visualizer)
        self.category_names = names
        self.class_conditioning = class_conditioning
        self.lr = lr
        self.weight_decay = weight_decay
        self.lr_decay_fraction = lr_decay_fraction
        self.lr_decay_factor = lr_decay_factor
        self.gradient_clip_val = gradient_clip_val
        self._category_lookup: torch.Tensor | None = None
        self._warned_no_labels = False

        self.model: MintAdModel = MintAdModel(
            **self.backbone_arguments(backbone, layers, pre_trained, weights_path, input_size),
            num_classes=len(names) if names is not None else (num_classes or 1),
            class_aware=class_aware,
            feature_stride=feature_stride,
            hidden_dim=hidden_dim,
            num_encoder_layers=num_encoder_layers,
            num_decoder_layers=num_decoder_layers,
            num_heads=num_heads,
            feedforward_dim=feedforward_dim,
            dropout=dropout,
            neighbour_window=neighbour_window,
            jitter_scale=jitter_scale,
            jitter_probability=jitter_probability,
            embedding_dim=embedding_dim,
            inr_hidden_dim=inr_hidden_dim,
            inr_layers=inr_layers,
            fourier_frequencies=fourier_frequencies,
            standardize_features=standardize_features,
            blur_sigma=blur_sigma,
            score_reduction=score_reduction,
            topk_ratio=topk_ratio,
        )
        self.hparams["num_classes"] = self.model.num_classes
        self.loss = MintAdLoss(
            reconstruction_weight=reconstruction_weight,
            classification_weight=classification_weight,
            prior_weight=prior_weight,
        )

    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Resize to ``image_size`` (default 224 x 224, UniAD) and normalise with ImageNet statistics."""
        return imagenet_pre_processor(image_size or UNIAD_INPUT_SIZE)

    # ------------------------------------------------------------------ classes

    def _set_classes(self, names: list[str], previous: list[str] | None) -> None:
        """Size the class table for ``names``; rows of ``previous`` (the current table's names) are kept by name."""
        if previous is not None and previous != names and len(previous) == self.model.num_classes:
            source = [previous.index(name) if name in previous else -1 for name in names]
            self.model.remap_classes(source)
            logger.info(
                "MintAd: class table remapped by name from %s to %s; %s start from a fresh embedding.",
                previous,
                names,
                [name for name, index in zip(names, source, strict=True) if index < 0] or "no categories",
            )
        elif len(names) != self.model.num_classes:
            logger.info("MintAd: %d classes (%s); resizing the class table.", len(names), names)
            self.model.set_num_classes(len(names))
        self.category_names = names
        self.hparams["category_names"] = names
        self.hparams["num_classes"] = len(names)

    def setup(self, stage: str) -> None:
        """Size the class table from the datamodule when fitting (this runs before ``configure_optimizers``).

        The category names are recorded here rather than in ``on_fit_start``, which runs after the
        optimiser has been created. Without a datamodule, ``category_names`` given at construction are kept.
        """
        super().setup(stage)  # PlannedStepsMixin: forget a previous fit's planned steps
        if stage != "fit":
            return
        trainer = getattr(self, "_trainer", None)
        datamodule = getattr(trainer, "datamodule", None)
        previous = list(self.category_names) if self.category_names else None
        if datamodule is None and self.category_names:
            names = list(self.category_names)
        else:
            names = self._record_category_names()
        self._set_classes(names, previous)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resize the class table to the checkpoint's before its weights are loaded; restore the names.

        Raises:
            ValueError: when a fit resumes (``ckpt_path``) with other categories than the checkpoint's:
                the optimiser already holds the datamodule's class table, and the checkpoint's rows
                belong to other categories.

        """
        super().on_load_checkpoint(checkpoint)
        head = checkpoint.get("state_dict", {}).get("model.class_head.weight")
        names = checkpoint.get("hyper_parameters", {}).get("category_names")
        trainer = getattr(self, "_trainer", None)
        if trainer is not None and trainer.state.fn == TrainerFn.FITTING:
            self._check_resumed_classes(None if names is None else list(names), head)
        if head is not None:
            self.model.set_num_classes(int(head.shape[0]))
        if names:
            names = list(names)
            if len(names) != self.model.num_classes:
                msg = f"The checkpoint has {self.model.num_classes} classes but {len(names)} category names."
                raise ValueError(msg)
            self.category_names = names
            self.hparams["category_names"] = names
        self.hparams["num_classes"] = self.model.num_classes

    def _check_resumed_classes(self, names: list[str] | None, head: torch.Tensor | None) -> None:
        current = list(self.category_names or [])
        count = int(head.shape[0]) if head is not None else len(names or [])
        if (names is None or names == current) and count in {0, self.model.num_classes}:
            return
        shown = names if names is not None else f"{count} unnamed classes"
        msg = (
            f"MintAd: the checkpoint was trained on {count} categories {shown}, but the datamodule gives "
            f"{len(current)} categories {current}. Resuming a fit (`ckpt_path`) needs the checkpoint's categories: "
            "its class embeddings, classifier rows and optimiser state belong to them. Resume with a datamodule of "
            "those categories, or, to train on these categories from the checkpoint's weights, load it with "
            "`MintAd.load_from_checkpoint(path)` and fit without `ckpt_path` (the class table is then remapped by "
            "name: known categories keep their embedding, new ones start fresh)."
        )
        raise ValueError(msg)

    def _build_category_lookup(self) -> None:
        """Map the datamodule's category ids onto the model's (by name); -1 for categories it never saw."""
        self._category_lookup = None
        trainer = getattr(self, "_trainer", None)
        names = category_names_from_datamodule(getattr(trainer, "datamodule", None))
        if names is None or not self.category_names or names == list(self.category_names):
            return
        known = list(self.category_names)
        self._category_lookup = torch.tensor([known.index(name) if name in known else -1 for name in names])
        unknown = [name for name in names if name not in known]
        if unknown:
            logger.warning("MintAd: categories %s were not seen in training (known: %s).", unknown, known)

    def on_validation_start(self) -> None:
        """Match the datamodule's category ids to the model's."""
        self._build_category_lookup()

    def on_test_start(self) -> None:
        """Match the datamodule's category ids to the model's."""
        self._build_category_lookup()

    def _model_category_ids(self, batch: Batch) -> torch.Tensor | None:
        """The batch's category ids in the model's numbering, or ``None`` if the batch carries none."""
        if getattr(batch, "category_id", None) is None:
            return None
        ids = batch_category_ids(batch, batch.image.shape[0], batch.image.device)
        if self._category_lookup is not None:
            ids = self._category_lookup.to(ids.device)[ids]
        return ids

    # ------------------------------------------------------------------ optimisation

    def configure_optimizers(self) -> OptimizerLRScheduler:
        """AdamW on every trainable parameter, multiplied by ``lr_decay_factor`` at ``lr_decay_fraction`` (UniAD)."""
        parameters = [parameter for parameter in self.model.parameters() if parameter.requires_grad]
        optimizer = torch.optim.AdamW(parameters, lr=self.lr, betas=(0.9, 0.999), weight_decay=self.weight_decay)
        return step_decay_schedule(optimizer, self.planned_steps, self.lr_decay_fraction, self.lr_decay_factor)

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Reconstruct the jittered features conditioned on the true class; return the weighted loss."""
        del args, kwargs  # These variables are not used.
        batch_size = batch.image.shape[0]
        ids = batch_category_ids(batch, batch_size, batch.image.device)
        if int(ids.max()) >= self.model.num_classes or int(ids.min()) < 0:
            msg = (
                f"MintAd has {self.model.num_classes} classes but the batch holds category ids "
                f"{ids.unique().tolist()}; "
                "fit with a datamodule that has `category_names` or pass `category_names`/`num_classes`."
            )
            raise ValueError(msg)
        terms = self.loss(self.model(batch.image, category_ids=ids), ids)
        named = {f"train_loss_{name}": getattr(terms, name) for name in ("reconstruction", "classification", "prior")}
        self.log_training_loss(terms.total, batch_size, named, terms_on_epoch=True)
        return {"loss": terms.total}

    # ------------------------------------------------------------------ evaluation

    def _evaluate(self, batch: Batch, prefix: str) -> STEP_OUTPUT:
        ids = self._model_category_ids(batch)
        conditioning = None
        if self.class_conditioning == "true_label":
            if ids is None or bool((ids < 0).any()):
                if not self._warned_no_labels:
                    logger.warning(
                        "MintAd: class_conditioning='true_label' needs known category ids in the batch; "
                        "using the predicted class for batches without them."
                    )
                    self._warned_no_labels = True
            else:
                conditioning = ids
        predictions, logits = self.model.predict(batch.image, category_ids=conditioning)
        if ids is not None:
            known = ids >= 0
            if bool(known.any()):
                correct = (logits.argmax(dim=-1) == ids)[known].float().mean()
                self.log(f"{prefix}_class_accuracy", correct, on_epoch=True, batch_size=int(known.sum()))
        return attach_predictions(batch, predictions)

    def validation_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Predict scores and maps (and log how often the predicted class is right)."""
        del args, kwargs  # These variables are not used.
        return self._evaluate(batch, "val")

    def test_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Predict scores and maps (and log how often the predicted class is right)."""
        del args, kwargs  # These variables are not used.
        return self._evaluate(batch, "test")
