"""Class-aware contrastive reconstruction (Fan et al., arXiv 2412.04769)."""

from .lightning_model import ClassAwareRecon
from .loss import ClassAwareReconLoss, ClassAwareReconLosses
from .torch_model import ClassAwareReconModel, ClassAwareReconOutput, ViewEncoding

__all__ = [
    "ClassAwareRecon",
    "ClassAwareReconLoss",
    "ClassAwareReconLosses",
    "ClassAwareReconModel",
    "ClassAwareReconOutput",
    "ViewEncoding",
]
