"""Statistics helpers that import nothing heavy (used by the metrics and the benchmark report)."""

from __future__ import annotations

import math
from collections.abc import Iterable


def nanmean(values: Iterable[float]) -> float:
    """Mean of the finite values; NaN if there are none."""
    finite = [value for value in values if not math.isnan(value)]
    return sum(finite) / len(finite) if finite else math.nan
