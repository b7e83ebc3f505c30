"""The embedded demo dataset generator: layout, determinism, caching and its guards."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomalib_classaware.data import demo_builder
from anomalib_classaware.data.defects import DEFECT_TYPES
from anomalib_classaware.data.demo_builder import (
    DEMO_CATEGORIES,
    DEMO_DATASET_VERSION,
    DEMO_TEXTURE_CATEGORIES,
    MANIFEST_NAME,
    build_demo_dataset,
)

CATEGORIES = ("brick", "coffee", "coins")
TINY = {"image_size": 64, "num_train": 4, "num_test_good": 2, "num_test_defective": 3}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_dataset(tmp_path_factory.mktemp("demo") / "ds", categories=CATEGORIES, seed=0, **TINY)


def test_default_categories() -> None:
    assert len(DEMO_CATEGORIES) >= 6
    assert len(set(DEMO_CATEGORIES)) == len(DEMO_CATEGORIES)
    assert {"brick", "grass", "gravel"} <= set(DEMO_TEXTURE_CATEGORIES) < set(DEMO_CATEGORIES)
    assert len(DEMO_CATEGORIES) - len(DEMO_TEXTURE_CATEGORIES) >= 3  # objects and scenes too


def test_layout_and_counts(tiny: Path) -> None:
    manifest = json.loads((tiny / MANIFEST_NAME).read_text())
    assert manifest["parameters"] == {
        "version": DEMO_DATASET_VERSION,
        "categories": list(CATEGORIES),
        "seed": 0,
        **TINY,
    }
    assert sorted(p.name for p in tiny.iterdir() if p.is_dir()) == sorted(CATEGORIES)
    assert not list(tiny.parent.glob(".ds.*"))  # no staging leftovers
    for category in CATEGORIES:
        base = tiny / category
        assert sorted(p.name for p in (base / "train" / "good").iterdir()) == [f"{i:03d}.png" for i in range(4)]
        assert sorted(p.name for p in (base / "test" / "good").iterdir()) == ["000.png", "001.png"]
        defect_dirs = sorted(p.name for p in (base / "test").iterdir() if p.name != "good")
        assert len(defect_dirs) == 3 and set(defect_dirs) <= set(DEFECT_TYPES)  # spread over several types
        assert sorted(p.name for p in (base / "ground_truth").iterdir()) == defect_dirs
        for defect in defect_dirs:
            images = sorted((base / "test" / defect).iterdir())
            masks = sorted((base / "ground_truth" / defect).iterdir())
            assert [p.stem + "_mask.png" for p in images] == [p.name for p in masks]
            for image_path, mask_path in zip(images, masks, strict=True):
                mask = np.asarray(Image.open(mask_path))
                assert mask.shape == (64, 64) and mask.dtype == np.uint8
                assert set(np.unique(mask)) == {0, 255}
                assert _pixels(image_path).shape == (64, 64, 3)
        for path in base.rglob("*.png"):
            assert Image.open(path).size == (64, 64)


def test_grey_photos_are_written_as_grey_pngs(tiny: Path) -> None:
    assert Image.open(tiny / "brick" / "train" / "good" / "000.png").mode == "L"
    assert Image.open(tiny / "coffee" / "train" / "good" / "000.png").mode == "RGB"


def test_no_test_image_copies_a_training_image(tiny: Path) -> None:
    train = {_pixels(p).tobytes() for p in tiny.glob("*/train/good/*.png")}
    test = [_pixels(p).tobytes() for p in tiny.glob("*/test/*/*.png")]
    assert len(train) == 4 * len(CATEGORIES)  # the training images differ from each other too
    assert len(test) == 5 * len(CATEGORIES)
    assert not train & set(test)


def test_deterministic_and_seed_dependent(tiny: Path, tmp_path: Path) -> None:
    same = build_demo_dataset(tmp_path / "same", categories=CATEGORIES, seed=0, **TINY)
    assert _files(same) == _files(tiny)
    other = _files(build_demo_dataset(tmp_path / "other", categories=CATEGORIES, seed=1, **TINY))
    reference = _files(tiny)
    shared = set(other) & set(reference)
    assert all(other[name] != reference[name] for name in shared if "/train/" in name)
    # a category's images do not depend on which other categories are generated alongside it
    alone = build_demo_dataset(tmp_path / "alone", categories=["coffee"], seed=0, **TINY)
    assert _files(alone / "coffee") == _files(tiny / "coffee")


def test_cache_hit_does_not_rewrite(tiny: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in tiny.rglob("*")}
    assert build_demo_dataset(tiny, categories=CATEGORIES, seed=0, **TINY) == tiny
    assert {p: p.stat().st_mtime_ns for p in tiny.rglob("*")} == before


def test_other_parameters_need_overwrite(tmp_path: Path) -> None:
    root = build_demo_dataset(tmp_path / "ds", categories=["coins"], seed=0, **TINY)
    with pytest.raises(ValueError, match=r"ds'.*other parameters.*overwrite=True"):
        build_demo_dataset(root, categories=["coins"], seed=5, **TINY)
    assert json.loads((root / MANIFEST_NAME).read_text())["parameters"]["seed"] == 0  # untouched
    build_demo_dataset(root, categories=["coins"], seed=5, overwrite=True, **TINY)
    assert json.loads((root / MANIFEST_NAME).read_text())["parameters"]["seed"] == 5
    assert not list(tmp_path.glob(".ds.*"))


def test_foreign_folder_is_never_overwritten_silently(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("precious")
    with pytest.raises(ValueError, match=r"mine'.*no demo dataset manifest.*overwrite=True"):
        build_demo_dataset(root, categories=["coins"], **TINY)
    assert (root / "notes.txt").read_text() == "precious"
    build_demo_dataset(root, categories=["coins"], overwrite=True, **TINY)
    assert not (root / "notes.txt").exists() and (root / MANIFEST_NAME).exists()


def test_incomplete_dataset_needs_overwrite(tmp_path: Path) -> None:
    root = build_demo_dataset(tmp_path / "ds", categories=["coins"], **TINY)
    (root / "coins" / "train" / "good" / "001.png").unlink()
    with pytest.raises(ValueError, match="incomplete"):
        build_demo_dataset(root, categories=["coins"], **TINY)
    build_demo_dataset(root, categories=["coins"], overwrite=True, **TINY)
    assert (root / "coins" / "train" / "good" / "001.png").exists()


def test_empty_folder_is_used(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert (build_demo_dataset(tmp_path / "empty", categories=["coins"], **TINY) / MANIFEST_NAME).exists()


def test_interrupted_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = demo_builder._build_category

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(demo_builder, "_build_category", failing)
    with pytest.raises(KeyboardInterrupt):
        build_demo_dataset(tmp_path / "ds", categories=["brick", "coins"], **TINY)
    assert os.listdir(tmp_path) == []


def test_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Unknown demo categories") as error:
        build_demo_dataset(tmp_path / "ds", categories=["coins", "bottle"])
    assert "bottle" in str(error.value)
    assert all(name in str(error.value) for name in DEMO_CATEGORIES)
    with pytest.raises(ValueError, match="image_size"):
        build_demo_dataset(tmp_path / "ds", image_size=8)
    with pytest.raises(ValueError, match="num_train"):
        build_demo_dataset(tmp_path / "ds", num_train=0)
    assert not (tmp_path / "ds").exists()
