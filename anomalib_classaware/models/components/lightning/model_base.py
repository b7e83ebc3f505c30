"""``MultiClassModelMixin``: the mixins every multi-class model of the package combines, in one base."""

from __future__ import annotations

from .backbone_model import BackboneModelMixin
from .category_names import CategoryNamesMixin
from .export_hook import NetworkInt8ExportMixin
from .mixins import FeatureReconstructionMixin, OfflineCheckpointMixin


class MultiClassModelMixin(
    NetworkInt8ExportMixin, FeatureReconstructionMixin, OfflineCheckpointMixin, CategoryNamesMixin, BackboneModelMixin
):
    """INT8-aware export, feature-reconstruction defaults, offline checkpoints, category names, ``__init__`` head.

    Put it last before ``AnomalibModule``, which stays a direct base: anomalib finds models by name among
    ``AnomalibModule.__subclasses__()``. The model's own mixins (planned steps, class labels, category
    prototypes) go before it.
    """
