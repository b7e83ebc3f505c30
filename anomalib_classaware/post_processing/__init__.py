"""Post-processing: per-category thresholds and normalisation for unified models."""

from anomalib_classaware.post_processing.per_category import (
    THRESHOLD_METHODS,
    PerCategoryPostProcessor,
    ThresholdMethod,
    batch_categories,
)

__all__ = ["THRESHOLD_METHODS", "PerCategoryPostProcessor", "ThresholdMethod", "batch_categories"]
