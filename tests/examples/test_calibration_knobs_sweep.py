"""``examples/benchmark/calibration_knobs_sweep.py``: the knobs change the scores as named; metrics per category."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
import torch

from tests.examples.example_scripts import load_benchmark_script

SIZE = 16


@pytest.fixture(scope="module")
def sweep() -> ModuleType:
    return load_benchmark_script("calibration_knobs_sweep")


def _test_split(sweep: ModuleType, fine_level_flipped: bool) -> Any:
    """Two categories of 4 images (2 defective); the defect lights up the coarse level at one corner.

    The fine level is noise, or (``fine_level_flipped``) larger on the normal images than on the defective ones.
    """
    generator = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    coarse = 0.01 * torch.rand(8, 1, 4, 4, generator=generator)
    coarse[labels == 1, :, 0, 0] += 1.0
    fine = 0.01 * torch.rand(8, 1, 8, 8, generator=generator)
    if fine_level_flipped:
        fine[labels == 0] += 5.0
    masks = torch.zeros(8, SIZE, SIZE, dtype=torch.bool)
    masks[labels == 1, :4, :4] = True
    return sweep.CachedSplit(
        level_maps=[fine, coarse],
        pred_category=torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]),
        gt_label=labels,
        gt_mask=masks,
        category=["a"] * 4 + ["b"] * 4,
    )


def test_level_weights_drop_a_level_and_metrics_are_per_category(sweep: ModuleType) -> None:
    test = _test_split(sweep, fine_level_flipped=True)
    both = sweep.Knobs(None, (1.0, 1.0), 1.0, "max")
    coarse_only = sweep.Knobs(None, (0.0, 1.0), 1.0, "max")
    assert sweep.evaluate(test, test.level_maps, both, SIZE, pixel_metrics=False)["image_AUROC"] == 0.0
    row = sweep.evaluate(test, test.level_maps, coarse_only, SIZE, pixel_metrics=True)
    assert row["image_AUROC"] == 1.0 and row["image_F1Max"] == pytest.approx(1.0)
    assert 0.5 < row["pixel_AUROC"] <= 1.0 and set(row) == {"image_AUROC", "image_F1Max", "pixel_AUROC", "pixel_AUPRO"}


def test_calibration_is_refitted_per_shrinkage_and_positive_part_clamps(sweep: ModuleType) -> None:
    train = sweep.CachedSplit(
        level_maps=[torch.full((4, 1, 8, 8), 2.0) + 0.1 * torch.randn(4, 1, 8, 8), torch.rand(4, 1, 4, 4)],
        pred_category=torch.tensor([0, 0, 1, 1]),
    )
    loose, tight = (sweep.fitted_calibration(train, 2, shrinkage) for shrinkage in (2.0, 0.0))
    test = _test_split(sweep, fine_level_flipped=False)
    loose_maps, tight_maps = loose(test.level_maps, test.pred_category), tight(test.level_maps, test.pred_category)
    assert torch.all(loose_maps[0].abs() < tight_maps[0].abs())  # a larger scale: smaller standardised residuals
    assert bool((tight_maps[0] < 0).all())  # the test images' fine level lies far below the training mean (2.0)
    knobs = sweep.Knobs(0.0, (1.0, 0.0), 1.0, "max", positive_part=True)
    clamped = sweep.evaluate(test, tight_maps, knobs, SIZE, pixel_metrics=False)
    # every image scores 0 once negatives are clamped: ties give AUROC 0.5 in each category
    assert clamped["image_AUROC"] == pytest.approx(0.5)
