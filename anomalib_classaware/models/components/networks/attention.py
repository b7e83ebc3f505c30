"""Multi-head attention with a fixed boolean mask, written with ``scaled_dot_product_attention``.

The reconstruction transformers (UniAD-style neighbour-masked attention, RLR's locality-constrained
and masked learnable-key attentions) attend over a fixed ``H x W`` token grid with a mask that
depends only on the grid size. :class:`MaskedAttention` keeps the projections of
:class:`torch.nn.MultiheadAttention` (query/key/value/output ``Linear`` layers) but calls
:func:`torch.nn.functional.scaled_dot_product_attention`, which picks a fused kernel on CPU and
GPU and exports to ONNX/OpenVINO. Build the mask once per grid size
(:func:`~anomalib_classaware.models.components.networks.attention_masks.neighbourhood_mask`) and keep it
as a non-persistent buffer.

Keys and values may come with batch size 1 (a learnable reference shared by the whole batch):
they are projected once and broadcast to the query's batch.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F


class MaskedAttention(nn.Module):
    """Multi-head scaled dot-product attention with an optional boolean mask (``True`` = may attend).

    Args:
        dim: token width (query, key and value inputs and the output).
        num_heads: number of heads; must divide ``dim``.
        bias: whether the projections have a bias.

    """

    def __init__(self, dim: int, num_heads: int, bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            msg = f"`dim` ({dim}) must be divisible by `num_heads` ({num_heads})."
            raise ValueError(msg)
        self.num_heads = num_heads
        self.query = nn.Linear(dim, dim, bias=bias)
        self.key = nn.Linear(dim, dim, bias=bias)
        self.value = nn.Linear(dim, dim, bias=bias)
        self.out = nn.Linear(dim, dim, bias=bias)

    def _heads(self, tokens: Tensor, batch_size: int) -> Tensor:
        """``(b, L, dim)`` -> ``(batch_size, heads, L, dim / heads)``; a batch of 1 is broadcast."""
        batch, length, dim = tokens.shape
        heads = tokens.reshape(batch, length, self.num_heads, dim // self.num_heads).transpose(1, 2)
        return heads.expand(batch_size, -1, -1, -1) if batch != batch_size else heads

    def forward(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None) -> Tensor:
        """Attend ``query`` ``(B, Lq, dim)`` to ``key``/``value`` ``(B or 1, Lk, dim)``; returns ``(B, Lq, dim)``.

        ``mask`` is a boolean ``(Lq, Lk)`` tensor, ``True`` where the query may attend to the key.
        Every query must be allowed at least one key (a fully masked row gives NaN).
        """
        batch_size, length, dim = query.shape
        attended = F.scaled_dot_product_attention(
            self._heads(self.query(query), batch_size),
            self._heads(self.key(key), batch_size),
            self._heads(self.value(value), batch_size),
            attn_mask=mask,
        )
        return self.out(attended.transpose(1, 2).reshape(batch_size, length, dim))
