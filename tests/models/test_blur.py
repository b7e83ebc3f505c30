"""The separable Gaussian blur equals anomalib's 2-D blur and shares its state dict."""

from __future__ import annotations

import pytest
import torch
from anomalib.models.components import GaussianBlur2d

from anomalib_classaware.models.components.networks.anomaly_map import AnomalyMapGenerator
from anomalib_classaware.models.components.networks.blur import SeparableGaussianBlur2d


@pytest.mark.parametrize(
    ("sigma", "kernel_size", "channels", "shape"),
    [(4.0, None, 1, (2, 40, 52)), (2.0, 9, 1, (1, 17, 17)), (1.5, 5, 3, (2, 12, 30)), (4.0, 7, 1, (3, 64, 64))],
)
def test_matches_anomalibs_two_dimensional_blur(
    sigma: float, kernel_size: int | None, channels: int, shape: tuple[int, int, int]
) -> None:
    batch, height, width = shape
    images = torch.rand(batch, channels, height, width, generator=torch.Generator().manual_seed(0)) * 10
    expected = GaussianBlur2d(sigma=sigma, channels=channels, kernel_size=kernel_size)(images)
    separable = SeparableGaussianBlur2d(sigma, channels=channels, kernel_size=kernel_size)
    got = separable(images)
    assert got.shape == images.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert separable.row.shape == (channels, 1, 1, separable.width)
    assert separable.column.shape == (channels, 1, separable.height, 1)
    assert float(separable.row.sum()) == pytest.approx(channels, rel=1e-6)  # each 1-D factor sums to one


def test_state_dict_is_anomalibs() -> None:
    anomalib_blur, separable = GaussianBlur2d(sigma=4.0), SeparableGaussianBlur2d(4.0)
    assert list(separable.state_dict()) == list(anomalib_blur.state_dict()) == ["kernel"]
    separable.load_state_dict(anomalib_blur.state_dict())
    anomalib_blur.load_state_dict(separable.state_dict())


def test_anomaly_maps_are_blurred_separably() -> None:
    generator = AnomalyMapGenerator(image_size=(32, 32), sigma=4.0)
    assert isinstance(generator.blur, SeparableGaussianBlur2d)
    features = [torch.rand(2, 8, 8, 8)]
    reconstructions = [torch.rand(2, 8, 8, 8)]
    blurred = generator.compute_anomaly_map(features, reconstructions)
    unblurred = AnomalyMapGenerator(image_size=(32, 32), sigma=0.0).compute_anomaly_map(features, reconstructions)
    torch.testing.assert_close(blurred, GaussianBlur2d(sigma=4.0)(unblurred), atol=1e-5, rtol=1e-5)
