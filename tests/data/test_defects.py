"""Synthetic defects: exact masks, determinism, sizes, and no side effects."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from anomalib_classaware.data.defects import (
    CHANGE_THRESHOLD,
    DEFECT_FUNCTIONS,
    DEFECT_TYPES,
    apply_defect,
    apply_random_defect,
    blur_patch,
    perlin_foreign_texture,
)


def _photo(name: str, size: int) -> np.ndarray:
    photo = np.asarray(getattr(skdata, name)())
    if photo.ndim == 2:
        photo = np.repeat(photo[..., None], 3, axis=-1)
    return np.asarray(Image.fromarray(photo).resize((size, size), Image.Resampling.LANCZOS))


IMAGES = {"brick": _photo("brick", 64), "coffee": _photo("coffee", 96), "rocket": _photo("rocket", 128)}


@pytest.mark.parametrize("defect_type", DEFECT_TYPES)
@pytest.mark.parametrize("name", sorted(IMAGES))
@pytest.mark.parametrize("seed", [0, 1])
def test_mask_is_exactly_the_changed_pixels(defect_type: str, name: str, seed: int) -> None:
    image = IMAGES[name]
    original = image.copy()
    out, mask = apply_defect(image, np.random.default_rng(seed), defect_type)

    np.testing.assert_array_equal(image, original)  # input untouched
    assert out.shape == image.shape and out.dtype == np.uint8
    assert mask.shape == image.shape[:2] and mask.dtype == bool
    assert mask.any()
    np.testing.assert_array_equal(out[~mask], image[~mask])  # bit-for-bit identical outside
    change = np.abs(out.astype(int) - image.astype(int)).max(axis=-1)
    assert change[mask].min() >= CHANGE_THRESHOLD  # a real change everywhere inside
    assert mask.mean() <= 0.15  # moderate size


@pytest.mark.parametrize("defect_type", DEFECT_TYPES)
def test_deterministic(defect_type: str) -> None:
    image = IMAGES["coffee"]
    out_a, mask_a = apply_defect(image, np.random.default_rng(7), defect_type)
    out_b, mask_b = apply_defect(image, np.random.default_rng(7), defect_type)
    np.testing.assert_array_equal(out_a, out_b)
    np.testing.assert_array_equal(mask_a, mask_b)


@pytest.mark.parametrize("defect_type", DEFECT_TYPES)
def test_grey_images_stay_grey(defect_type: str) -> None:
    out, _ = apply_defect(IMAGES["brick"], np.random.default_rng(3), defect_type)
    assert (out == out[..., :1]).all()


@pytest.mark.parametrize("defect_type", ["foreign_texture", "stain", "cutout", "blur"])
def test_region_defects_are_moderately_sized(defect_type: str) -> None:
    rng = np.random.default_rng(11)
    fractions = [apply_defect(IMAGES["coffee"], rng, defect_type)[1].mean() for _ in range(6)]
    assert 0.002 < np.mean(fractions) < 0.1


def test_foreign_texture_uses_given_sources_and_keeps_torch_rng() -> None:
    state = torch.get_rng_state()
    source = np.zeros((50, 50, 3), dtype=np.uint8)
    source[..., 1] = 255  # pure green: clearly foreign to the coffee photo
    out, mask = perlin_foreign_texture(IMAGES["coffee"], np.random.default_rng(0), sources=[source])
    assert torch.equal(state, torch.get_rng_state())
    assert out[mask][:, 1].mean() > IMAGES["coffee"][mask][:, 1].mean()


def test_random_defect_dispatch() -> None:
    rng = np.random.default_rng(0)
    names = {apply_random_defect(IMAGES["coffee"], rng)[2] for _ in range(20)}
    assert names <= set(DEFECT_TYPES) and len(names) >= 3
    assert apply_random_defect(IMAGES["coffee"], rng, defect_types=["scratch"])[2] == "scratch"
    assert set(DEFECT_FUNCTIONS) == set(DEFECT_TYPES)


def test_invalid_inputs() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="Unknown defect type"):
        apply_defect(IMAGES["coffee"], rng, "crack")
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        apply_defect(IMAGES["coffee"][..., 0], rng, "stain")
    with pytest.raises(ValueError, match="area_range"):
        blur_patch(IMAGES["coffee"], rng, area_range=(0.1, 0.01))
    with pytest.raises(ValueError, match="uniform"):  # nothing to blur on a flat image
        blur_patch(np.full((64, 64, 3), 128, dtype=np.uint8), rng)
