"""MINT-AD (Jiang et al., arXiv 2403.14213): class-aware INR queries for a UniAD-style reconstruction transformer."""

from .lightning_model import MintAd
from .loss import MintAdLoss, MintAdLossTerms, prior_kl
from .torch_model import ClassEmbeddings, MintAdModel, MintAdOutput, QueryINR

__all__ = [
    "ClassEmbeddings",
    "MintAd",
    "MintAdLoss",
    "MintAdLossTerms",
    "MintAdModel",
    "MintAdOutput",
    "QueryINR",
    "prior_kl",
]
