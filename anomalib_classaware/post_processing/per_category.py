"""One threshold and one normalisation per category, applied by the category the model predicts.

anomalib's :class:`~anomalib.post_processing.PostProcessor` learns *one* image threshold, one
pixel threshold and one min-max from the validation images and rewrites every score as
``clamp((x - t) / (max - min) + 0.5, 0, 1)``. A unified model's categories live on different
score scales, so one threshold flags every normal image of some categories (measured on the demo:
269 of 320 test images flagged by the quickstart's export before this module).

:class:`PerCategoryPostProcessor` keeps those six values **per category** and, for each image,
gathers the values of its ``pred_category`` (the category the model predicts from the image
alone, see :class:`~anomalib_classaware.models.components.networks.category_prototypes.CategoryPrototypes`), so
the exported graph applies them with tensor indexing and no Python branch on values. Validation
images are grouped by the *predicted* category, which is what deployment will see. Batches
without ``pred_category`` (anomalib's own models) fall back to the dataset's ``category_id``, and
an exported graph without it uses the pooled values (anomalib's behaviour).

Thresholds (``threshold_method``):

* ``"f1"`` (default, anomalib's rule per category): the F1-optimal threshold of the category's
  validation images. A category whose validation images are all normal falls back to the
  ``normal_quantile`` of its normal scores; one with no normal image (or no image) to the pooled
  threshold. Each fallback is a warning naming the category.
* ``"normal_quantile"`` (what an inspection line has: normal images only): the
  ``normal_quantile`` (default 0.99) quantile of the category's *normal* validation scores (image)
  and of the pixels of its normal validation maps (pixel). A category with no normal validation
  image falls back to the pooled value, with a warning.

Min-max normalisation uses each category's validation scores and maps. With one category
everything reduces exactly to anomalib's post-processor (same metrics on the same data).

Before normalising, the raw ``pred_score`` / ``anomaly_map`` are kept on the batch as
``raw_pred_score`` / ``raw_anomaly_map``, so that
:class:`~anomalib_classaware.metrics.PerCategoryEvaluator` computes threshold-free metrics on raw
scores (normalisation clamps and ties scores, which biases AUROC and AUPRO).
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any, Literal

import torch
from anomalib.data import InferenceBatch
from anomalib.metrics.min_max import _MinMax
from anomalib.metrics.threshold.f1_adaptive_threshold import _F1AdaptiveThreshold
from anomalib.post_processing import PostProcessor
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor, distributed
from torchmetrics import Metric

from anomalib_classaware._buffers import ResizableBuffersMixin
from anomalib_classaware.data.dataclasses import ClassAwareInferenceBatch

logger = logging.getLogger(__name__)

ThresholdMethod = Literal["f1", "normal_quantile"]
THRESHOLD_METHODS: tuple[str, ...] = ("f1", "normal_quantile")
MAX_NORMAL_PIXELS_PER_IMAGE = 4096
"""Normal-pixel quantiles use a strided sample of at most this many pixels of each normal map."""

_BUFFERS = ("image_thresholds", "pixel_thresholds", "image_mins", "image_maxs", "pixel_mins", "pixel_maxs")


def batch_categories(batch: Any, size: int) -> Tensor | None:
    """``(B,)`` category of each sample: ``pred_category``, else the dataset's ``category_id``, else ``None``."""
    for name in ("pred_category", "category_id"):
        value = getattr(batch, name, None)
        if value is not None:
            return torch.as_tensor(value).reshape(size).long()
    return None


def _gather_objects(values: list[Any]) -> list[Any]:
    """Concatenate a per-process list across processes (identity without DDP)."""
    if not (distributed.is_available() and distributed.is_initialized()):
        return values
    gathered: list[list[Any] | None] = [None] * distributed.get_world_size()
    distributed.all_gather_object(gathered, values)
    return [value for part in gathered for value in (part or [])]


def _compute(metric: Metric) -> Any:
    """``metric.compute()`` (synchronised under DDP), also on a process whose share had no sample of it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*compute.*before.*update.*")
        return metric.compute()


class _CategoryFit:
    """The validation statistics of one category (not a module: nothing of it enters a checkpoint)."""

    def __init__(self) -> None:
        self.image_f1 = _F1AdaptiveThreshold()
        self.pixel_f1 = _F1AdaptiveThreshold()
        self.image_min_max = _MinMax()
        self.pixel_min_max = _MinMax()
        self.normal_scores: list[Tensor] = []
        self.normal_pixels: list[Tensor] = []
        self.labels: list[int] = []
        self.has_pixels = False
        self.seen = 0
        self.pixels_seen = 0
        # Every category gets one (empty) update, so DDP sync sees the same states on every process.
        self.image_f1.update(torch.empty(0), torch.empty(0, dtype=torch.long))
        self.pixel_f1.update(torch.empty(0), torch.empty(0, dtype=torch.long))

    def counts(self) -> tuple[int, int, bool]:
        """``(images seen, maps seen, any map with a mask)`` summed over the DDP processes.

        Under DDP each process sees other images (and predicts other categories), so whether a
        metric's ``compute`` (a collective) runs must depend on these totals, never on local state:
        a process skipping a collective that another one enters hangs both.
        """
        gathered = _gather_objects([(self.seen, self.pixels_seen, self.has_pixels)])
        return (
            sum(part[0] for part in gathered),
            sum(part[1] for part in gathered),
            any(part[2] for part in gathered),
        )

    def update(self, score: Tensor, label: Tensor | None, anomaly_map: Tensor | None, mask: Tensor | None) -> None:
        self.seen += score.numel()
        self.image_min_max.update(score)
        if anomaly_map is not None:
            self.pixels_seen += anomaly_map.shape[0]
            self.pixel_min_max.update(anomaly_map)
        if label is None:
            return
        label = label.long()
        self.labels.extend(int(value) for value in label)
        self.image_f1.update(score, label)
        normal = label == 0
        self.normal_scores.append(score[normal])
        if anomaly_map is not None:
            for normal_map in anomaly_map[normal]:
                flat = normal_map.reshape(-1)
                self.normal_pixels.append(flat[:: max(1, flat.numel() // MAX_NORMAL_PIXELS_PER_IMAGE)])
        if anomaly_map is not None and mask is not None:
            self.has_pixels = True
            self.pixel_f1.update(anomaly_map.reshape(-1), mask.reshape(-1).long())


class PerCategoryPostProcessor(ResizableBuffersMixin, PostProcessor):
    """anomalib's post-processor with one threshold and one min-max per (predicted) category.

    Args:
        threshold_method: ``"f1"`` (F1-optimal on the category's validation images) or
            ``"normal_quantile"`` (a quantile of its normal validation scores; module docstring).
        normal_quantile: Quantile of the normal scores / pixels used by ``"normal_quantile"`` and
            by the all-normal fallback of ``"f1"``. Defaults to ``0.99``.
        num_categories: Number of categories; ``None`` reads ``len(category_names)`` of the model
            or the datamodule when fitting (at least the largest id seen plus one).
        persist_categories: Keep the per-category values in the model's ``state_dict``. ``False``
            for anomalib's own models (their checkpoints then load into anomalib's post-processor).
        enable_normalization: As anomalib's post-processor.
        enable_thresholding: As anomalib's post-processor.
        enable_threshold_matching: As anomalib's post-processor.
        image_sensitivity: As anomalib's post-processor.
        pixel_sensitivity: As anomalib's post-processor.

    Raises:
        ValueError: for an unknown ``threshold_method`` or a ``normal_quantile`` outside ``(0, 1]``.

    """

    image_thresholds: Tensor
    pixel_thresholds: Tensor
    image_mins: Tensor
    image_maxs: Tensor
    pixel_mins: Tensor
    pixel_maxs: Tensor
    resizable_buffers = _BUFFERS

    def __init__(
        self,
        threshold_method: ThresholdMethod = "f1",
        normal_quantile: float = 0.99,
        num_categories: int | None = None,
        persist_categories: bool = True,
        enable_normalization: bool = True,
        enable_thresholding: bool = True,
        enable_threshold_matching: bool = True,
        image_sensitivity: float = 0.5,
        pixel_sensitivity: float = 0.5,
    ) -> None:
        super().__init__(
            enable_normalization=enable_normalization,
            enable_thresholding=enable_thresholding,
            enable_threshold_matching=enable_threshold_matching,
            image_sensitivity=image_sensitivity,
            pixel_sensitivity=pixel_sensitivity,
        )
        if threshold_method not in THRESHOLD_METHODS:
            msg = f"threshold_method must be one of {THRESHOLD_METHODS}, got {threshold_method!r}."
            raise ValueError(msg)
        if not 0.0 < float(normal_quantile) <= 1.0:
            msg = f"normal_quantile must lie in (0, 1], got {normal_quantile}."
            raise ValueError(msg)
        if num_categories is not None and num_categories < 1:
            msg = f"num_categories must be at least 1, got {num_categories}."
            raise ValueError(msg)
        self.threshold_method = threshold_method
        self.normal_quantile = float(normal_quantile)
        self.num_categories = num_categories
        self.persist_categories = persist_categories
        for name in _BUFFERS:
            self.register_buffer(name, torch.empty(0), persistent=persist_categories)
        self._fits: dict[int, _CategoryFit] = {}

    @property
    def _checkpoint_config_keys(self) -> tuple[str, ...]:
        return (*super()._checkpoint_config_keys, "threshold_method", "normal_quantile")

    @property
    def fitted_categories(self) -> int:
        """Number of categories with their own values (0 before fitting: anomalib's pooled behaviour)."""
        return int(self.image_thresholds.numel())

    @classmethod
    def from_post_processor(cls, post_processor: PostProcessor, **kwargs: Any) -> PerCategoryPostProcessor:
        """A per-category post-processor with ``post_processor``'s settings and fitted pooled values."""
        new = cls(
            enable_normalization=post_processor.enable_normalization,
            enable_thresholding=post_processor.enable_thresholding,
            enable_threshold_matching=post_processor.enable_threshold_matching,
            image_sensitivity=post_processor.image_sensitivity,
            pixel_sensitivity=post_processor.pixel_sensitivity,
            **kwargs,
        )
        for name in ("_image_threshold", "_pixel_threshold", "image_min", "image_max", "pixel_min", "pixel_max"):
            getattr(new, name).copy_(getattr(post_processor, name))
        return new.to(post_processor._image_threshold.device)

    # Fitting on validation batches ------------------------------------------------------------

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start a new fit, with one statistics set per known category."""
        del trainer
        count = self.num_categories or len(_category_names(pl_module) or []) or 1
        self._fits = {index: _CategoryFit() for index in range(count)}

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, *args: Any, **kwargs: Any
    ) -> None:
        """Update the pooled statistics (anomalib's) and those of each sample's category."""
        super().on_validation_batch_end(trainer, pl_module, outputs, *args, **kwargs)
        score = getattr(outputs, "pred_score", None)
        if score is None:
            return
        score = score.detach().reshape(-1).float().cpu()
        categories = batch_categories(outputs, score.numel())
        if categories is None:
            categories = torch.zeros(score.numel(), dtype=torch.long)
        label = getattr(outputs, "gt_label", None)
        anomaly_map = getattr(outputs, "anomaly_map", None)
        mask = getattr(outputs, "gt_mask", None)
        for category in categories.unique().tolist():
            index = categories == category
            fit = self._fits.setdefault(int(category), _CategoryFit())
            fit.update(
                score[index],
                None if label is None else torch.as_tensor(label).reshape(-1)[index].cpu(),
                None if anomaly_map is None else anomaly_map.detach()[index.to(anomaly_map.device)].float().cpu(),
                None if mask is None else mask[index.to(mask.device)].cpu(),
            )

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Compute the pooled values (anomalib's), then one set of values per category."""
        super().on_validation_epoch_end(trainer, pl_module)
        # Totals over the DDP processes, so every process takes the same branches (collectives below).
        local = (sum(fit.seen for fit in self._fits.values()), max(self._fits, default=0))
        totals = _gather_objects([local])
        if not sum(seen for seen, _ in totals):
            return
        names = _category_names(pl_module)
        count = max(self.num_categories or 0, len(names or []), max(largest for _, largest in totals) + 1)
        values = {name: torch.full((count,), math.nan) for name in _BUFFERS}
        for category in range(count):
            fit = self._fits.get(category) or _CategoryFit()
            label = names[category] if names and category < len(names) else str(category)
            for name, value in self._fit_category(fit, label).items():
                values[name][category] = value
        self._fits = {}
        if count == 1 and self.threshold_method == "f1":
            # One category is anomalib's case: its pooled values, bit for bit.
            pooled = self._pooled_values()
            values = {name: pooled[name].reshape(1) for name in _BUFFERS}
        for name, value in values.items():
            setattr(self, name, value.to(self._image_threshold.device))
        logger.info(
            "PerCategoryPostProcessor: %s thresholds and min-max for %d categories.", self.threshold_method, count
        )

    def _pooled_values(self) -> dict[str, Tensor]:
        return {
            "image_thresholds": self.image_threshold.detach().cpu(),
            "pixel_thresholds": self.pixel_threshold.detach().cpu(),
            "image_mins": self.image_min.detach().cpu(),
            "image_maxs": self.image_max.detach().cpu(),
            "pixel_mins": self.pixel_min.detach().cpu(),
            "pixel_maxs": self.pixel_max.detach().cpu(),
        }

    def _fit_category(self, fit: _CategoryFit, name: str) -> dict[str, Tensor]:
        pooled = self._pooled_values()
        labels = set(_gather_objects(fit.labels))
        normal_scores = torch.cat([torch.empty(0), *_gather_objects(fit.normal_scores)])
        normal_pixels = torch.cat([torch.empty(0), *_gather_objects(fit.normal_pixels)])
        values = dict(pooled)
        images_seen, maps_seen, has_pixels = fit.counts()
        if images_seen:
            image_min, image_max = _compute(fit.image_min_max)
            if torch.isfinite(image_min) and torch.isfinite(image_max):
                values["image_mins"], values["image_maxs"] = image_min, image_max
        if maps_seen:
            pixel_min, pixel_max = _compute(fit.pixel_min_max)
            if torch.isfinite(pixel_min) and torch.isfinite(pixel_max):
                values["pixel_mins"], values["pixel_maxs"] = pixel_min, pixel_max
        if not self.enable_thresholding:
            return values
        has_normal = normal_scores.numel() > 0
        if self.threshold_method == "f1" and labels == {0, 1}:
            values["image_thresholds"] = _compute(fit.image_f1)
            values["pixel_thresholds"] = _compute(fit.pixel_f1) if has_pixels else values["image_thresholds"]
            return values
        if has_normal:
            values["image_thresholds"] = torch.quantile(normal_scores.double(), self.normal_quantile).float()
            values["pixel_thresholds"] = (
                torch.quantile(normal_pixels.double(), self.normal_quantile).float()
                if normal_pixels.numel()
                else values["image_thresholds"]
            )
            if self.threshold_method == "f1":
                warnings.warn(
                    f"PerCategoryPostProcessor: the validation images predicted as category {name!r} are all normal; "
                    f"its threshold is the {self.normal_quantile} quantile of their scores instead of the F1-optimal "
                    "one. Add anomalous validation images of it, or use threshold_method='normal_quantile'.",
                    UserWarning,
                    stacklevel=2,
                )
            return values
        warnings.warn(
            f"PerCategoryPostProcessor: no normal validation image was predicted as category {name!r}, so its "
            "threshold cannot be fitted; it uses the threshold pooled over all categories. Add normal "
            "validation images of it.",
            UserWarning,
            stacklevel=2,
        )
        return values

    # Applying the values ----------------------------------------------------------------------

    def _per_sample(self, name: str, category: Tensor, ndim: int) -> Tensor:
        values = getattr(self, name)
        index = category.long().clamp(0, values.numel() - 1)
        return values[index].reshape(-1, *([1] * (ndim - 1)))

    def _post_process(
        self, pred_score: Tensor, anomaly_map: Tensor | None, category: Tensor
    ) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
        """Normalise and threshold with the values of each sample's category (export-safe tensor ops)."""
        image_threshold = self._per_sample("image_thresholds", category, pred_score.ndim)
        pred_label = pred_mask = None
        if self.enable_normalization:
            image_min = self._per_sample("image_mins", category, pred_score.ndim)
            image_max = self._per_sample("image_maxs", category, pred_score.ndim)
            pred_score = self._normalize(pred_score, image_min, image_max, image_threshold)
            image_threshold = self.normalized_image_threshold
        if anomaly_map is not None:
            pixel_threshold = self._per_sample("pixel_thresholds", category, anomaly_map.ndim)
            if self.enable_normalization:
                pixel_min = self._per_sample("pixel_mins", category, anomaly_map.ndim)
                pixel_max = self._per_sample("pixel_maxs", category, anomaly_map.ndim)
                anomaly_map = self._normalize(anomaly_map, pixel_min, pixel_max, pixel_threshold)
                pixel_threshold = self.normalized_pixel_threshold
            if self.enable_thresholding:
                pred_mask = anomaly_map > pixel_threshold
        if self.enable_thresholding:
            pred_label = pred_score > image_threshold
        return pred_score, anomaly_map, pred_label, pred_mask

    def forward(self, predictions: InferenceBatch | ClassAwareInferenceBatch) -> ClassAwareInferenceBatch:  # type: ignore[override]
        """Post-process the torch model's output (this is the exported head).

        With ``pred_category`` and fitted per-category values, each image uses its category's values;
        otherwise anomalib's pooled post-processing runs. ``pred_category`` is passed through.
        """
        category = getattr(predictions, "pred_category", None)
        if category is None or self.fitted_categories == 0 or predictions.pred_score is None:
            pooled = super().forward(InferenceBatch(*predictions[:4]))
            return ClassAwareInferenceBatch(*pooled, pred_category=category)
        pred_score, anomaly_map, pred_label, pred_mask = self._post_process(
            predictions.pred_score, predictions.anomaly_map, category
        )
        return ClassAwareInferenceBatch(
            pred_score=pred_score,
            pred_label=pred_label,
            anomaly_map=anomaly_map,
            pred_mask=pred_mask,
            pred_category=category,
        )

    def post_process_batch(self, batch: Any) -> None:
        """Keep the raw scores and maps on the batch, then normalise and threshold per category."""
        batch.raw_pred_score = batch.pred_score
        batch.raw_anomaly_map = batch.anomaly_map
        size = 0 if batch.pred_score is None else batch.pred_score.numel()
        category = batch_categories(batch, size) if size else None
        if category is None or self.fitted_categories == 0:
            super().post_process_batch(batch)
            return
        pred_score, anomaly_map, pred_label, pred_mask = self._post_process(
            batch.pred_score, batch.anomaly_map, category.to(batch.pred_score.device)
        )
        batch.pred_score, batch.anomaly_map = pred_score, anomaly_map
        if self.enable_thresholding:
            batch.pred_label = pred_label if getattr(batch, "pred_label", None) is None else batch.pred_label
            batch.pred_mask = pred_mask if getattr(batch, "pred_mask", None) is None else batch.pred_mask


def _category_names(pl_module: LightningModule) -> list[str] | None:
    names = getattr(pl_module, "category_names", None)
    if names:
        return list(names)
    datamodule = getattr(getattr(pl_module, "_trainer", None), "datamodule", None)
    names = getattr(datamodule, "category_names", None)
    return list(names) if names else None
