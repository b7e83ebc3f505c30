"""Reverse Distillation (Deng & Li, CVPR 2022) on any timm CNN, built from the shared components."""

from .torch_model import ReverseDistillationModel

__all__ = ["ReverseDistillationModel"]
