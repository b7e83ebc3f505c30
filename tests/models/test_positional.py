"""Tests of the shared positional encodings: sine-cosine token positions, grid coordinates, Fourier features."""

from __future__ import annotations

import math

import pytest
import torch
from anomalib.models.image.cflow.utils import positional_encoding_2d

from anomalib_classaware.models.components import fourier_features, grid_coordinates, sincos_positions


def test_grid_coordinates_are_row_major_cell_centres() -> None:
    coordinates = grid_coordinates(2, 4)
    assert coordinates.shape == (8, 2)
    expected_x = torch.tensor([-0.75, -0.25, 0.25, 0.75])
    torch.testing.assert_close(coordinates[:4, 0], expected_x)  # x varies fastest along a row
    torch.testing.assert_close(coordinates[4:, 0], expected_x)
    torch.testing.assert_close(coordinates[:4, 1], torch.full((4,), -0.5))  # first row: y = -0.5
    torch.testing.assert_close(coordinates[4:, 1], torch.full((4,), 0.5))
    assert coordinates.abs().max() < 1  # strictly inside [-1, 1]
    torch.testing.assert_close(coordinates.mean(0), torch.zeros(2))  # symmetric about the centre
    assert coordinates.dtype == torch.float32


def test_fourier_features_values_and_layout() -> None:
    coordinates = torch.tensor([[0.0, 0.0], [0.5, -0.25]])
    features = fourier_features(coordinates, num_frequencies=3)
    assert features.shape == (2, 12)  # 2 coordinates x (sin, cos) x 3 frequencies
    x, y = 0.5, -0.25
    frequencies = [math.pi, 2 * math.pi, 4 * math.pi]
    expected = [math.sin(f * x) for f in frequencies] + [math.cos(f * x) for f in frequencies]
    expected += [math.sin(f * y) for f in frequencies] + [math.cos(f * y) for f in frequencies]
    torch.testing.assert_close(features[1], torch.tensor(expected))
    torch.testing.assert_close(features[0], torch.tensor(([0.0] * 3 + [1.0] * 3) * 2))


def test_fourier_features_separate_every_grid_cell_and_are_smooth() -> None:
    features = fourier_features(grid_coordinates(8, 8), num_frequencies=3)
    distances = torch.cdist(features, features)
    assert distances[~torch.eye(64, dtype=torch.bool)].min() > 0.1  # all 64 positions distinct
    # Lipschitz in the coordinates: |f(c + d) - f(c)| <= |d| * sqrt(sum_k 2 * (2^k pi)^2 / 2)
    coordinates = torch.rand(100, 2) * 2 - 1
    delta = torch.randn(100, 2) * 1e-3
    change = (fourier_features(coordinates + delta, 3) - fourier_features(coordinates, 3)).norm(dim=1)
    bound = delta.norm(dim=1) * math.sqrt(sum((2**k * math.pi) ** 2 for k in range(3)))
    assert (change <= bound * 1.001).all()


def test_fourier_features_reject_no_frequency() -> None:
    with pytest.raises(ValueError, match="num_frequencies"):
        fourier_features(torch.zeros(1, 2), 0)


def test_sincos_positions_are_cflow_encoding_as_tokens() -> None:
    positions = sincos_positions(16, 3, 5)
    assert positions.shape == (15, 16)
    reference = positional_encoding_2d(16, 3, 5)  # (C, H, W)
    torch.testing.assert_close(positions[7], reference[:, 1, 2])  # token 7 = row 1, column 2 (row-major)
    assert positions.is_contiguous()
    distances = torch.cdist(positions, positions)
    assert distances[~torch.eye(15, dtype=torch.bool)].min() > 0.1  # every token has its own code
