"""``examples/benchmark/memory_bank_probe.py``: nearest-patch distances per category, unified, leave-one-out."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch

from tests.examples.example_scripts import load_benchmark_script

SIZE = 64  # the probe blurs with the default sigma 4: its kernel needs maps wider than 33 pixels


@pytest.fixture(scope="module")
def probe() -> ModuleType:
    return load_benchmark_script("memory_bank_probe")


def _memory() -> tuple[torch.Tensor, torch.Tensor]:
    """Two images per category; every patch of category 0 is (0, 0), of category 1 is (3, 4)."""
    memory = torch.zeros(4, 2, 2, 2)
    memory[2:, 0], memory[2:, 1] = 3.0, 4.0
    return memory, torch.tensor([0, 0, 1, 1])


def test_per_category_memory_only_searches_the_query_category(probe: ModuleType) -> None:
    memory, categories = _memory()
    query = torch.zeros(1, 2, 2, 2)  # looks like category 0 ...
    routed_to_other = torch.tensor([1])  # ... but is routed to category 1
    per_category = probe.nearest_patch_distances(memory, categories, query, routed_to_other, per_category=True)
    unified = probe.nearest_patch_distances(memory, categories, query, routed_to_other, per_category=False)
    assert per_category.shape == (1, 1, 2, 2)
    assert torch.allclose(per_category, torch.full_like(per_category, 5.0))  # |(0, 0) - (3, 4)|
    assert torch.allclose(unified, torch.zeros_like(unified))


def test_leave_own_image_out_skips_only_the_query_image(probe: ModuleType) -> None:
    memory, categories = _memory()
    memory[0, :, 0, 0] = 10.0  # one patch of image 0 that no other image has
    with_self = probe.nearest_patch_distances(memory, categories, memory, categories, per_category=True)
    left_out = probe.nearest_patch_distances(
        memory, categories, memory, categories, per_category=True, leave_own_image_out=True
    )
    assert torch.allclose(with_self, torch.zeros_like(with_self))
    assert left_out[0, 0, 0, 0] == pytest.approx(float(torch.tensor([10.0, 10.0]).norm()))  # nearest: image 1's 0
    assert torch.allclose(left_out[1:], torch.zeros_like(left_out[1:]))  # image 1 still finds image 0's zeros


def test_keep_fraction_subsamples_and_bad_arguments_are_named(probe: ModuleType) -> None:
    generator = torch.Generator().manual_seed(0)
    memory = torch.randn(8, 4, 4, 4, generator=generator)
    categories = torch.zeros(8, dtype=torch.long)
    queries = torch.randn(3, 4, 4, 4, generator=generator)
    full = probe.nearest_patch_distances(memory, categories, queries, categories[:3], per_category=True)
    tenth = probe.nearest_patch_distances(memory, categories, queries, categories[:3], True, keep_fraction=0.1)
    assert bool((tenth >= full - 1e-5).all()) and bool((tenth > full + 1e-3).any())  # fewer patches: never nearer
    with pytest.raises(ValueError, match="keep_fraction must lie in"):
        probe.nearest_patch_distances(memory, categories, queries, categories[:3], True, keep_fraction=0.0)
    with pytest.raises(ValueError, match="Query image 0 \\(category 1\\) has no memory patch"):
        probe.nearest_patch_distances(memory, categories, queries, torch.ones(3, dtype=torch.long), True)


def test_probe_rows_score_a_defect_the_residual_misses(probe: ModuleType) -> None:
    """The residual maps are noise; the features of the defective test images have one unseen patch."""
    generator = torch.Generator().manual_seed(0)
    train_features = torch.randn(8, 4, 4, 4, generator=generator) * 0.1
    labels = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    test_features = torch.randn(8, 4, 4, 4, generator=generator) * 0.1
    test_features[labels == 1, :, 0, 0] += 5.0
    categories = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    masks = torch.zeros(8, SIZE, SIZE, dtype=torch.bool)
    masks[labels == 1, :16, :16] = True  # the top-left patch of the 4 x 4 feature map

    def level_maps(count: int) -> list[torch.Tensor]:
        return [torch.rand(count, 1, size, size, generator=generator) for size in (8, 4, 2)]

    train = probe.ProbeSplit(level_maps(8), categories, features=[train_features])
    test = probe.ProbeSplit(level_maps(8), categories, labels, masks, ["a"] * 4 + ["b"] * 4, features=[test_features])
    rows = probe.probe_rows(train, test, 2, knn_level=0, keep_fractions=[1.0, 0.5], image_size=SIZE)
    assert set(rows) == {
        "ClassAwareRecon, calibrated residual (trained default)",
        "kNN, per category memory, 100 % of patches",
        "kNN, per category memory, 50 % of patches",
        "kNN, unified memory, 100 % of patches",
        "kNN, unified memory, 50 % of patches",
        "kNN, per category memory, 100 % of patches, calibrated",
        "calibrated residual + 1 x calibrated kNN",
        "calibrated residual + 2 x calibrated kNN",
    }
    assert rows["kNN, per category memory, 100 % of patches"]["image_AUROC"] == 1.0
    assert rows["kNN, unified memory, 100 % of patches"]["image_AUROC"] == 1.0
    assert rows["kNN, per category memory, 100 % of patches"]["pixel_AUROC"] > 0.5
