"""Inspection-line helpers: image sources, robust reading, overlays (no model needed)."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomalib_classaware.deploy import Detection, ImageReadError, iter_image_paths, overlay, read_rgb


def test_folders_are_scanned_recursively_for_image_extensions(tmp_path: Path) -> None:
    for name in ("b/2.PNG", "a/1.jpg", "a/deep/3.tiff", "a/notes.txt", "c.bmp", "d.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = [path.relative_to(tmp_path).as_posix() for path in iter_image_paths(tmp_path)]
    assert found == ["a/1.jpg", "a/deep/3.tiff", "b/2.PNG", "c.bmp"]
    assert list(iter_image_paths(tmp_path / "a" / "1.jpg")) == [tmp_path / "a" / "1.jpg"]
    with pytest.raises(FileNotFoundError, match="Image source not found"):
        list(iter_image_paths(tmp_path / "missing"))


def test_stdin_paths_arrive_in_order_without_filtering() -> None:
    stream = io.StringIO("a.png\n\n  # comment\n b/notes.txt \nmissing.jpg\n")
    assert list(iter_image_paths("-", stdin=stream)) == [Path("a.png"), Path("b/notes.txt"), Path("missing.jpg")]


def test_read_rgb_converts_modes_and_names_unreadable_files(tmp_path: Path) -> None:
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "grey.png"), np.repeat(grey[..., None], 3, axis=2))
    Image.fromarray(grey.astype(np.uint16) * 1000).save(tmp_path / "sixteen.png")  # 16-bit: high byte kept
    np.testing.assert_array_equal(read_rgb(tmp_path / "sixteen.png")[..., 0], (grey.astype(np.int64) * 1000) // 256)
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 10
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "alpha.png")
    assert read_rgb(tmp_path / "alpha.png").shape == (4, 4, 3)
    assert (read_rgb(tmp_path / "alpha.png")[..., 0] == 200).all()  # colour kept, alpha dropped
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)  # incompressible
    Image.fromarray(noise).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.jpg").write_text("hello")
    for name in ("truncated.png", "text.jpg", "missing.png"):
        with pytest.raises(ImageReadError, match=rf"{name}: cannot read image"):
            read_rgb(tmp_path / name)


def test_overlay_blends_the_heat_map_outlines_the_mask_and_writes_the_label() -> None:
    image = np.full((64, 64, 3), 128, np.uint8)
    anomaly_map = np.zeros((64, 64), np.float32)
    anomaly_map[20:40, 20:40] = 1.0
    detection = Detection(0.9, True, anomaly_map, anomaly_map > 0.5, latency_ms=1.0)
    drawn = np.asarray(overlay(image, detection, alpha=0.5))
    assert drawn.shape == (64, 64, 3)
    assert (drawn[30, 30] != drawn[55, 55]).any()  # hot inside, cold outside
    assert drawn[30, 30, 0] > drawn[30, 30, 2]  # red-ish on the defect
    assert drawn[55, 55, 2] > drawn[55, 55, 0]  # blue-ish elsewhere
    assert (drawn[20, 25] == 255).all()  # white outline on the mask border
    assert (drawn[30, 30] != 255).any()  # not inside
    normal = np.asarray(overlay(image, Detection(0.1, False, np.zeros((64, 64), np.float32), None, 1.0)))
    assert (normal[:2, :2] != drawn[:2, :2]).any()  # label box: red for anomalous, black for normal


def test_inspection_helpers_import_without_torch() -> None:
    code = "import sys, anomalib_classaware.deploy; sys.exit(int('torch' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], check=False, timeout=120).returncode == 0
