"""Tests of class-balanced batches: the P x K sampler, its shape rules, and the datamodule / model wiring."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from anomalib.engine import Engine
from lightning.pytorch import Callback
from torch.utils.data import DistributedSampler

from anomalib_classaware.data import MultiClassDemo
from anomalib_classaware.data.sampler import ClassBalancedBatchSampler, balanced_batch_shape
from anomalib_classaware.models import ClassAwareRecon, ReContrast

# 4 categories x 8 images, interleaved so that category != index block
IDS = [index % 4 for index in range(32)]


def _categories(batch: list[int], ids: list[int] = IDS) -> Counter:
    return Counter(ids[index] for index in batch)


def test_every_batch_holds_p_categories_of_k_distinct_images() -> None:
    ids = IDS + [4] * 3  # a fifth, smaller category is oversampled, never repeated inside a batch
    sampler = ClassBalancedBatchSampler(ids, categories_per_batch=3, images_per_category=3, seed=0)
    for epoch in range(4):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == len(ids) // 9
        for batch in batches:
            assert len(batch) == len(set(batch)) == 9
            counts = _categories(batch, ids)
            assert len(counts) == 3
            assert set(counts.values()) == {3}


def test_deterministic_given_seed_and_epoch() -> None:
    def batches(seed: int, epoch: int) -> list[list[int]]:
        sampler = ClassBalancedBatchSampler(IDS, 2, 2, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert batches(0, 0) == batches(0, 0)
    assert batches(0, 0) != batches(1, 0)
    assert batches(0, 0) != batches(0, 1)


def test_categories_are_drawn_equally_often_and_images_before_repeats() -> None:
    sampler = ClassBalancedBatchSampler(IDS, 2, 2, seed=3)
    indices = [index for batch in sampler for index in batch]
    assert len(indices) == 32
    assert sorted(indices) == list(range(32))  # equal-sized categories: every image once per epoch


def test_two_ranks_get_disjoint_shares_of_one_global_sequence() -> None:
    ranks = [ClassBalancedBatchSampler(IDS, 2, 2, seed=5, num_replicas=2, rank=rank) for rank in (0, 1)]
    for sampler in ranks:
        sampler.set_epoch(2)
    first, second = (list(sampler) for sampler in ranks)
    assert len(first) == len(second) == 4
    assert not {i for batch in first for i in batch} & {i for batch in second for i in batch}
    assert sorted(i for batch in first + second for i in batch) == list(range(32))
    # Lightning's injected DistributedSampler gives the rank, the process count and the epoch
    injected = DistributedSampler(list(range(32)), num_replicas=2, rank=1, shuffle=True)
    from_lightning = ClassBalancedBatchSampler(IDS, 2, 2, seed=5, sampler=injected)
    injected.set_epoch(2)
    assert list(from_lightning) == second


def test_impossible_arguments_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="categories_per_batch=5 but the training data has 4 categories"):
        ClassBalancedBatchSampler(IDS, 5, 2)
    with pytest.raises(ValueError, match=r"images_per_category=4 but .*'d' \(3\).*images_per_category <= 3"):
        ClassBalancedBatchSampler([0] * 4 + [1] * 4 + [2] * 4 + [3] * 3, 2, 4, category_names=["a", "b", "c", "d"])
    with pytest.raises(ValueError, match="at least 1"):
        ClassBalancedBatchSampler(IDS, 0, 2)
    with pytest.raises(ValueError, match="rank 2 is outside"):
        ClassBalancedBatchSampler(IDS, 2, 2, num_replicas=2, rank=2)


def test_batch_shape_rules() -> None:
    assert balanced_batch_shape(8, [60] * 8) == (4, 2)
    assert balanced_batch_shape(16, [60] * 15) == (8, 2)
    assert balanced_batch_shape(32, [60] * 2) == (2, 16)
    assert balanced_batch_shape(6, [60] * 2) == (2, 3)
    assert balanced_batch_shape(8, [60] * 8, categories_per_batch=2) == (2, 4)
    assert balanced_batch_shape(8, [60] * 8, images_per_category=4) == (2, 4)
    assert balanced_batch_shape(8, [60] * 8, 3, 3) == (3, 3)
    with pytest.raises(ValueError, match="categories_per_batch=3 does not divide train_batch_size=8"):
        balanced_batch_shape(8, [60] * 8, categories_per_batch=3)
    with pytest.raises(ValueError, match="No class-balanced split of train_batch_size=5"):
        balanced_batch_shape(5, [60] * 8)
    with pytest.raises(ValueError, match="smallest: 1"):
        balanced_batch_shape(8, [60, 1])


def _datamodule(root: Path, **kwargs) -> MultiClassDemo:
    datamodule = MultiClassDemo(
        root=root,
        categories=["brick", "coins", "grass", "gravel"],
        image_size=32,
        num_train=4,
        num_test_good=1,
        num_test_defective=1,
        train_batch_size=4,
        eval_batch_size=4,
        num_workers=0,
        seed=0,
        **kwargs,
    )
    datamodule.setup("fit")
    return datamodule


def _attach(datamodule: MultiClassDemo, model: object) -> None:
    datamodule.trainer = SimpleNamespace(lightning_module=model, world_size=1, global_rank=0)  # type: ignore[assignment]


def _tiny(cls: type, **kwargs) -> object:
    return cls(backbone="resnet18", pre_trained=False, input_size=(32, 32), evaluator=False, visualizer=False, **kwargs)


def test_datamodule_follows_the_model_and_its_arguments(tmp_path: Path, caplog) -> None:
    datamodule = _datamodule(tmp_path / "demo")
    _attach(datamodule, _tiny(ClassAwareRecon))
    with caplog.at_level(logging.INFO, logger="anomalib_classaware"):
        sampler = datamodule.train_dataloader().batch_sampler
        datamodule.train_dataloader()
    assert isinstance(sampler, ClassBalancedBatchSampler)
    assert (sampler.categories_per_batch, sampler.images_per_category) == (2, 2)
    messages = [r.getMessage() for r in caplog.records if "Class-balanced batches" in r.getMessage()]
    assert len(messages) == 1
    assert "ClassAwareRecon asks for them" in messages[0]
    # models that do not ask keep anomalib's shuffled batches
    for model in (_tiny(ReContrast), _tiny(ClassAwareRecon, class_labels="pseudo")):
        _attach(datamodule, model)
        assert not isinstance(datamodule.train_dataloader().batch_sampler, ClassBalancedBatchSampler)
    _attach(datamodule, _tiny(ReContrast, class_aware=True))
    assert isinstance(datamodule.train_dataloader().batch_sampler, ClassBalancedBatchSampler)
    off = _datamodule(tmp_path / "demo", balanced_batches=False)
    _attach(off, _tiny(ClassAwareRecon))
    assert not isinstance(off.train_dataloader().batch_sampler, ClassBalancedBatchSampler)
    forced = _datamodule(tmp_path / "demo", balanced_batches=True, images_per_category=5)
    _attach(forced, _tiny(ReContrast))
    with pytest.raises(ValueError, match="images_per_category=5 does not divide"):
        forced.train_dataloader()


class _RecordIds(Callback):
    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        del trainer, pl_module, batch_idx
        self.batches.append(torch.as_tensor(batch.category_id).tolist())


def test_class_aware_recon_trains_on_balanced_batches(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _tiny(ClassAwareRecon)
    record = _RecordIds()
    engine = Engine(
        default_root_dir=tmp_path / "results", max_steps=3, logger=False, enable_progress_bar=False, callbacks=[record]
    )
    engine.fit(model, datamodule=_datamodule(tmp_path / "demo"))
    assert len(record.batches) == 3
    for ids in record.batches:
        counts = Counter(ids)
        assert len(counts) == 2
        assert set(counts.values()) == {2}


def test_lightning_ddp_injection_keeps_the_balanced_batches() -> None:
    """Under DDP Lightning re-creates the batch sampler with its DistributedSampler; the batches must not change."""
    from lightning.fabric.utilities.data import _replace_dunder_methods, _set_sampler_epoch
    from lightning.pytorch.utilities.data import _update_dataloader
    from torch.utils.data import BatchSampler, DataLoader

    data = list(range(32))
    with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):  # as Lightning does
        loader = DataLoader(data, batch_sampler=ClassBalancedBatchSampler(IDS, 2, 2, seed=5, num_replicas=2, rank=1))
    injected = _update_dataloader(loader, DistributedSampler(data, num_replicas=2, rank=1, shuffle=True))
    _set_sampler_epoch(injected, 2)
    expected = ClassBalancedBatchSampler(IDS, 2, 2, seed=5, num_replicas=2, rank=1)
    expected.set_epoch(2)
    assert isinstance(injected.batch_sampler, ClassBalancedBatchSampler)
    assert [batch.tolist() for batch in injected] == list(expected)
