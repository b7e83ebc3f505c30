"""Tests of the per-category evaluator: arithmetic against sklearn, logging, CSV, checkpoints."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from anomalib.data import ImageBatch
from anomalib.metrics import AUPRO, AUROC, Evaluator
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader

from anomalib_classaware.metrics import (
    CSV_FILENAME,
    METRIC_NAMES,
    PerCategoryEvaluator,
    per_category_metrics_table,
    results_to_dataframe,
    write_csv,
)

CATEGORIES = ("bottle", "cable", "screw")
SIZE = 8  # anomaly map side


@dataclass
class _CatBatch(ImageBatch):
    category: list[str] | None = None
    category_id: torch.Tensor | None = None


@dataclass
class _Data:
    """Known test-set predictions: per sample category, label, score, mask and map."""

    names: list[str]
    ids: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    masks: np.ndarray
    maps: np.ndarray

    def of(self, category: str) -> np.ndarray:
        return np.array([name == category for name in self.names])


def make_data(n: int = 60, seed: int = 0, single_label: str | None = None) -> _Data:
    """Random predictions for ``CATEGORIES``; each category has both labels unless ``single_label``."""
    rng = np.random.default_rng(seed)
    ids = np.arange(n) % len(CATEGORIES)
    rng.shuffle(ids)
    names = [CATEGORIES[i] for i in ids]
    labels = (rng.random(n) < 0.5).astype(np.int64)
    for category_id in range(len(CATEGORIES)):  # guarantee both labels per category
        where = np.flatnonzero(ids == category_id)
        labels[where[0]], labels[where[1]] = 0, 1
    if single_label is not None:
        labels[[name == single_label for name in names]] = 0
    # Rounded scores create ties, which sklearn and the metrics must treat alike. Scores exceed [0, 1]
    # in some batches only: torchmetrics' default per-update sigmoid would make AUROC wrong here.
    scores = np.round(0.4 * labels + rng.random(n) * (1 + ids), 2).astype(np.float32)
    masks = np.zeros((n, SIZE, SIZE), dtype=bool)
    for i in np.flatnonzero(labels):
        y, x = rng.integers(0, SIZE - 3, size=2)
        height, width = rng.integers(1, 4, size=2)
        masks[i, y : y + height, x : x + width] = True
    maps = (0.5 * masks + rng.random((n, SIZE, SIZE))).astype(np.float32)
    return _Data(names, ids, labels, scores, masks, maps)


def make_batches(data: _Data, batch_size: int = 8, categories: bool = True, pixels: bool = True) -> list[ImageBatch]:
    batches: list[ImageBatch] = []
    for start in range(0, len(data.names), batch_size):
        part = slice(start, start + batch_size)
        fields: dict[str, Any] = {
            "image": torch.zeros(len(data.names[part]), 3, SIZE, SIZE),
            "gt_label": torch.from_numpy(data.labels[part]).bool(),
            "pred_score": torch.from_numpy(data.scores[part]),
        }
        if pixels:
            fields["gt_mask"] = torch.from_numpy(data.masks[part])
            fields["anomaly_map"] = torch.from_numpy(data.maps[part])
        if categories:
            batches.append(
                _CatBatch(**fields, category=data.names[part], category_id=torch.from_numpy(data.ids[part])),
            )
        else:
            batches.append(ImageBatch(**fields))
    return batches


def f1_max_brute_force(labels: np.ndarray, scores: np.ndarray) -> float:
    best = 0.0
    for threshold in np.unique(scores):
        predicted = scores >= threshold
        tp = np.sum(predicted & (labels == 1))
        fp = np.sum(predicted & (labels == 0))
        fn = np.sum(~predicted & (labels == 1))
        best = max(best, 2 * tp / (2 * tp + fp + fn))
    return float(best)


def feed(evaluator: PerCategoryEvaluator, batches: list[ImageBatch]) -> None:
    for index, batch in enumerate(batches):
        evaluator.on_test_batch_end(None, None, None, batch, index)  # type: ignore[arg-type]


class _ToyModule(LightningModule):
    """Emits the predictions already stored in the batch."""

    def __init__(self, evaluator: Evaluator) -> None:
        super().__init__()
        self.evaluator = evaluator
        self.weight = nn.Parameter(torch.zeros(1))

    def configure_callbacks(self) -> list[Evaluator]:
        return [self.evaluator]

    def test_step(self, batch: ImageBatch, batch_idx: int) -> ImageBatch:
        return batch


class _PlainDataModule(LightningDataModule):
    category = "bottle"

    def __init__(self, batches: list[ImageBatch]) -> None:
        super().__init__()
        self.batches = batches

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.batches, batch_size=None)


def run_test(model: LightningModule, tmp_path: Path, **kwargs: Any) -> dict[str, float]:
    trainer = Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **{key: kwargs.pop(key) for key in ("barebones",) if key in kwargs},
    )
    outputs = trainer.test(model, verbose=False, **kwargs)
    return {key: float(value) for key, value in trainer.callback_metrics.items()} | (outputs[0] if outputs else {})


# Arithmetic -----------------------------------------------------------------------------------


def test_image_metrics_match_sklearn_per_category_and_mean() -> None:
    data = make_data()
    evaluator = PerCategoryEvaluator(pixel_metrics=False, print_table=False)
    evaluator.on_test_epoch_start(None, None)  # type: ignore[arg-type]
    feed(evaluator, make_batches(data, pixels=False))
    results = evaluator.compute()

    assert list(results) == [*CATEGORIES, "mean"]
    aurocs, f1s = [], []
    for category in CATEGORIES:
        mask = data.of(category)
        aurocs.append(roc_auc_score(data.labels[mask], data.scores[mask]))
        f1s.append(f1_max_brute_force(data.labels[mask], data.scores[mask]))
        assert results[category]["image_AUROC"] == pytest.approx(aurocs[-1], abs=1e-6)
        assert results[category]["image_F1Max"] == pytest.approx(f1s[-1], abs=1e-5)
    assert results["mean"]["image_AUROC"] == pytest.approx(np.mean(aurocs), abs=1e-6)
    assert results["mean"]["image_F1Max"] == pytest.approx(np.mean(f1s), abs=1e-5)
    # the mean of per-category values is not the pooled AUROC (scores have per-category scales)
    assert abs(results["mean"]["image_AUROC"] - roc_auc_score(data.labels, data.scores)) > 1e-3
    assert set(results["mean"]) == {"image_AUROC", "image_F1Max"}  # no pixel columns without masks


def test_pixel_metrics_match_sklearn_and_aupro_per_category() -> None:
    data = make_data(n=45, seed=1)
    evaluator = PerCategoryEvaluator(print_table=False)
    feed(evaluator, make_batches(data, batch_size=7))
    results = evaluator.compute()

    assert list(results["mean"]) == list(METRIC_NAMES)
    pixel_aurocs, aupros = [], []
    for category in CATEGORIES:
        mask = data.of(category)
        pixel_aurocs.append(roc_auc_score(data.masks[mask].ravel(), data.maps[mask].ravel()))
        reference = AUPRO(fields=["anomaly_map", "gt_mask"], fpr_limit=0.3)  # on this category's samples only
        reference.update(
            SimpleNamespace(gt_mask=torch.from_numpy(data.masks[mask]), anomaly_map=torch.from_numpy(data.maps[mask]))
        )
        aupros.append(float(reference.compute()))
        assert results[category]["pixel_AUROC"] == pytest.approx(pixel_aurocs[-1], abs=1e-5)
        assert results[category]["pixel_AUPRO"] == pytest.approx(aupros[-1], abs=1e-6)
        assert 0.0 < results[category]["pixel_AUPRO"] < 1.0
    assert results["mean"]["pixel_AUROC"] == pytest.approx(np.mean(pixel_aurocs), abs=1e-5)
    assert results["mean"]["pixel_AUPRO"] == pytest.approx(np.mean(aupros), abs=1e-6)


def test_aupro_uses_fpr_limit() -> None:
    data = make_data(n=30, seed=2)
    default, wide = PerCategoryEvaluator(), PerCategoryEvaluator(fpr_limit=1.0)
    for evaluator in (default, wide):
        feed(evaluator, make_batches(data))
    assert default.category_metrics["category_0"].pixel_metrics["pixel_AUPRO"].fpr_limit == pytest.approx(0.3)
    assert default.compute()["bottle"]["pixel_AUPRO"] != pytest.approx(wide.compute()["bottle"]["pixel_AUPRO"])
    with pytest.raises(ValueError, match="fpr_limit"):
        PerCategoryEvaluator(fpr_limit=0.0)


def test_plain_batches_form_one_category() -> None:
    data = make_data(n=24, seed=3)
    evaluator = PerCategoryEvaluator(print_table=False)
    feed(evaluator, make_batches(data, categories=False))
    results = evaluator.compute()
    assert list(results) == ["all", "mean"]
    assert results["all"]["image_AUROC"] == pytest.approx(roc_auc_score(data.labels, data.scores), abs=1e-6)
    assert results["all"] == results["mean"]


def test_category_ids_without_names_are_used_as_names() -> None:
    data = make_data(n=24, seed=4)
    batches = [
        _CatBatch(image=b.image, gt_label=b.gt_label, pred_score=b.pred_score, category_id=b.category_id)
        for b in make_batches(data, pixels=False)
    ]
    evaluator = PerCategoryEvaluator()
    feed(evaluator, batches)
    results = evaluator.compute()
    assert list(results) == ["0", "1", "2", "mean"]
    mask = data.of("cable")
    assert results["1"]["image_AUROC"] == pytest.approx(roc_auc_score(data.labels[mask], data.scores[mask]), abs=1e-6)


def test_single_label_category_is_nan_with_warning_and_ignored_by_mean() -> None:
    data = make_data(seed=5, single_label="screw")
    evaluator = PerCategoryEvaluator(print_table=False)
    feed(evaluator, make_batches(data))
    with pytest.warns(UserWarning, match="'screw'") as record:
        results = evaluator.compute()
    assert len(record) == 2  # images and pixels
    assert all(math.isnan(value) for value in results["screw"].values())
    for metric in METRIC_NAMES:
        expected = np.mean([results[category][metric] for category in ("bottle", "cable")])
        assert results["mean"][metric] == pytest.approx(expected)


def test_category_without_masks_has_nan_pixel_metrics() -> None:
    data = make_data(n=24, seed=6)
    batches = make_batches(data) + make_batches(make_data(n=6, seed=7), pixels=False)
    for batch in batches[-1:]:
        batch.category = ["toothbrush"] * len(batch.category)
    evaluator = PerCategoryEvaluator(print_table=False)
    feed(evaluator, batches)
    results = evaluator.compute()
    assert math.isnan(results["toothbrush"]["pixel_AUROC"])
    assert not math.isnan(results["toothbrush"]["image_AUROC"])
    assert results["mean"]["pixel_AUROC"] == pytest.approx(np.mean([results[c]["pixel_AUROC"] for c in CATEGORIES]))


def test_reserved_and_mismatched_categories_are_rejected() -> None:
    evaluator = PerCategoryEvaluator()
    batch = _CatBatch(image=torch.zeros(2, 3, 4, 4), gt_label=torch.tensor([0, 1]), pred_score=torch.rand(2))
    batch.category = ["mean", "mean"]
    with pytest.raises(ValueError, match="reserved"):
        evaluator.update(batch)
    batch.category = ["a"]
    with pytest.raises(ValueError, match="2 samples"):
        evaluator.update(batch)


# Reporting ------------------------------------------------------------------------------------


def test_epoch_end_without_trainer_sets_last_results_and_frees_state(tmp_path: Path, capsys: Any) -> None:
    data = make_data(n=24, seed=8)
    evaluator = PerCategoryEvaluator(results_dir=tmp_path / "out")
    feed(evaluator, make_batches(data))
    expected = evaluator.compute()
    evaluator.on_test_epoch_end(None, None)  # type: ignore[arg-type]
    assert evaluator.last_results == expected
    assert len(evaluator.category_metrics) == 0
    assert evaluator.last_csv_path == tmp_path / "out" / CSV_FILENAME
    assert evaluator.last_csv_path.is_file()
    printed = capsys.readouterr().out
    assert all(name in printed for name in (*CATEGORIES, "mean", "image_AUROC", "pixel_AUPRO"))
    assert f"{100 * expected['mean']['image_AUROC']:.1f}" in printed


def test_table_and_csv_format(tmp_path: Path) -> None:
    results = {
        "a": {"image_AUROC": 0.98765, "pixel_AUROC": math.nan},
        "long_name": {"image_AUROC": 0.5, "pixel_AUROC": 0.25},
        "mean": {"image_AUROC": 0.743825, "pixel_AUROC": 0.25},
    }
    assert per_category_metrics_table(results).splitlines() == [
        "category   image_AUROC  pixel_AUROC",
        "-----------------------------------",
        "a                 98.8          nan",
        "long_name         50.0         25.0",
        "-----------------------------------",
        "mean              74.4         25.0",
    ]
    assert "0.9877" in per_category_metrics_table(results, percent=False)

    path = write_csv(results, tmp_path / "sub" / CSV_FILENAME)
    with path.open() as file:
        rows = list(csv.reader(file))
    assert rows == [
        ["category", "image_AUROC", "pixel_AUROC"],
        ["a", "0.987650", "nan"],
        ["long_name", "0.500000", "0.250000"],
        ["mean", "0.743825", "0.250000"],
    ]
    frame = results_to_dataframe(results)
    assert list(frame.index) == ["a", "long_name", "mean"]
    assert frame.loc["long_name", "pixel_AUROC"] == 0.25


# Lightning integration ------------------------------------------------------------------------


def test_trainer_logs_prints_and_saves_per_category_metrics(tmp_path: Path, capsys: Any) -> None:
    data = make_data(seed=9)
    evaluator = PerCategoryEvaluator()
    model = _ToyModule(evaluator)
    logged = run_test(model, tmp_path, dataloaders=DataLoader(make_batches(data), batch_size=None))

    expected_names = {f"{c}/{m}" for c in (*CATEGORIES, "mean") for m in METRIC_NAMES}
    assert set(logged) == expected_names
    for category in CATEGORIES:
        mask = data.of(category)
        assert logged[f"{category}/image_AUROC"] == pytest.approx(
            roc_auc_score(data.labels[mask], data.scores[mask]), abs=1e-6
        )
        assert logged[f"{category}/pixel_AUROC"] == pytest.approx(
            roc_auc_score(data.masks[mask].ravel(), data.maps[mask].ravel()), abs=1e-5
        )
    for metric in METRIC_NAMES:
        assert logged[f"mean/{metric}"] == pytest.approx(evaluator.last_results["mean"][metric], abs=1e-6)

    with (tmp_path / CSV_FILENAME).open() as file:
        rows = list(csv.DictReader(file))
    assert [row["category"] for row in rows] == [*CATEGORIES, "mean"]
    assert float(rows[0]["image_AUROC"]) == pytest.approx(logged["bottle/image_AUROC"], abs=1e-6)
    assert "Per-category test metrics" in capsys.readouterr().out


def test_trainer_with_plain_datamodule_names_category_after_datamodule(tmp_path: Path) -> None:
    data = make_data(n=24, seed=10)
    model = _ToyModule(PerCategoryEvaluator(print_table=False, save_csv=False))
    logged = run_test(model, tmp_path, datamodule=_PlainDataModule(make_batches(data, categories=False)))
    assert set(logged) == {f"{c}/{m}" for c in ("bottle", "mean") for m in METRIC_NAMES}
    assert logged["bottle/image_AUROC"] == pytest.approx(roc_auc_score(data.labels, data.scores), abs=1e-6)
    assert not (tmp_path / CSV_FILENAME).exists()


def test_barebones_trainer_exposes_metrics(tmp_path: Path) -> None:
    data = make_data(n=24, seed=11)
    model = _ToyModule(PerCategoryEvaluator(print_table=False, pixel_metrics=False))
    logged = run_test(model, tmp_path, barebones=True, dataloaders=DataLoader(make_batches(data), batch_size=None))
    assert set(logged) == {f"{c}/{m}" for c in (*CATEGORIES, "mean") for m in ("image_AUROC", "image_F1Max")}


def test_pooled_metrics_from_existing_evaluator_are_kept(tmp_path: Path) -> None:
    data = make_data(n=24, seed=12)
    base = Evaluator(
        val_metrics=[AUROC(fields=["pred_score", "gt_label"], prefix="val_")],
        test_metrics=[AUROC(fields=["pred_score", "gt_label"], prefix="pooled_")],
    )
    evaluator = PerCategoryEvaluator.from_evaluator(base, print_table=False, save_csv=False)
    assert list(evaluator.val_metrics) == list(base.val_metrics)
    logged = run_test(_ToyModule(evaluator), tmp_path, dataloaders=DataLoader(make_batches(data), batch_size=None))
    assert logged["pooled_AUROC"] == pytest.approx(roc_auc_score(data.labels, data.scores), abs=1e-6)
    assert "mean/image_AUROC" in logged


# Checkpoints ----------------------------------------------------------------------------------


def test_state_dict_is_unchanged_by_per_category_metrics(tmp_path: Path) -> None:
    data = make_data(n=24, seed=13)
    fresh_keys = set(_ToyModule(PerCategoryEvaluator()).state_dict())

    # after a full test run (state freed) ...
    model = _ToyModule(PerCategoryEvaluator(print_table=False, save_csv=False))
    run_test(model, tmp_path, dataloaders=DataLoader(make_batches(data), batch_size=None))
    assert set(model.state_dict()) == fresh_keys
    # ... and with live per-category metrics (mid-epoch)
    feed(model.evaluator, make_batches(data))
    assert len(model.evaluator.category_metrics) == len(CATEGORIES)
    state = model.state_dict()
    assert set(state) == fresh_keys

    fresh = _ToyModule(PerCategoryEvaluator())
    fresh.load_state_dict(state, strict=True)
    model.load_state_dict(fresh.state_dict(), strict=True)

    # a checkpoint written with weights_only-safe content loads strictly, even with stray metric keys
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": state | {"evaluator.category_metrics.category_0.x": torch.ones(1)}}, path)
    checkpoint = torch.load(path, weights_only=True)
    _ToyModule(PerCategoryEvaluator()).load_state_dict(checkpoint["state_dict"], strict=True)
    model.load_state_dict(checkpoint["state_dict"], strict=True)
