"""Metric names and the per-category metric sets (threshold-free curves and thresholded counts, DDP-synced)."""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from anomalib.metrics import AUPRO, AUROC, F1Max
from torch import nn
from torchmetrics import Metric

IMAGE_METRICS: tuple[str, ...] = ("image_AUROC", "image_F1Max")
PIXEL_METRICS: tuple[str, ...] = ("pixel_AUROC", "pixel_AUPRO")
METRIC_NAMES: tuple[str, ...] = IMAGE_METRICS + PIXEL_METRICS
THRESHOLDED_METRICS: tuple[str, ...] = ("image_F1", "label_accuracy")
CATEGORY_ACCURACY = "category_accuracy"
REPORT_COLUMNS: tuple[str, ...] = (*METRIC_NAMES, *THRESHOLDED_METRICS, CATEGORY_ACCURACY)
RAW_FIELDS: dict[str, str] = {"pred_score": "raw_pred_score", "anomaly_map": "raw_anomaly_map"}
"""Batch field -> attribute holding its value before post-processing (set by our post-processor)."""
MEAN_KEY = "mean"
DEFAULT_CATEGORY = "all"
CSV_FILENAME = "per_category_metrics.csv"

PerCategoryResults = dict[str, dict[str, float]]
"""``{category: {metric: value}}``, categories in report order, ``"mean"`` last."""

IMAGE_FIELDS = ("pred_score", "gt_label")
PIXEL_FIELDS = ("anomaly_map", "gt_mask")
LABEL_FIELDS = ("pred_label", "pred_category", "category_id")
ALL_FIELDS = (*IMAGE_FIELDS, *PIXEL_FIELDS, *LABEL_FIELDS)


class _BinaryCounts(Metric):
    """Number of positive and negative targets seen (summed across processes)."""

    full_state_update = False
    pos: torch.Tensor
    neg: torch.Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("pos", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("neg", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, target: torch.Tensor) -> None:
        """Count the positive (> 0.5) and negative entries of ``target``."""
        positives = int((target > 0.5).sum())
        self.pos += positives
        self.neg += target.numel() - positives

    def compute(self) -> tuple[int, int]:
        """Return ``(positives, negatives)``."""
        return int(self.pos), int(self.neg)


class _ThresholdedCounts(Metric):
    """Confusion counts of ``pred_label`` and correct ``pred_category`` predictions (summed across processes)."""

    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in ("tp", "fp", "fn", "tn", "category_correct", "category_total"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, batch: Any) -> None:
        """Count from ``pred_label``/``gt_label`` and ``pred_category``/``category_id`` where both are set."""
        pred_label, gt_label = getattr(batch, "pred_label", None), getattr(batch, "gt_label", None)
        if pred_label is not None and gt_label is not None:
            pred, target = pred_label.reshape(-1).bool(), gt_label.reshape(-1).bool()
            self.tp += int((pred & target).sum())
            self.fp += int((pred & ~target).sum())
            self.fn += int((~pred & target).sum())
            self.tn += int((~pred & ~target).sum())
        pred_category, category_id = getattr(batch, "pred_category", None), getattr(batch, "category_id", None)
        if pred_category is not None and category_id is not None:
            predicted = torch.as_tensor(pred_category).reshape(-1).long().cpu()
            self.category_correct += int((predicted == torch.as_tensor(category_id).reshape(-1).long().cpu()).sum())
            self.category_total += predicted.numel()

    def compute(self) -> dict[str, float]:
        """``image_F1``, ``label_accuracy`` and ``category_accuracy`` of what was counted."""
        tp, fp, fn, tn = (int(getattr(self, name)) for name in ("tp", "fp", "fn", "tn"))
        results: dict[str, float] = {}
        if tp + fp + fn + tn:
            results["image_F1"] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan
            results["label_accuracy"] = (tp + tn) / (tp + fp + fn + tn)
        if int(self.category_total):
            results[CATEGORY_ACCURACY] = int(self.category_correct) / int(self.category_total)
        return results


class CategoryMetrics(nn.Module):
    """The metric set of one category.

    Args:
        category: Category name (used in warnings).
        pixel_metrics: Whether to create the pixel-level metrics.
        fpr_limit: FPR limit of AUPRO.

    """

    def __init__(self, category: str, pixel_metrics: bool = True, fpr_limit: float = 0.3) -> None:
        super().__init__()
        self.category = category
        self.image_counts = _BinaryCounts()
        self.thresholded = _ThresholdedCounts()
        # ``normalization=None``: torchmetrics would otherwise apply a sigmoid to every update whose
        # scores leave [0, 1] (so batches would be scaled inconsistently when scores are unnormalised).
        self.image_metrics = nn.ModuleDict(
            {
                "image_AUROC": AUROC(fields=list(IMAGE_FIELDS), prefix="image_", normalization=None),
                "image_F1Max": F1Max(fields=list(IMAGE_FIELDS), prefix="image_"),
            },
        )
        self.pixel_counts: _BinaryCounts | None = None
        self.pixel_metrics: nn.ModuleDict | None = None
        if pixel_metrics:
            self.pixel_counts = _BinaryCounts()
            self.pixel_metrics = nn.ModuleDict(
                {
                    "pixel_AUROC": AUROC(fields=list(PIXEL_FIELDS), prefix="pixel_", normalization=None),
                    "pixel_AUPRO": AUPRO(fields=list(PIXEL_FIELDS), prefix="pixel_", fpr_limit=fpr_limit),
                },
            )
        # AUPRO registers ``fpr_limit`` as a persistent buffer; metric sets are created lazily,
        # so nothing of them may enter the model's state_dict (strict checkpoint loading).
        for module in self.modules():
            module._non_persistent_buffers_set.update(module._buffers.keys())

    def update(self, batch: Any) -> None:
        """Update with the samples of ``batch`` (any object with the batch fields as attributes)."""
        self.thresholded.update(batch)
        if all(getattr(batch, name, None) is not None for name in IMAGE_FIELDS):
            self.image_counts.update(batch.gt_label)
            for metric in self.image_metrics.values():
                metric.update(batch)
        if self.pixel_metrics is not None and all(getattr(batch, name, None) is not None for name in PIXEL_FIELDS):
            self.pixel_counts.update(batch.gt_mask)  # type: ignore[union-attr]
            for metric in self.pixel_metrics.values():
                metric.update(batch)

    def compute(self) -> dict[str, float]:
        """Compute the metrics that received data.

        A metric group whose targets are all of one class is undefined: its values are NaN
        and a warning names the category. Groups that never received data are left out.

        Returns:
            ``{metric_name: value}``, values as fractions in ``[0, 1]``.

        """
        results: dict[str, float] = {}
        groups = [("images", self.image_counts, self.image_metrics)]
        if self.pixel_metrics is not None and self.pixel_counts is not None:
            groups.append(("pixels", self.pixel_counts, self.pixel_metrics))
        for unit, counts, metrics in groups:
            positives, negatives = counts.compute()
            if positives + negatives == 0:
                continue
            if positives == 0 or negatives == 0:
                kind = "normal" if positives == 0 else "anomalous"
                warnings.warn(
                    f"Category {self.category!r}: all test {unit} are {kind}; "
                    f"{', '.join(metrics.keys())} undefined and reported as NaN.",
                    UserWarning,
                    stacklevel=2,
                )
                results.update(dict.fromkeys(metrics.keys(), math.nan))
                continue
            for name, metric in metrics.items():
                results[name] = float(metric.compute())
        if results:
            results.update(self.thresholded.compute())
        return results


class CategoryMetricsDict(nn.ModuleDict):
    """``ModuleDict`` of :class:`CategoryMetrics` that never takes part in checkpoints.

    Its children have no persistent state, so it adds no keys to a ``state_dict``; keys found
    under it in a checkpoint (e.g. written by other code) are ignored instead of failing a
    strict load.
    """

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # ``state_dict`` is the loader's private copy; the children are loaded from it afterwards.
        for key in [key for key in state_dict if key.startswith(prefix)]:
            del state_dict[key]
        super()._load_from_state_dict(state_dict, prefix, *args)
