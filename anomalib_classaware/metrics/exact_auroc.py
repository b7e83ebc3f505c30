"""Exact image AUROC per category from numpy arrays (float64, ties count one half), for exported graphs' scores."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def mean_category_auroc(scores: np.ndarray, labels: np.ndarray, categories: Sequence[str]) -> float:
    """Image AUROC per category (exact, float64; ties count one half), then the mean; NaN if none has both labels.

    Not torchmetrics' ``binary_auroc`` (:class:`~anomalib_classaware.metrics.CategoryMetrics`): it computes in
    float32 and applies a sigmoid as soon as one score lies outside [0, 1], which merges the close scores of a
    quantized graph into ties.
    """
    values = []
    categories = np.asarray(categories)
    for category in dict.fromkeys(categories.tolist()):
        selected = categories == category
        positive, negative = scores[selected & (labels == 1)], scores[selected & (labels == 0)]
        if len(positive) and len(negative):
            greater = (positive[:, None] > negative[None, :]).mean()
            ties = (positive[:, None] == negative[None, :]).mean()
            values.append(float(greater + 0.5 * ties))
    return float(np.mean(values)) if values else math.nan
