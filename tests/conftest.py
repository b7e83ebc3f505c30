"""Shared fixtures: tiny MVTec-layout datasets written into tmp folders (no data in the repo)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# Never write the demo dataset into the user's cache from tests (subprocesses inherit this).
os.environ["ANOMALIB_CLASSAWARE_CACHE"] = tempfile.mkdtemp(prefix="anomalib_classaware_test_cache_")
atexit.register(shutil.rmtree, os.environ["ANOMALIB_CLASSAWARE_CACHE"], ignore_errors=True)


def write_mvtec_category(
    root: Path,
    category: str,
    *,
    num_train: int = 4,
    num_good: int = 2,
    defects: Sequence[str] = ("scratch",),
    num_per_defect: int = 2,
    size: int = 32,
    masks: bool = True,
    seed: int = 0,
) -> Path:
    """Write one category in MVTec layout with smooth random images and square defects."""
    rng = np.random.default_rng(seed)
    base = rng.integers(60, 190, size=3)

    def normal() -> np.ndarray:
        noise = rng.normal(0, 6, size=(size, size, 3))
        return np.clip(base + noise, 0, 255).astype(np.uint8)

    category_root = root / category
    for split, count in (("train", num_train), ("test", num_good)):
        folder = category_root / split / "good"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(normal()).save(folder / f"{i:03d}.png")
    for defect in defects:
        folder = category_root / "test" / defect
        folder.mkdir(parents=True, exist_ok=True)
        if masks:
            (category_root / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
        for i in range(num_per_defect):
            image, mask = normal(), np.zeros((size, size), np.uint8)
            y, x = rng.integers(0, size // 2, size=2)
            image[y : y + size // 4, x : x + size // 4] = 255
            mask[y : y + size // 4, x : x + size // 4] = 255
            Image.fromarray(image).save(folder / f"{i:03d}.png")
            if masks:
                Image.fromarray(mask).save(category_root / "ground_truth" / defect / f"{i:03d}_mask.png")
    return category_root


@pytest.fixture
def mvtec_tree(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``mvtec_tree(["a", "b"], **kwargs)`` writes categories under ``tmp_path/dataset``."""

    def make(categories: Sequence[str] = ("alpha", "beta"), **kwargs: object) -> Path:
        root = tmp_path / "dataset"
        for index, name in enumerate(categories):
            write_mvtec_category(root, name, seed=index, **kwargs)  # type: ignore[arg-type]
        return root

    return make


@pytest.fixture(autouse=True, scope="module")
def single_torch_thread() -> Iterator[None]:
    """One torch thread per test module, restored afterwards: on a busy 2-core machine two OpenMP threads run up
    to ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
