"""Per-category evaluation, by job (this module re-exports the pieces under their former import path).

- :mod:`.category_metrics`: metric names and :class:`CategoryMetrics` (one metric set per category);
- :mod:`.evaluator`: :class:`PerCategoryEvaluator` (anomalib ``Evaluator``, routing and DDP gathering);
- :mod:`.tables`: the printed table, the CSV file and the ``DataFrame``.
"""

from .category_metrics import (
    CATEGORY_ACCURACY,
    CSV_FILENAME,
    DEFAULT_CATEGORY,
    IMAGE_METRICS,
    MEAN_KEY,
    METRIC_NAMES,
    PIXEL_METRICS,
    RAW_FIELDS,
    REPORT_COLUMNS,
    THRESHOLDED_METRICS,
    CategoryMetrics,
    PerCategoryResults,
)
from .evaluator import PerCategoryEvaluator
from .tables import per_category_metrics_table, print_per_category_table, results_to_dataframe, write_csv

__all__ = [
    "CATEGORY_ACCURACY",
    "CSV_FILENAME",
    "DEFAULT_CATEGORY",
    "IMAGE_METRICS",
    "MEAN_KEY",
    "METRIC_NAMES",
    "PIXEL_METRICS",
    "RAW_FIELDS",
    "REPORT_COLUMNS",
    "THRESHOLDED_METRICS",
    "CategoryMetrics",
    "PerCategoryEvaluator",
    "PerCategoryResults",
    "per_category_metrics_table",
    "print_per_category_table",
    "results_to_dataframe",
    "write_csv",
]
