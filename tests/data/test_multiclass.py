"""Multi-class datamodules: category fields through every anomalib code path, and errors that name the problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data.utils import ValSplitMode
from anomalib.utils.path import generate_output_filename

from anomalib_classaware.data import (
    CategoryIndex,
    MultiClassDataset,
    MultiClassFolder,
    MultiClassImageBatch,
    MultiClassMVTecAD,
    MultiClassVisa,
)
from anomalib_classaware.data.dataclasses import NumpyMultiClassImageBatch


def _folder(root: Path, **kwargs: object) -> MultiClassFolder:
    datamodule = MultiClassFolder(root=root, num_workers=0, train_batch_size=4, eval_batch_size=4, **kwargs)
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule


def test_category_ids_are_stable_and_sorted() -> None:
    assert CategoryIndex(["cable", "bottle"]).names == ["bottle", "cable"]
    assert CategoryIndex(["cable", "bottle"]).id_of("cable") == 1
    with pytest.raises(ValueError, match="more than once"):
        CategoryIndex(["a", "a"])


def test_batches_carry_category_and_id(mvtec_tree) -> None:
    root = mvtec_tree(["zeta", "alpha", "mid"], defects=("scratch", "hole"))
    datamodule = _folder(root, categories=["zeta", "alpha"])
    assert datamodule.category_names == ["alpha", "zeta"]
    assert datamodule.categories == ["zeta", "alpha"]
    train = [batch for batch in datamodule.train_dataloader()]
    assert all(isinstance(batch, MultiClassImageBatch) for batch in train)
    pairs = {
        (name, int(index)) for batch in train for name, index in zip(batch.category, batch.category_id, strict=True)
    }
    assert pairs == {("alpha", 0), ("zeta", 1)}
    assert sum(len(batch.image) for batch in train) == 8
    test_batches = list(datamodule.test_dataloader())
    labels = torch.cat([batch.gt_label for batch in test_batches])
    assert int(labels.sum()) == 2 * 2 * 2  # 2 categories x 2 defect types x 2 images
    assert all(batch.gt_mask is not None for batch in test_batches)


def test_category_survives_update_iteration_and_to_numpy(mvtec_tree) -> None:
    datamodule = _folder(mvtec_tree(["a", "b"]))
    batch = next(iter(datamodule.test_dataloader()))
    updated = batch.update(pred_score=torch.rand(len(batch)), in_place=False)
    assert updated.category == batch.category
    assert [item.category for item in updated] == batch.category
    numpy_batch = updated.to_numpy()
    assert isinstance(numpy_batch, NumpyMultiClassImageBatch)
    assert isinstance(numpy_batch.category_id, np.ndarray)
    np.testing.assert_array_equal(numpy_batch.category_id, batch.category_id.numpy())


@pytest.mark.parametrize("mode", [ValSplitMode.SYNTHETIC, ValSplitMode.FROM_TEST, ValSplitMode.SAME_AS_TEST])
def test_validation_splits_keep_categories(mvtec_tree, mode: ValSplitMode) -> None:
    datamodule = _folder(mvtec_tree(["a", "b"], num_train=6, num_good=4), val_split_mode=mode, seed=3)
    batches = list(datamodule.val_dataloader())
    assert all(isinstance(batch, MultiClassImageBatch) for batch in batches)
    seen = {name for batch in batches for name in batch.category}
    assert seen == {"a", "b"}
    if mode == ValSplitMode.SYNTHETIC:
        labels = torch.cat([batch.gt_label for batch in batches])
        assert labels.any() and not labels.all()


def test_visualizer_paths_keep_category(mvtec_tree) -> None:
    """anomalib's visualizer names output files from datamodule.name: same file names must not collide."""
    datamodule = _folder(mvtec_tree(["a", "b"]))
    items = list(datamodule.test_data)
    same_name = [item for item in items if Path(item.image_path).name == "000.png" and "scratch" in item.image_path]
    assert len(same_name) == 2
    outputs = {
        generate_output_filename(
            item.image_path, "/out", dataset_name=datamodule.name, category=datamodule.category, mkdir=False
        )
        for item in same_name
    }
    assert outputs == {Path("/out/a/test/scratch/000.png"), Path("/out/b/test/scratch/000.png")}


def test_unknown_category_lists_valid_ones(mvtec_tree) -> None:
    root = mvtec_tree(["a", "b"])
    with pytest.raises(ValueError, match=r"Unknown category \['nope'\].*Valid: \['a', 'b'\]"):
        _folder(root, categories=["nope"])
    with pytest.raises(ValueError, match=r"Valid: \['bottle'"):
        MultiClassMVTecAD(root=root, categories=["bottel"])
    with pytest.raises(ValueError, match="candle"):
        MultiClassVisa(root=root, categories=["candel"])


def test_missing_root_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        _folder(tmp_path / "does-not-exist")


def test_category_without_train_good_is_named(mvtec_tree) -> None:
    root = mvtec_tree(["a"])
    (root / "stray" / "docs").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"stray.*train/good"):
        _folder(root)


def test_missing_and_orphan_masks_are_reported_by_file(mvtec_tree) -> None:
    root = mvtec_tree(["a"])
    (root / "a" / "ground_truth" / "scratch" / "001_mask.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"001\.png"):
        _folder(root)


def test_orphan_mask_is_reported(mvtec_tree) -> None:
    root = mvtec_tree(["a"])
    (root / "a" / "test" / "scratch" / "000.png").unlink()
    with pytest.raises(ValueError, match=r"000_mask\.png"):
        _folder(root)


def test_categories_without_masks_are_classification(mvtec_tree) -> None:
    datamodule = _folder(mvtec_tree(["a", "b"], masks=False))
    assert datamodule.test_data.task.value == "classification"
    assert next(iter(datamodule.test_dataloader())).gt_mask is None


def test_defect_images_in_train_are_rejected(mvtec_tree) -> None:
    root = mvtec_tree(["a"])
    (root / "a" / "train" / "scratch").mkdir()
    with pytest.raises(ValueError, match=r"train/scratch.*must be normal"):
        _folder(root)


def test_dataset_name_and_results_category(mvtec_tree) -> None:
    datamodule = _folder(mvtec_tree(["a"]))
    assert datamodule.name == "dataset"
    assert datamodule.category == "unified"
    assert isinstance(datamodule.train_data, MultiClassDataset)
