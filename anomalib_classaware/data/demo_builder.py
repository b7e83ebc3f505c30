"""Generate the embedded multi-class demo dataset from the photographs bundled with scikit-image.

The dataset is written in the MVTec AD layout::

    <root>/manifest.json
    <root>/<category>/train/good/000.png
    <root>/<category>/test/good/000.png
    <root>/<category>/test/<defect_type>/000.png
    <root>/<category>/ground_truth/<defect_type>/000_mask.png

Normal images are independent random crops (random position, scale and a small rotation, flips where they
make sense, slight brightness/contrast jitter) of one photograph per category. For textures, train crops
come from the left 65% of the photo and test crops from the held-back right 35%; for objects and scenes,
train and test crops are drawn from the same distribution over the whole photo, so the training set covers
what the test set shows. Defective test images are fresh test crops carrying one synthetic defect from
:mod:`anomalib_classaware.data.defects`, with its exact mask. Everything is derived from ``seed``: the same
parameters give byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from PIL import Image
from skimage import data as skdata

from anomalib_classaware.data.defects import DEFECT_TYPES, FOREIGN_SOURCE_PHOTOS, apply_defect

DEMO_DATASET_VERSION = 1
"""Bumped whenever the generator changes its output; part of the manifest, so caches are regenerated."""

MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class _CategorySpec:
    """How to cut normal samples out of one ``skimage.data`` photograph."""

    photo: str
    kind: Literal["texture", "object"]
    crop_frac: tuple[float, float]  # crop side relative to the photo's shorter side
    max_rotation: float  # degrees
    hflip: bool = False
    vflip: bool = False
    rot90: bool = False


_SPECS: dict[str, _CategorySpec] = {
    # textures: train from the left 65% of the photo, test from the held-back right 35%
    "brick": _CategorySpec("brick", "texture", (0.25, 0.32), 2.0, hflip=True, vflip=True),
    "grass": _CategorySpec("grass", "texture", (0.25, 0.32), 5.0, hflip=True, vflip=True, rot90=True),
    "gravel": _CategorySpec("gravel", "texture", (0.25, 0.32), 5.0, hflip=True, vflip=True, rot90=True),
    # objects and scenes: crops anywhere in the photo, their side 70%-100% of its shorter side
    "coffee": _CategorySpec("coffee", "object", (0.7, 1.0), 4.0, hflip=True),
    "chelsea": _CategorySpec("chelsea", "object", (0.75, 1.0), 4.0, hflip=True),
    "astronaut": _CategorySpec("astronaut", "object", (0.7, 1.0), 3.0),
    "rocket": _CategorySpec("rocket", "object", (0.7, 1.0), 2.0, hflip=True),
    "coins": _CategorySpec("coins", "object", (0.7, 1.0), 3.0),
}

DEMO_CATEGORIES: tuple[str, ...] = tuple(_SPECS)
"""Demo categories, in order (their index seeds their generator)."""

DEMO_TEXTURE_CATEGORIES: tuple[str, ...] = tuple(name for name, spec in _SPECS.items() if spec.kind == "texture")
"""The texture categories among :data:`DEMO_CATEGORIES`; the others are objects or scenes."""

_TEXTURE_TRAIN_FRACTION = 0.65  # of the photo width used for training crops of textures
_JITTER = 0.06  # relative brightness / contrast jitter
_MARGIN = 2.0  # pixels kept clear of the photo border, so bicubic sampling never reads outside it


@cache
def _load_photo(name: str) -> np.ndarray:
    """Load a ``skimage.data`` photograph as ``HxWx3`` ``uint8``."""
    photo = np.asarray(getattr(skdata, name)())
    if photo.ndim == 2:
        photo = np.repeat(photo[..., None], 3, axis=-1)
    return np.ascontiguousarray(photo[..., :3]).astype(np.uint8)


def _foreign_sources(category: str) -> list[np.ndarray]:
    """Photos other than the category's own, to take foreign textures from."""
    names = [spec.photo for name, spec in _SPECS.items() if name != category] + list(FOREIGN_SOURCE_PHOTOS)
    return [_load_photo(name) for name in names]


class _Sampler:
    """Draw normal samples of one category: random crop, scale, rotation, flips and photometric jitter."""

    def __init__(self, category: str, image_size: int) -> None:
        self.spec = _SPECS[category]
        self.image_size = image_size
        photo = _load_photo(self.spec.photo)
        height, width = photo.shape[:2]
        # pre-scale the photo so that an average crop maps ~1:1 onto the output (no aliasing, sharp upscaling)
        self.factor = image_size / (np.mean(self.spec.crop_frac) * min(height, width))
        size = (round(width * self.factor), round(height * self.factor))
        self.photo = np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.LANCZOS))
        self.min_side = min(height, width) * self.factor

    def region(self, split: Literal["train", "test"]) -> tuple[float, float, float, float]:
        """Area ``(left, top, right, bottom)`` of the (scaled) photo that ``split`` crops come from."""
        height, width = self.photo.shape[:2]
        if self.spec.kind == "object":
            return 0.0, 0.0, float(width), float(height)
        cut = _TEXTURE_TRAIN_FRACTION * width
        return (0.0, 0.0, cut, float(height)) if split == "train" else (cut, 0.0, float(width), float(height))

    def sample(self, rng: np.random.Generator, split: Literal["train", "test"]) -> np.ndarray:
        """Draw one ``image_size`` x ``image_size`` RGB sample."""
        left, top, right, bottom = self.region(split)
        left, top, right, bottom = left + _MARGIN, top + _MARGIN, right - _MARGIN, bottom - _MARGIN
        theta = np.deg2rad(rng.uniform(-self.spec.max_rotation, self.spec.max_rotation))
        cos, sin = np.cos(theta), np.sin(theta)
        extent = abs(cos) + abs(sin)  # bounding-box side of the rotated unit square
        max_side = min(right - left, bottom - top) / extent
        side = min(rng.uniform(*self.spec.crop_frac) * self.min_side, max_side)
        half = side * extent / 2
        cx = rng.uniform(left + half, max(left + half, right - half))  # max(): rounding at the largest side
        cy = rng.uniform(top + half, max(top + half, bottom - half))
        # output pixel (x, y) -> photo (cx, cy) + R(theta) @ ((x, y) - n/2) * side/n
        n = self.image_size
        k = side / n
        matrix = np.array(
            [[k * cos, -k * sin, cx - k * (cos - sin) * n / 2], [k * sin, k * cos, cy - k * (sin + cos) * n / 2]]
        )
        flags = cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP
        image = cv2.warpAffine(self.photo, matrix, (n, n), flags=flags, borderMode=cv2.BORDER_REFLECT_101)
        if self.spec.hflip and rng.random() < 0.5:
            image = image[:, ::-1]
        if self.spec.vflip and rng.random() < 0.5:
            image = image[::-1]
        if self.spec.rot90:
            image = np.rot90(image, int(rng.integers(4)))
        contrast = 1 + rng.uniform(-_JITTER, _JITTER)
        brightness = 255 * rng.uniform(-_JITTER, _JITTER) / 2
        values = image.astype(np.float64)
        mean = values.mean()
        values = (values - mean) * contrast + mean + brightness
        return np.ascontiguousarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))


def _save_png(array: np.ndarray, path: Path) -> None:
    """Write an ``HxW`` or ``HxWx3`` array; grey RGB images are stored as 8-bit grey PNGs, like MVTec AD's."""
    if array.ndim == 3 and (array == array[..., :1]).all():
        array = array[..., 0]
    path.parent.mkdir(parents=True, exist_ok=True)
    # level 1 with zlib's run-length strategy: several times faster than the default, and files no larger
    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG", compress_level=1, compress_type=zlib.Z_RLE)


def _build_category(
    directory: Path,
    category: str,
    *,
    image_size: int,
    num_train: int,
    num_test_good: int,
    num_test_defective: int,
    seed: int,
) -> dict[str, int]:
    """Write one category under ``directory / category``; return the number of files per sub-folder."""
    base_rng = np.random.default_rng([seed, DEMO_CATEGORIES.index(category)])
    train_rng, good_rng, defect_rng = base_rng.spawn(3)
    sampler = _Sampler(category, image_size)
    out = directory / category
    counts: dict[str, int] = {}

    train_digests: set[bytes] = set()
    for index in range(num_train):
        image = sampler.sample(train_rng, "train")
        train_digests.add(hashlib.sha1(image.tobytes()).digest())
        _save_png(image, out / "train" / "good" / f"{index:03d}.png")
    counts["train/good"] = num_train

    def test_sample(rng: np.random.Generator) -> np.ndarray:
        while True:  # a test image must never be a copy of a training image
            image = sampler.sample(rng, "test")
            if hashlib.sha1(image.tobytes()).digest() not in train_digests:
                return image

    for index in range(num_test_good):
        _save_png(test_sample(good_rng), out / "test" / "good" / f"{index:03d}.png")
    counts["test/good"] = num_test_good

    # spread the defective images evenly over the defect types, in a category-specific order
    order = [DEFECT_TYPES[i] for i in defect_rng.permutation(len(DEFECT_TYPES))]
    sources = _foreign_sources(category)
    for index in range(num_test_defective):
        defect_type = order[index % len(order)]
        number = counts.get(f"test/{defect_type}", 0)
        image, mask = apply_defect(test_sample(defect_rng), defect_rng, defect_type, foreign_sources=sources)
        _save_png(image, out / "test" / defect_type / f"{number:03d}.png")
        _save_png(mask.astype(np.uint8) * 255, out / "ground_truth" / defect_type / f"{number:03d}_mask.png")
        counts[f"test/{defect_type}"] = number + 1
        counts[f"ground_truth/{defect_type}"] = number + 1
    return counts


def _parameters(
    categories: Sequence[str], image_size: int, num_train: int, num_test_good: int, num_test_defective: int, seed: int
) -> dict[str, Any]:
    return {
        "version": DEMO_DATASET_VERSION,
        "categories": list(categories),
        "image_size": image_size,
        "num_train": num_train,
        "num_test_good": num_test_good,
        "num_test_defective": num_test_defective,
        "seed": seed,
    }


def _read_manifest(root: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((root / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _is_complete(root: Path, manifest: dict[str, Any]) -> bool:
    """Check that every sub-folder listed in the manifest holds exactly the expected number of PNG files."""
    contents = manifest.get("contents")
    if not isinstance(contents, dict):
        return False
    for category, folders in contents.items():
        for folder, count in folders.items():
            directory = root / category / folder
            if not directory.is_dir() or sum(1 for _ in directory.glob("*.png")) != count:
                return False
    return True


def _is_valid_cache(root: Path, parameters: dict[str, Any]) -> bool:
    manifest = _read_manifest(root)
    return manifest is not None and manifest.get("parameters") == parameters and _is_complete(root, manifest)


def build_demo_dataset(
    root: str | Path,
    *,
    categories: Sequence[str] | None = None,
    image_size: int = 256,
    num_train: int = 60,
    num_test_good: int = 20,
    num_test_defective: int = 20,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Generate the demo dataset into ``root`` (MVTec layout), unless an identical one is already there.

    The build happens in a temporary sibling folder that is renamed to ``root`` at the end, so an interrupted
    run never leaves a dataset that looks complete. ``root/manifest.json`` records the parameters; a later call
    with the same parameters finds it and returns at once.

    Args:
        root: Dataset folder. Created if needed; must be absent, empty, or hold this very dataset.
        categories: Subset of :data:`DEMO_CATEGORIES` (``None``: all of them).
        image_size: Side of the square images, in pixels (at least 32).
        num_train: Normal training images per category (at least 1).
        num_test_good: Normal test images per category.
        num_test_defective: Defective test images per category, spread over the defect types.
        seed: Seed of the generator; the same parameters give byte-identical files.
        overwrite: Replace whatever ``root`` holds if it is not this dataset (another dataset, other
            parameters, an incomplete build, or unrelated files).

    Returns:
        ``root`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: On an unknown category or invalid sizes, or if ``root`` holds something else and
            ``overwrite`` is ``False``.

    """
    root = Path(root).expanduser().absolute()
    selected = list(DEMO_CATEGORIES) if categories is None else [str(c) for c in categories]
    unknown = [c for c in selected if c not in _SPECS]
    if unknown:
        raise ValueError(f"Unknown demo categories {unknown}; valid categories are: {', '.join(DEMO_CATEGORIES)}.")
    if not selected or len(set(selected)) != len(selected):
        raise ValueError(f"categories must be a non-empty list without duplicates, got {selected}.")
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32, got {image_size}.")
    if num_train < 1 or num_test_good < 0 or num_test_defective < 0:
        raise ValueError("num_train must be >= 1 and num_test_good, num_test_defective >= 0.")
    parameters = _parameters(selected, image_size, num_train, num_test_good, num_test_defective, seed)

    if _is_valid_cache(root, parameters):
        return root
    occupied = root.exists() and (not root.is_dir() or any(root.iterdir()))
    if occupied and not overwrite:
        manifest = _read_manifest(root)
        if manifest is None:
            reason = "it is not empty and has no demo dataset manifest"
        elif manifest.get("parameters") != parameters:
            reason = "it holds a demo dataset generated with other parameters"
        else:
            reason = "it holds an incomplete or modified demo dataset"
        raise ValueError(
            f"Cannot generate the demo dataset into '{root}': {reason}. "
            "Pass overwrite=True to replace its contents, or choose another root."
        )

    root.parent.mkdir(parents=True, exist_ok=True)
    staging = root.parent / f".{root.name}.building-{uuid.uuid4().hex[:8]}"
    try:
        contents = {
            category: _build_category(
                staging,
                category,
                image_size=image_size,
                num_train=num_train,
                num_test_good=num_test_good,
                num_test_defective=num_test_defective,
                seed=seed,
            )
            for category in selected
        }
        manifest = {"name": "anomalib_classaware demo dataset", "parameters": parameters, "contents": contents}
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        try:
            _replace(staging, root)
        except OSError:
            if not _is_valid_cache(root, parameters):  # else another process built the same dataset meanwhile
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return root


def _replace(staging: Path, root: Path) -> None:
    """Move the finished ``staging`` folder to ``root``, discarding what ``root`` held (already agreed to)."""
    trash = None
    if root.is_dir() and not root.is_symlink():
        if any(root.iterdir()):
            trash = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:8]}"
            root.rename(trash)
        else:
            root.rmdir()
    elif root.exists() or root.is_symlink():
        root.unlink()
    try:
        os.replace(staging, root)
    except OSError:
        if trash is not None and not root.exists():
            trash.rename(root)  # put the previous contents back
        raise
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
