"""RLR (He et al., ECCV 2024): reconstruction from a learnable reference representation."""

from .lightning_model import Rlr
from .loss import RlrLoss
from .torch_model import RlrModel, RlrOutput

__all__ = ["Rlr", "RlrLoss", "RlrModel", "RlrOutput"]
