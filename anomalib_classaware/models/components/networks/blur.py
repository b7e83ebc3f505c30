"""Separable Gaussian blur of anomaly maps: anomalib's ``GaussianBlur2d`` as two 1-D convolutions.

anomalib's ``GaussianBlur2d`` convolves with the full ``k x k`` kernel (``k = 33`` for the usual
sigma 4): ``k^2`` multiply-adds per pixel. A Gaussian is separable, so a ``k x 1`` and a ``1 x k``
convolution give the same map with ``2k``. On a CPU this matters after export: at 128 px the
33 x 33 blur took 2 ms of ReContrast-style models' 16 ms in OpenVINO FP32, and 11-30 ms in
INT8 graphs (where the plugin picks another kernel for it), more than the whole network
(``anomalib-classaware-bench --profile speed``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from anomalib.models.components import GaussianBlur2d


class SeparableGaussianBlur2d(GaussianBlur2d):
    """Same output as :class:`anomalib.models.components.GaussianBlur2d` (to float rounding), ``O(k)`` per pixel.

    The state dict is anomalib's (the persistent 2-D ``kernel`` buffer), so checkpoints written with
    either class load into the other. The 1-D factors are the 2-D kernel's marginals, which equal
    the normalised 1-D Gaussians it is the outer product of.
    """

    def __init__(self, sigma: float, channels: int = 1, kernel_size: int | None = None) -> None:
        super().__init__(sigma=sigma, channels=channels, kernel_size=kernel_size)
        kernel = self.kernel[:1, 0]  # (1, kh, kw)
        self.column: torch.Tensor
        self.row: torch.Tensor
        column = kernel.sum(dim=-1, keepdim=True)  # (1, kh, 1)
        row = kernel.sum(dim=-2, keepdim=True)  # (1, 1, kw)
        self.register_buffer("column", column.expand(self.channels, -1, -1).unsqueeze(1).clone(), persistent=False)
        self.register_buffer("row", row.expand(self.channels, -1, -1).unsqueeze(1).clone(), persistent=False)

    def forward(self, input_tensor: torch.Tensor) -> torch.Tensor:
        """Blur ``(B, C, H, W)`` with reflect padding ("same" size), as anomalib does."""
        padded = F.pad(input_tensor, self.padding_shape, mode=self.border_type)
        vertical = F.conv2d(padded, self.column, groups=self.channels)
        return F.conv2d(vertical, self.row, groups=self.channels)
