"""Bad input in the multi-class datamodules: a clear error naming the file, or a documented conversion.

Covers corrupt, truncated, empty and non-image files, grayscale/alpha/16-bit/float images, masks of the
wrong size or without image, empty and unknown categories, missing roots, and ``skip_corrupt``.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from anomalib.data.utils import ValSplitMode, read_image
from PIL import Image

from anomalib_classaware.data import MultiClassDemo, MultiClassFolder, MultiClassMVTecAD, MultiClassVisa
from anomalib_classaware.data.images import (
    CorruptImageError,
    check_image_file,
    read_binary_mask,
    read_rgb_image,
)


def _folder(root: Path, **kwargs: object) -> MultiClassFolder:
    datamodule = MultiClassFolder(root=root, num_workers=0, train_batch_size=4, eval_batch_size=4, **kwargs)
    datamodule.setup()
    return datamodule


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# Conversions -----------------------------------------------------------------------------------


def test_grayscale_rgba_palette_and_bilevel_become_rgb(tmp_path: Path) -> None:
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    Image.fromarray(grey).save(tmp_path / "grey.png")
    rgba = np.dstack([grey, 255 - grey, grey // 2, np.full_like(grey, 7)])  # almost transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(np.dstack([grey, grey]), "LA").save(tmp_path / "la.png")
    Image.fromarray(grey).convert("P").save(tmp_path / "palette.png")
    Image.fromarray(grey > 100).save(tmp_path / "bilevel.png")

    expected_grey = torch.from_numpy(grey).float().div(255).expand(3, 8, 8)
    torch.testing.assert_close(read_rgb_image(tmp_path / "grey.png"), expected_grey)
    torch.testing.assert_close(read_rgb_image(tmp_path / "la.png"), expected_grey)  # alpha dropped
    torch.testing.assert_close(  # alpha dropped, colour kept as stored (not composited)
        read_rgb_image(tmp_path / "rgba.png"), torch.from_numpy(rgba[..., :3]).permute(2, 0, 1).float() / 255
    )
    palette = read_rgb_image(tmp_path / "palette.png")
    assert palette.shape == (3, 8, 8)
    assert (palette[0] == palette[1]).all()
    assert set(read_rgb_image(tmp_path / "bilevel.png").unique().tolist()) == {0.0, 1.0}
    for name in ("grey", "rgba", "la", "palette", "bilevel"):
        image = read_rgb_image(tmp_path / f"{name}.png")
        assert image.dtype == torch.float32
        assert image.shape == (3, 8, 8)


def test_sixteen_bit_images_keep_their_contrast(tmp_path: Path) -> None:
    """anomalib's reader clips 16-bit grayscale at 255 (nearly white); ours keeps the high byte."""
    values = np.linspace(0, 65535, 64).astype(np.uint16).reshape(8, 8)
    Image.fromarray(values).save(tmp_path / "grey16.png")
    cv2.imwrite(str(tmp_path / "grey16.tif"), values)
    cv2.imwrite(str(tmp_path / "colour16.png"), np.dstack([values, values // 2, values // 4]))  # BGR on disk
    expected = torch.from_numpy((values >> 8).astype(np.float32) / 255)

    assert Image.open(tmp_path / "grey16.png").mode == "I;16"
    assert read_image(tmp_path / "grey16.png").mean() > 0.95  # the anomalib behaviour this module fixes
    for name in ("grey16.png", "grey16.tif"):
        image = read_rgb_image(tmp_path / name)
        assert image.shape == (3, 8, 8)
        torch.testing.assert_close(image, expected.expand(3, 8, 8))
    colour = read_rgb_image(tmp_path / "colour16.png")
    torch.testing.assert_close(colour[2], expected)  # blue: the high byte too
    torch.testing.assert_close(colour[0], torch.from_numpy(((values // 4) >> 8).astype(np.float32) / 255))


def test_float_images_in_unit_range_are_scaled_others_rejected(tmp_path: Path) -> None:
    unit = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(unit, "F").save(tmp_path / "unit.tif")
    Image.fromarray(unit * 1000, "F").save(tmp_path / "wide.tif")
    image = read_rgb_image(tmp_path / "unit.tif")
    torch.testing.assert_close(image[0], torch.from_numpy(np.round(unit * 255) / 255).float())
    with pytest.raises(ValueError, match=r"wide\.tif.*outside \[0, 1\].*8-bit or 16-bit"):
        read_rgb_image(tmp_path / "wide.tif")


def test_masks_are_non_zero_pixels_whatever_the_mode(tmp_path: Path) -> None:
    mask = np.zeros((8, 8), np.uint16)
    mask[2:4, 2:5] = 1  # 0/1 masks and 16-bit masks
    Image.fromarray(mask).save(tmp_path / "mask16.png")
    Image.fromarray(mask.astype(np.uint8)).save(tmp_path / "mask01.png")
    Image.fromarray(np.dstack([mask.astype(np.uint8) * 255] * 3)).save(tmp_path / "mask_rgb.png")
    for name in ("mask16.png", "mask01.png", "mask_rgb.png"):
        read = read_binary_mask(tmp_path / name)
        assert read.dtype == torch.uint8
        assert read.shape == (8, 8)
        assert read.sum() == 6
        assert read[2:4, 2:5].all()


# Unreadable files ------------------------------------------------------------------------------


def test_check_image_file_catches_what_pillow_verify_misses(tmp_path: Path) -> None:
    array = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    for suffix in ("png", "jpg", "bmp"):
        Image.fromarray(array).save(tmp_path / f"ok.{suffix}")
        assert check_image_file(tmp_path / f"ok.{suffix}").size == (64, 64)
        (tmp_path / f"bad.{suffix}").write_bytes((tmp_path / f"ok.{suffix}").read_bytes())
        _truncate(tmp_path / f"bad.{suffix}")
        assert not check_image_file(tmp_path / f"bad.{suffix}").ok, suffix
    with Image.open(tmp_path / "bad.jpg") as image:
        image.verify()  # Pillow's verify() does nothing for JPEG: a truncated JPEG passes it
    (tmp_path / "empty.png").write_bytes(b"")
    assert check_image_file(tmp_path / "empty.png").error == "empty file (0 bytes)"
    (tmp_path / "text.png").write_text("not an image")
    assert "UnidentifiedImageError" in str(check_image_file(tmp_path / "text.png").error)
    assert "FileNotFoundError" in str(check_image_file(tmp_path / "missing.png").error)


@pytest.fixture
def damaged_tree(mvtec_tree) -> tuple[Path, dict[str, Path]]:
    """Two categories, with one truncated PNG, one empty file, one text file named .png, one truncated JPEG."""
    root = mvtec_tree(["a", "b"], num_train=4)
    bad = {
        "truncated": root / "a" / "train" / "good" / "001.png",
        "empty": root / "a" / "train" / "good" / "002.png",
        "text": root / "b" / "test" / "good" / "000.png",
        "jpeg": root / "b" / "train" / "good" / "003.jpg",
    }
    _truncate(bad["truncated"])
    bad["empty"].write_bytes(b"")
    bad["text"].write_text("this is not an image")
    Image.open(root / "b" / "train" / "good" / "003.png").convert("RGB").save(bad["jpeg"], quality=95)
    (root / "b" / "train" / "good" / "003.png").unlink()
    _truncate(bad["jpeg"])
    return root, bad


def test_unreadable_files_fail_at_setup_with_one_error_listing_them(damaged_tree) -> None:
    root, bad = damaged_tree
    with pytest.raises(CorruptImageError) as error:
        _folder(root)
    message = str(error.value)
    assert message.startswith("4 image file(s) cannot be read")
    for path in bad.values():
        assert str(path) in message
    assert "empty file (0 bytes)" in message
    assert "skip_corrupt=True" in message
    assert "--data.skip_corrupt true" in message


def test_skip_corrupt_leaves_them_out_with_one_warning(damaged_tree) -> None:
    root, bad = damaged_tree
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        datamodule = _folder(root, skip_corrupt=True)
    ours = [w for w in caught if "skip_corrupt" in str(w.message)]
    assert len(ours) == 1
    assert all(str(path) in str(ours[0].message) for path in bad.values())
    train_paths = set(datamodule.train_data.samples.image_path)
    test_paths = set(datamodule.test_data.samples.image_path)
    assert not {str(path) for path in bad.values()} & (train_paths | test_paths)
    assert len(train_paths) == 8 - 3
    assert len(test_paths) == 2 * (2 + 2) - 1
    items = [datamodule.train_data[i] for i in range(len(datamodule.train_data))]
    assert all(item.image.shape == (3, 32, 32) for item in items)


def test_corrupt_mask_skips_its_image_and_is_named(mvtec_tree) -> None:
    root = mvtec_tree(["a"])
    mask = root / "a" / "ground_truth" / "scratch" / "001_mask.png"
    _truncate(mask)
    with pytest.raises(CorruptImageError, match=re.escape(str(mask))):
        _folder(root)
    with pytest.warns(UserWarning, match=re.escape(str(mask))):
        datamodule = _folder(root, skip_corrupt=True)
    assert str(root / "a" / "test" / "scratch" / "001.png") not in set(datamodule.test_data.samples.image_path)
    assert len(datamodule.test_data) == 2 + 2 - 1


def test_unchecked_unreadable_file_fails_when_loaded_naming_it(mvtec_tree) -> None:
    root = mvtec_tree(["a"])
    broken = root / "a" / "train" / "good" / "000.png"
    _truncate(broken)
    datamodule = _folder(root, check_images=False)
    index = list(datamodule.train_data.samples.image_path).index(str(broken))
    with pytest.raises(CorruptImageError, match=re.escape(str(broken)) + r".*skip_corrupt=True"):
        datamodule.train_data[index]
    with pytest.raises(ValueError, match="check_images=True"):
        MultiClassFolder(root=root, skip_corrupt=True, check_images=False)


def test_skipping_every_training_image_of_a_category_is_an_error(mvtec_tree) -> None:
    root = mvtec_tree(["a", "b"], num_train=2)
    for path in (root / "b" / "train" / "good").iterdir():
        path.write_bytes(b"")
    with pytest.warns(UserWarning, match="skip_corrupt"), pytest.raises(ValueError, match=r"category \['b'\]"):
        _folder(root, skip_corrupt=True)


def test_non_image_entries_are_listed_in_one_warning(mvtec_tree, caplog) -> None:
    root = mvtec_tree(["a", "b"])
    stray = [
        root / "a" / "train" / "good" / "notes.txt",
        root / "b" / "test" / "scratch" / "Thumbs.db",
        root / "a" / "test" / "loose.png",  # an image outside any label folder
        root / "b" / "ground_truth" / "scratch" / "mask.json",
    ]
    for path in stray:
        path.write_text("x")
    (root / "a" / "train" / "good" / "nested").mkdir()
    (root / "a" / "train" / "good" / ".DS_Store").write_text("hidden: ignored silently")
    with caplog.at_level(logging.WARNING, logger="anomalib_classaware"):
        datamodule = _folder(root)
    messages = [record.getMessage() for record in caplog.records if "Ignoring" in record.getMessage()]
    assert len(messages) == 1
    assert "Ignoring 5 entries" in messages[0]
    assert all(str(path) in messages[0] for path in stray)
    assert str(root / "a" / "train" / "good" / "nested") + "/" in messages[0]
    assert ".DS_Store" not in messages[0]
    assert len(datamodule.train_data) == 8


# Masks, categories, roots ----------------------------------------------------------------------


def test_mask_of_another_size_is_an_error_naming_both_files(mvtec_tree) -> None:
    root = mvtec_tree(["a"])
    mask = root / "a" / "ground_truth" / "scratch" / "000_mask.png"
    Image.fromarray(np.zeros((16, 24), np.uint8)).save(mask)
    image = root / "a" / "test" / "scratch" / "000.png"
    pattern = re.escape(f"{str(mask)!r} is 16x24 (HxW) but its image {str(image)!r} is 32x32")
    with pytest.raises(ValueError, match=pattern):
        _folder(root)
    with pytest.raises(ValueError, match=pattern):  # skip_corrupt does not hide it: the file is readable
        _folder(root, skip_corrupt=True)
    datamodule = _folder(root, check_images=False)  # unchecked: the item load says the same
    index = list(datamodule.test_data.samples.image_path).index(str(image))
    with pytest.raises(ValueError, match=pattern):
        datamodule.test_data[index]


def test_masks_without_image_and_images_without_mask_say_what_to_do(mvtec_tree) -> None:
    root = mvtec_tree(["a"])
    (root / "a" / "ground_truth" / "scratch" / "001_mask.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"001\.png.*Add ground_truth/<defect>/<name>_mask\.png"):
        _folder(root)
    root = mvtec_tree(["b"])
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "b" / "ground_truth" / "scratch" / "000.png")
    duplicate = r"000\.png. and .*000_mask\.png. both belong to image .000.*keep one mask per image"
    with pytest.raises(ValueError, match=duplicate):
        _folder(root, categories=["b"])


def test_empty_category_is_named(mvtec_tree) -> None:
    root = mvtec_tree(["a"])
    (root / "empty" / "train" / "good").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"'empty' has no training images"):
        _folder(root)
    (root / "bare").mkdir()
    with pytest.raises(FileNotFoundError, match=r"bare.*train/good"):
        _folder(root, categories=["a", "bare"])


def test_category_without_test_images_is_reported(mvtec_tree, caplog) -> None:
    root = mvtec_tree(["a", "b"])
    for path in sorted((root / "b").glob("test/*/*")) + sorted((root / "b").glob("ground_truth/*/*")):
        path.unlink()
    with caplog.at_level(logging.WARNING, logger="anomalib_classaware"):
        _folder(root)
    assert any("['b'] have no test images" in record.getMessage() for record in caplog.records)


def test_missing_root_of_a_benchmark_names_it_and_says_prepare_data(tmp_path: Path) -> None:
    for datamodule, folder in (
        (MultiClassMVTecAD(root=tmp_path / "nowhere", categories=["bottle"]), tmp_path / "nowhere"),
        (MultiClassVisa(root=tmp_path / "nowhere", categories=["candle"]), tmp_path / "nowhere" / "visa_pytorch"),
    ):
        with pytest.raises(FileNotFoundError, match=re.escape(str(folder)) + r"' does not exist.*prepare_data"):
            datamodule.setup()
    with pytest.raises(FileNotFoundError, match=r"nowhere.*does not exist"):
        _folder(tmp_path / "nowhere")


def test_unknown_category_is_named_for_every_datamodule(mvtec_tree) -> None:
    root = mvtec_tree(["a"])
    with pytest.raises(ValueError, match=r"Unknown category \['z'\].*Valid: \['a'\]"):
        _folder(root, categories=["z"])
    with pytest.raises(ValueError, match=r"Unknown category \['bric'\].*'brick'"):
        MultiClassDemo(categories=["bric"])


# Through the whole pipeline --------------------------------------------------------------------


def test_mixed_modes_load_as_rgb_batches_and_synthetic_splits_read_16_bit(mvtec_tree) -> None:
    root = mvtec_tree(["a"], num_train=6, num_good=2)
    train = sorted((root / "a" / "train" / "good").glob("*.png"))
    Image.open(train[0]).convert("L").save(train[0])
    Image.open(train[1]).convert("RGBA").save(train[1])
    ramp = np.tile(np.linspace(20000, 40000, 32, dtype=np.uint16), (32, 1))
    for path in train[2:]:
        Image.fromarray(ramp).save(path)  # 16-bit grayscale: mean ~0.46 here, ~1.0 with anomalib's reader
    datamodule = _folder(root, val_split_mode=ValSplitMode.SYNTHETIC, val_split_ratio=0.5, seed=0)
    batches = list(datamodule.train_dataloader())
    assert all(batch.image.shape[1:] == (3, 32, 32) for batch in batches)
    validation = list(datamodule.val_data)
    assert any(item.gt_label == 1 for item in validation)  # synthetic anomalies generated from our reader's RGB
    assert all(0.1 < item.image.mean() < 0.8 for item in validation)


def test_demo_datamodule_skips_a_corrupted_cached_file(tmp_path: Path) -> None:
    kwargs = {"root": tmp_path / "demo", "categories": ["brick"], "image_size": 32, "num_workers": 0}
    kwargs |= {"num_train": 3, "num_test_good": 1, "num_test_defective": 1}
    MultiClassDemo(**kwargs).prepare_data()
    broken = tmp_path / "demo" / "brick" / "train" / "good" / "001.png"
    _truncate(broken)
    with pytest.raises(CorruptImageError, match=re.escape(str(broken))):
        MultiClassDemo(**kwargs).setup()
    with pytest.warns(UserWarning, match=re.escape(str(broken))):
        datamodule = MultiClassDemo(**kwargs, skip_corrupt=True)
        datamodule.setup()
    assert len(datamodule.train_data) == 2
