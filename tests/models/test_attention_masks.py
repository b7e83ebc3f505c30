"""Tests of the shared neighbourhood masks and the masked multi-head attention built on them."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from anomalib_classaware.models.components import MaskedAttention, neighbourhood_mask


def brute_force_mask(height: int, width: int, window: int) -> torch.Tensor:
    """The window of each query, clipped at the borders, enumerated cell by cell."""
    radius = window // 2
    mask = torch.zeros(height * width, height * width, dtype=torch.bool)
    for row in range(height):
        for col in range(width):
            for key_row in range(max(row - radius, 0), min(row + radius + 1, height)):
                for key_col in range(max(col - radius, 0), min(col + radius + 1, width)):
                    mask[row * width + col, key_row * width + key_col] = True
    return mask


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 9), st.integers(1, 9), st.sampled_from([1, 3, 5, 7, 11]))
def test_mask_equals_the_clipped_window_everywhere(height: int, width: int, window: int) -> None:
    mask = neighbourhood_mask(height, width, window)
    assert mask.dtype == torch.bool
    assert mask.shape == (height * width, height * width)
    assert torch.equal(mask, brute_force_mask(height, width, window))


def test_window_at_corners_edges_and_centre() -> None:
    height, width, window = 6, 7, 5
    mask = neighbourhood_mask(height, width, window).reshape(height, width, height, width)

    def keys(row: int, col: int) -> set[tuple[int, int]]:
        return {(int(r), int(c)) for r, c in mask[row, col].nonzero()}

    assert keys(0, 0) == {(r, c) for r in range(3) for c in range(3)}  # corner: 3 x 3
    assert keys(5, 6) == {(r, c) for r in range(3, 6) for c in range(4, 7)}  # opposite corner
    assert keys(0, 3) == {(r, c) for r in range(3) for c in range(1, 6)}  # top edge: 3 x 5
    assert keys(3, 0) == {(r, c) for r in range(1, 6) for c in range(3)}  # left edge: 5 x 3
    assert keys(2, 3) == {(r, c) for r in range(5) for c in range(1, 6)}  # interior: full 5 x 5
    assert int(mask[2, 3].sum()) == 25


def test_mask_is_symmetric_and_contains_the_query() -> None:
    mask = neighbourhood_mask(5, 8, 3)
    assert torch.equal(mask, mask.T)
    assert mask.diagonal().all()
    assert torch.equal(neighbourhood_mask(4, 4, 1), torch.eye(16, dtype=torch.bool))
    assert neighbourhood_mask(4, 4, 7).all()  # a window larger than the grid covers it


@pytest.mark.parametrize(("window", "message"), [(0, "positive odd"), (4, "positive odd"), (-3, "positive odd")])
def test_bad_window_is_refused(window: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        neighbourhood_mask(4, 4, window)


def test_empty_grid_is_refused() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        neighbourhood_mask(0, 4, 3)


def test_masked_attention_equals_multihead_attention() -> None:
    """Same projections and result as ``nn.MultiheadAttention`` (whose boolean mask means "blocked")."""
    torch.manual_seed(0)
    dim, heads = 16, 4
    attention = MaskedAttention(dim, heads).eval()
    reference = torch.nn.MultiheadAttention(dim, heads, batch_first=True).eval()
    with torch.no_grad():
        reference.in_proj_weight.copy_(
            torch.cat([attention.query.weight, attention.key.weight, attention.value.weight])
        )
        reference.in_proj_bias.copy_(torch.cat([attention.query.bias, attention.key.bias, attention.value.bias]))
        reference.out_proj.weight.copy_(attention.out.weight)
        reference.out_proj.bias.copy_(attention.out.bias)
    query, key, value = torch.randn(3, 2, 20, dim).unbind(0)
    mask = ~neighbourhood_mask(4, 5, 3)  # attend outside the neighbourhood only
    with torch.no_grad():
        expected = reference(query, key, value, attn_mask=~mask, need_weights=False)[0]
        unmasked = reference(query, key, value, need_weights=False)[0]
        torch.testing.assert_close(attention(query, key, value, mask), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(attention(query, key, value), unmasked, rtol=1e-5, atol=1e-5)


def test_masked_keys_have_no_influence_and_shared_keys_broadcast() -> None:
    torch.manual_seed(1)
    attention = MaskedAttention(8, 2).eval()
    height, width = 4, 4
    mask = neighbourhood_mask(height, width, 3)
    query = torch.randn(3, 16, 8)
    key = torch.randn(1, 16, 8)  # one set of keys shared by the batch (a learnable reference)
    value = torch.randn(3, 16, 8)
    with torch.no_grad():
        base = attention(query, key, value, mask)
        torch.testing.assert_close(base, attention(query, key.expand(3, -1, -1), value, mask))
        perturbed = value.clone()
        perturbed[:, 15] += 10.0  # the bottom-right token: inside the window of queries 10, 11, 14, 15 only
        changed = (attention(query, key, perturbed, mask) - base).abs().amax(dim=(0, 2)) > 1e-6
    assert changed.nonzero().flatten().tolist() == [10, 11, 14, 15]


def test_masked_attention_needs_divisible_heads() -> None:
    with pytest.raises(ValueError, match="divisible"):
        MaskedAttention(10, 4)
