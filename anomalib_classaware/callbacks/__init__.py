"""Lightning callbacks for reliable training: stop on a non-finite loss, resume with the same random states."""

from anomalib_classaware.callbacks.training_guards import (
    FiniteLossGuard,
    NonFiniteLossError,
    RandomStateCheckpoint,
)

__all__ = ["FiniteLossGuard", "NonFiniteLossError", "RandomStateCheckpoint"]
