"""Fixed 2-D sine-cosine positional encodings for token grids (Vaswani et al. 2017, 2-D form as in UniAD and RLR).

anomalib already has the encoding (CFlow's ``positional_encoding_2d``, shape ``(C, H, W)``);
:func:`sincos_positions` returns it as ``(H*W, C)`` tokens in row-major order.
:func:`fourier_features` maps normalised ``(x, y)`` coordinates to ``sin/cos`` features at
geometric frequencies (for implicit neural representations).
"""

from __future__ import annotations

import math

import torch
from anomalib.models.image.cflow.utils import positional_encoding_2d
from torch import Tensor


def sincos_positions(dim: int, height: int, width: int) -> Tensor:
    """``(H*W, dim)`` sine-cosine encodings of a row-major ``H x W`` grid (``dim`` a multiple of 4)."""
    return positional_encoding_2d(dim, height, width).flatten(1).transpose(0, 1).contiguous()


def grid_coordinates(height: int, width: int) -> Tensor:
    """``(H*W, 2)`` cell-centre ``(x, y)`` coordinates in ``[-1, 1]``, row-major."""
    ys = (torch.arange(height, dtype=torch.float32) + 0.5) / height * 2 - 1
    xs = (torch.arange(width, dtype=torch.float32) + 0.5) / width * 2 - 1
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x.flatten(), grid_y.flatten()], dim=1)


def fourier_features(coordinates: Tensor, num_frequencies: int) -> Tensor:
    """``(N, 2)`` coordinates -> ``(N, 4 * num_frequencies)`` features ``sin/cos(2^k * pi * c)``, ``k < F``."""
    if num_frequencies < 1:
        msg = f"`num_frequencies` must be >= 1, got {num_frequencies}."
        raise ValueError(msg)
    frequencies = (2.0 ** torch.arange(num_frequencies, dtype=coordinates.dtype, device=coordinates.device)) * math.pi
    angles = coordinates[:, :, None] * frequencies  # (N, 2, F)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(1)
