"""Category names reach the checkpoint; anomalib's single-category datamodules work as one class."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine

import anomalib_classaware.models
from anomalib_classaware.data import MultiClassFolder
from anomalib_classaware.models.components import batch_category_ids, validate_category_names

MODELS = list(anomalib_classaware.models.__all__)


# MINT-AD's tokens are at stride 16: 64 px gives a 4x4 grid, where a 3x3 neighbour mask leaves keys to attend to
OVERRIDES: dict[str, dict] = {"MintAd": {"input_size": (64, 64), "neighbour_window": 3}}


def _model(name: str):
    cls = getattr(anomalib_classaware.models, name)
    kwargs = {"input_size": (32, 32), **OVERRIDES.get(name, {})}
    return cls(backbone="resnet18", pre_trained=False, evaluator=False, visualizer=False, **kwargs)


def _engine(tmp_path: Path) -> Engine:
    return Engine(default_root_dir=tmp_path / "results", max_steps=1, logger=False, enable_progress_bar=False)


@pytest.mark.parametrize("name", MODELS)
def test_category_names_are_saved_in_the_checkpoint(name: str, mvtec_tree, tmp_path: Path) -> None:
    datamodule = MultiClassFolder(mvtec_tree(["zeta", "alpha"]), num_workers=0, train_batch_size=4)
    model = _model(name)
    engine = _engine(tmp_path)
    engine.fit(model, datamodule=datamodule)
    assert model.category_names == ["alpha", "zeta"]
    checkpoint_path = engine.trainer.checkpoint_callback.best_model_path or str(tmp_path / "last.ckpt")
    if not Path(checkpoint_path).is_file():
        engine.trainer.save_checkpoint(checkpoint_path)
    restored = type(model).load_from_checkpoint(checkpoint_path)
    assert restored.category_names == ["alpha", "zeta"]


@pytest.mark.parametrize("name", MODELS)
def test_plain_anomalib_datamodule_is_one_class_and_says_so(name: str, mvtec_tree, tmp_path: Path, caplog) -> None:
    root = mvtec_tree(["bottle"])
    datamodule = MVTecAD(root=root, category="bottle", num_workers=0, train_batch_size=4)
    model = _model(name)
    with caplog.at_level(logging.INFO, logger="anomalib_classaware"):
        _engine(tmp_path).fit(model, datamodule=datamodule)
    assert model.category_names == ["bottle"]
    messages = [record.getMessage() for record in caplog.records if "no category ids" in record.getMessage()]
    assert len(messages) == 1
    assert "treating the training data as one class 'bottle'" in messages[0]


def test_batch_category_ids_default_to_one_class() -> None:
    class Plain:
        pass

    ids = batch_category_ids(Plain(), 3, torch.device("cpu"))
    assert ids.tolist() == [0, 0, 0]
    assert ids.dtype == torch.long

    class WithIds:
        category_id = torch.tensor([2, 0, 1])

    assert batch_category_ids(WithIds(), 3, torch.device("cpu")).tolist() == [2, 0, 1]


def test_duplicate_category_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="unique"):
        validate_category_names(["a", "a"])
    assert validate_category_names(None) is None
