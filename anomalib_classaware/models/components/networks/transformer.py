"""UniAD-style transformer layers with a fixed attention mask (You et al., NeurIPS 2022, Sec. 3.3).

- :class:`NeighbourMaskedEncoderLayer`: post-norm encoder layer, ``q = k = x + pos``, ``v = x``.
- :class:`LayerwiseQueryDecoderLayer`: UniAD's layer-wise query decoder layer. Its query is an
  input (UniAD: a learned embedding per layer; MINT-AD: class-aware queries from an implicit
  neural representation); it attends to the encoder output, then to the previous decoder layer's
  output, then goes through the feed-forward network. Image content reaches the decoder only as
  keys and values.

Attention is :class:`~.attention.MaskedAttention` (``scaled_dot_product_attention``): masks are
boolean ``(N_q, N_k)`` tensors, ``True`` where the query **may** attend to the key, so UniAD's
neighbour mask is ``~neighbourhood_mask(h, w, window)``. Build the mask once per input size (a
non-persistent buffer of the owning model) and pass it to every layer; a query with no key left
would produce NaN, so check the mask once with :func:`check_attention_mask`. UniAD also drops
attention weights (dropout 0.1); here dropout acts on the residual branches and in the
feed-forward network only.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from .attention import MaskedAttention
from .blocks import make_activation


def check_attention_mask(mask: Tensor, what: str = "attention mask") -> None:
    """Raise ``ValueError`` if some query of a ``(N_q, N_k)`` mask (``True`` = may attend) has no key to attend to."""
    blocked = ~mask.any(dim=-1)
    if bool(blocked.any()):
        msg = (
            f"The {what} leaves {int(blocked.sum())} of {mask.shape[0]} tokens with nothing to attend to "
            f"(token grid too small for the window); use a smaller window or a larger input size."
        )
        raise ValueError(msg)


def _with_position(tokens: Tensor, position: Tensor | None) -> Tensor:
    return tokens if position is None else tokens + position


class _FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, dropout: float, activation: str) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden_dim),
            make_activation(activation),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, dim),
        )

    def forward(self, tokens: Tensor) -> Tensor:
        return self.net(tokens)


class _PostNormLayer(nn.Module):
    """Post-norm transformer layer: the attention sub-layers named in :attr:`attentions`, then the FFN.

    Sub-layer ``i`` (1-based, the FFN last) has ``dropout{i}`` on its residual branch and ``norm{i}`` after it.

    Args:
        dim: token width.
        num_heads: attention heads (``dim`` must be divisible by it).
        feedforward_dim: hidden width of the feed-forward network.
        dropout: dropout of the residual branches and in the feed-forward network.
        activation: ``"relu"`` (UniAD) or ``"gelu"``.

    """

    #: Names of the attention sub-layers, in order.
    attentions: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        dim: int,
        num_heads: int,
        feedforward_dim: int,
        dropout: float = 0.1,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        for name in self.attentions:
            self.add_module(name, MaskedAttention(dim, num_heads))
        self.feedforward = _FeedForward(dim, feedforward_dim, dropout, activation)
        sublayers = range(1, len(self.attentions) + 2)
        for index in sublayers:
            self.add_module(f"norm{index}", nn.LayerNorm(dim))
        for index in sublayers:
            self.add_module(f"dropout{index}", nn.Dropout(dropout))


class NeighbourMaskedEncoderLayer(_PostNormLayer):
    """Post-norm transformer encoder layer with a fixed attention mask (UniAD's neighbour-masked encoder).

    Arguments as :class:`_PostNormLayer`'s (``dim``, ``num_heads``, ``feedforward_dim``, ``dropout``, ``activation``).
    """

    attentions = ("attention",)

    def forward(self, tokens: Tensor, position: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """``(B, N, dim)`` tokens -> ``(B, N, dim)``; ``position`` ``(N, dim)`` or ``(B, N, dim)``."""
        query = key = _with_position(tokens, position)
        attended = self.attention(query, key, tokens, mask)
        tokens = self.norm1(tokens + self.dropout1(attended))
        return self.norm2(tokens + self.dropout2(self.feedforward(tokens)))


class LayerwiseQueryDecoderLayer(_PostNormLayer):
    """UniAD's layer-wise query decoder layer: query -> encoder output, -> previous layer output, FFN.

    Arguments as :class:`_PostNormLayer`'s (``dim``, ``num_heads``, ``feedforward_dim``, ``dropout``, ``activation``).
    """

    attentions = ("memory_attention", "previous_attention")

    def forward(
        self,
        query: Tensor,
        memory: Tensor,
        previous: Tensor,
        position: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        """Decode one layer.

        Args:
            query: ``(B, N, dim)`` (or broadcastable ``(1, N, dim)``) queries of this layer.
            memory: ``(B, N, dim)`` encoder output.
            previous: ``(B, N, dim)`` output of the previous decoder layer (the encoder output for the first).
            position: optional positions added to queries and keys.
            mask: optional ``(N, N)`` mask (``True`` = may attend) used by both attentions.

        Returns:
            ``(B, N, dim)`` decoded tokens.

        """
        query = query.expand(memory.shape[0], -1, -1)
        attended = self.memory_attention(
            _with_position(query, position), _with_position(memory, position), memory, mask
        )
        tokens = self.norm1(query + self.dropout1(attended))
        attended = self.previous_attention(
            _with_position(tokens, position), _with_position(previous, position), previous, mask
        )
        tokens = self.norm2(tokens + self.dropout2(attended))
        return self.norm3(tokens + self.dropout3(self.feedforward(tokens)))
