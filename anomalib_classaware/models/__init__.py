"""Multi-class anomaly detection models for anomalib (``AnomalibModule`` subclasses).

``__all__`` lists the model classes only; each is exposed on ``anomalib.models`` when this package
has been imported (see :mod:`anomalib_classaware._registry`).
"""

from anomalib_classaware._registry import expose_models

from .class_aware_recon import ClassAwareRecon
from .mint_ad import MintAd
from .recontrast import ReContrast
from .rlr import Rlr

__all__ = ["ClassAwareRecon", "MintAd", "ReContrast", "Rlr"]

expose_models([ClassAwareRecon, MintAd, ReContrast, Rlr])
