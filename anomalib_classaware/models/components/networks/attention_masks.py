"""Neighbourhood masks for attention over an ``H x W`` token grid (row-major token order).

UniAD (You et al., NeurIPS 2022, Sec. 3.3) masks each query's own neighbourhood so that the
transformer cannot copy its input; RLR (He et al., ECCV 2024, Sec. 3.3) restricts reference
attention to a local window (the same mask, not inverted) and masks the neighbourhood in its
learnable-key attention. Masks are boolean ``(H*W, H*W)`` tensors, ``True`` where the key lies
inside the ``window x window`` square centred on the query (clipped at the borders); build them
once per input size and pass ``mask`` or ``~mask`` to
:func:`torch.nn.functional.scaled_dot_product_attention` (``True`` = may attend).
"""

from __future__ import annotations

import torch
from torch import Tensor


def neighbourhood_mask(height: int, width: int, window: int, device: torch.device | str | None = None) -> Tensor:
    """``(H*W, H*W)`` boolean mask: ``mask[q, k]`` is ``True`` when token ``k`` is within ``window // 2`` of ``q``.

    Distances are Chebyshev (square windows). ``window`` must be a positive odd integer.

    Raises:
        ValueError: if ``window`` is not a positive odd integer or the grid is empty.

    """
    if window < 1 or window % 2 == 0:
        msg = f"`window` must be a positive odd integer (a square centred on the query), got {window}."
        raise ValueError(msg)
    if height < 1 or width < 1:
        msg = f"The token grid must be non-empty, got {height} x {width}."
        raise ValueError(msg)
    rows = torch.arange(height, device=device).repeat_interleave(width)
    cols = torch.arange(width, device=device).repeat(height)
    radius = window // 2
    row_close = (rows[:, None] - rows[None, :]).abs() <= radius
    col_close = (cols[:, None] - cols[None, :]).abs() <= radius
    return row_close & col_close
