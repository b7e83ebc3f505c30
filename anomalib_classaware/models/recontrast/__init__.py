"""ReContrast (Guo et al., NeurIPS 2023): contrastive cross reconstruction with a trainable encoder."""

from .lightning_model import ReContrast
from .loss import ReContrastLoss
from .torch_model import ReContrastModel, ReContrastOutput

__all__ = ["ReContrast", "ReContrastLoss", "ReContrastModel", "ReContrastOutput"]
