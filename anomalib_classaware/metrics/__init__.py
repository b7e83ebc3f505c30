"""Metrics for multi-class anomaly detection: per-category evaluation."""

from anomalib_classaware.metrics.exact_auroc import mean_category_auroc
from anomalib_classaware.metrics.per_category import (
    CSV_FILENAME,
    MEAN_KEY,
    METRIC_NAMES,
    CategoryMetrics,
    PerCategoryEvaluator,
    PerCategoryResults,
    per_category_metrics_table,
    print_per_category_table,
    results_to_dataframe,
    write_csv,
)

__all__ = [
    "CSV_FILENAME",
    "MEAN_KEY",
    "METRIC_NAMES",
    "CategoryMetrics",
    "PerCategoryEvaluator",
    "PerCategoryResults",
    "mean_category_auroc",
    "per_category_metrics_table",
    "print_per_category_table",
    "results_to_dataframe",
    "write_csv",
]
