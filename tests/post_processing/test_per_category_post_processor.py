"""PerCategoryPostProcessor: per-category thresholds and min-max, raw-score metrics, anomalib's case of one category."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from anomalib.data import ImageBatch, InferenceBatch
from anomalib.post_processing import PostProcessor
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader

from anomalib_classaware.data.dataclasses import ClassAwareInferenceBatch
from anomalib_classaware.metrics import PerCategoryEvaluator
from anomalib_classaware.post_processing import PerCategoryPostProcessor

SIZE = 8


@dataclass
class _CatBatch(ImageBatch):
    category: list[str] | None = None
    category_id: torch.Tensor | None = None
    pred_category: torch.Tensor | None = None


def two_scales(n: int = 40, seed: int = 0, gap: float = 0.5) -> dict[str, np.ndarray]:
    """Category 0 scores in about [0, 1], category 1 the same times 10; both labels in both."""
    rng = np.random.default_rng(seed)
    category = np.arange(n) % 2
    label = (np.arange(n) // 2) % 2
    score = (gap * label + rng.random(n)) * np.where(category == 1, 10.0, 1.0)
    maps = rng.random((n, SIZE, SIZE)) * np.where(category == 1, 10.0, 1.0)[:, None, None]
    masks = np.zeros((n, SIZE, SIZE), dtype=bool)
    masks[label == 1, 2:5, 2:5] = True
    maps = maps + 2.0 * masks * np.where(category == 1, 10.0, 1.0)[:, None, None]
    return {
        "category": category,
        "label": label,
        "score": score.astype(np.float32),
        "map": maps.astype(np.float32),
        "mask": masks,
    }


def batches(data: dict[str, np.ndarray], size: int = 8, with_category: bool = True) -> list[ImageBatch]:
    result: list[ImageBatch] = []
    for start in range(0, len(data["score"]), size):
        part = slice(start, start + size)
        fields: dict[str, Any] = {
            "image": torch.zeros(len(data["score"][part]), 3, SIZE, SIZE),
            "gt_label": torch.from_numpy(data["label"][part]).bool(),
            "gt_mask": torch.from_numpy(data["mask"][part]),
            "pred_score": torch.from_numpy(data["score"][part]).clone(),
            "anomaly_map": torch.from_numpy(data["map"][part]).clone(),
        }
        if with_category:
            ids = torch.from_numpy(data["category"][part])
            result.append(
                _CatBatch(
                    **fields, category=[f"c{i}" for i in ids.tolist()], category_id=ids, pred_category=ids.clone()
                )
            )
        else:
            result.append(ImageBatch(**fields))
    return result


class _Replay(LightningModule):
    """Returns fresh copies of the stored predictions in validation and test (like a model's step)."""

    def __init__(self, post_processor: nn.Module, evaluator: PerCategoryEvaluator | None = None) -> None:
        super().__init__()
        self.post_processor = post_processor
        self.evaluator = evaluator
        self.weight = nn.Parameter(torch.zeros(1))
        self.category_names = ["c0", "c1"]

    def configure_callbacks(self) -> list[Any]:
        return [c for c in (self.post_processor, self.evaluator) if c is not None]

    @staticmethod
    def _copy(batch: ImageBatch) -> ImageBatch:
        from dataclasses import fields as dataclass_fields

        fields = {field.name: getattr(batch, field.name) for field in dataclass_fields(batch) if field.init}
        fields = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in fields.items()}
        return type(batch)(**fields)

    def validation_step(self, batch: ImageBatch, batch_idx: int) -> ImageBatch:
        return self._copy(batch)

    def test_step(self, batch: ImageBatch, batch_idx: int) -> ImageBatch:
        return self._copy(batch)


class _Data(LightningDataModule):
    def __init__(self, items: list[ImageBatch]) -> None:
        super().__init__()
        self.items = items

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.items, batch_size=None)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.items, batch_size=None)


def trainer(tmp_path: Path) -> Trainer:
    return Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )


def fit(post_processor: nn.Module, items: list[ImageBatch], tmp_path: Path) -> None:
    trainer(tmp_path).validate(_Replay(post_processor), datamodule=_Data(items), verbose=False)


def test_metrics_use_raw_scores_with_the_post_processor(tmp_path: Path) -> None:
    """Two categories 10x apart: per-category AUROC equals sklearn's on the raw scores, not on normalised ones."""
    data = two_scales()
    items = batches(data)
    post_processor = PerCategoryPostProcessor()
    fit(post_processor, items, tmp_path)
    evaluator = PerCategoryEvaluator(print_table=False, save_csv=False)
    trainer(tmp_path).test(_Replay(post_processor, evaluator), datamodule=_Data(items), verbose=False)
    for category in (0, 1):
        where = data["category"] == category
        expected = roc_auc_score(data["label"][where], data["score"][where])
        assert evaluator.last_results[f"c{category}"]["image_AUROC"] == pytest.approx(expected, abs=1e-6)
        pixel = roc_auc_score(data["mask"][where].ravel(), data["map"][where].ravel())
        assert evaluator.last_results[f"c{category}"]["pixel_AUROC"] == pytest.approx(pixel, abs=1e-5)

    # anomalib's pooled normalisation clamps category 1 at 1.0 (ties) and would change its AUROC
    pooled = PostProcessor()
    fit(pooled, batches(data, with_category=False), tmp_path)
    normalised = pooled(InferenceBatch(pred_score=torch.from_numpy(data["score"]))).pred_score.numpy()
    large = data["category"] == 1
    assert (normalised[large] == 1.0).sum() >= 5
    assert roc_auc_score(data["label"][large], normalised[large]) != pytest.approx(
        roc_auc_score(data["label"][large], data["score"][large]), abs=1e-3
    )


def test_thresholded_metrics_and_per_category_labels(tmp_path: Path) -> None:
    data = two_scales(gap=0.9)
    items = batches(data)
    post_processor = PerCategoryPostProcessor()
    fit(post_processor, items, tmp_path)
    assert post_processor.fitted_categories == 2
    # each category's threshold lies within its own score range
    for category in (0, 1):
        scores = data["score"][data["category"] == category]
        assert scores.min() <= float(post_processor.image_thresholds[category]) <= scores.max()
    assert float(post_processor.image_thresholds[1]) > 3 * float(post_processor.image_thresholds[0])

    evaluator = PerCategoryEvaluator(print_table=False, save_csv=False)
    trainer(tmp_path).test(_Replay(post_processor, evaluator), datamodule=_Data(items), verbose=False)
    output = post_processor(
        ClassAwareInferenceBatch(
            pred_score=torch.from_numpy(data["score"]), pred_category=torch.from_numpy(data["category"])
        )
    )
    labels = output.pred_label.numpy()
    for category in (0, 1):
        where = data["category"] == category
        truth = data["label"][where].astype(bool)
        tp, fp = (labels[where] & truth).sum(), (labels[where] & ~truth).sum()
        fn, tn = (~labels[where] & truth).sum(), (~labels[where] & ~truth).sum()
        row = evaluator.last_results[f"c{category}"]
        assert row["image_F1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
        assert row["label_accuracy"] == pytest.approx((tp + tn) / where.sum())
        assert row["category_accuracy"] == 1.0
        # one threshold per category: the F1-optimal labels beat chance in both
        assert row["label_accuracy"] >= 0.8
    # one pooled threshold flags (almost) every image of the large-scale category
    pooled = PostProcessor()
    fit(pooled, batches(data, with_category=False), tmp_path)
    pooled_labels = pooled(InferenceBatch(pred_score=torch.from_numpy(data["score"]))).pred_label.numpy()
    normal_large = (data["category"] == 1) & (data["label"] == 0)
    assert labels[normal_large].mean() <= 0.2
    assert pooled_labels[normal_large].mean() >= 0.9


def test_one_category_is_bit_identical_to_anomalib(tmp_path: Path) -> None:
    data = two_scales(seed=3)
    data["category"][:] = 0
    ours, theirs = PerCategoryPostProcessor(), PostProcessor()
    fit(ours, batches(data), tmp_path)
    fit(theirs, batches(data, with_category=False), tmp_path)
    inputs = torch.from_numpy(data["score"]) * 1.3 - 0.2, torch.from_numpy(data["map"])
    mine = ours(
        ClassAwareInferenceBatch(
            pred_score=inputs[0], anomaly_map=inputs[1], pred_category=torch.zeros(len(inputs[0]), dtype=torch.long)
        )
    )
    reference = theirs(InferenceBatch(pred_score=inputs[0], anomaly_map=inputs[1]))
    for name in ("pred_score", "pred_label", "anomaly_map", "pred_mask"):
        assert torch.equal(getattr(mine, name), getattr(reference, name)), name
    # the Lightning path (post_process_batch) too, and the raw values are kept
    batch_ours, batch_theirs = batches(data)[0], batches(data, with_category=False)[0]
    raw = batch_ours.pred_score.clone()
    ours.post_process_batch(batch_ours)
    theirs.post_process_batch(batch_theirs)
    assert torch.equal(batch_ours.pred_score, batch_theirs.pred_score)
    assert torch.equal(batch_ours.pred_label, batch_theirs.pred_label)
    assert torch.equal(batch_ours.raw_pred_score, raw)


def test_normal_quantile_uses_normal_images_only(tmp_path: Path) -> None:
    data = two_scales(n=200, seed=1)
    normal_only = {key: value[data["label"] == 0] for key, value in data.items()}
    post_processor = PerCategoryPostProcessor(threshold_method="normal_quantile", normal_quantile=0.9)
    fit(post_processor, batches(normal_only), tmp_path)
    for category in (0, 1):
        scores = normal_only["score"][normal_only["category"] == category]
        assert float(post_processor.image_thresholds[category]) == pytest.approx(
            float(np.quantile(scores, 0.9)), rel=1e-5
        )
        output = post_processor(
            ClassAwareInferenceBatch(
                pred_score=torch.from_numpy(scores), pred_category=torch.full((len(scores),), category)
            )
        )
        assert output.pred_label.float().mean() == pytest.approx(0.1, abs=0.03)  # 1 - quantile flagged


def test_f1_falls_back_with_a_warning_naming_the_category(tmp_path: Path) -> None:
    data = two_scales()
    keep = ~((data["category"] == 1) & (data["label"] == 1))  # c1: normal validation images only
    subset = {key: value[keep] for key, value in data.items()}
    post_processor = PerCategoryPostProcessor(num_categories=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(post_processor, batches(subset), tmp_path)
    messages = [str(w.message) for w in caught if "PerCategoryPostProcessor" in str(w.message)]
    assert any("'c1'" in m and "all normal" in m and "quantile" in m for m in messages), messages
    assert any("category '2'" in m and "pooled" in m for m in messages), messages
    normal_c1 = subset["score"][subset["category"] == 1]
    assert float(post_processor.image_thresholds[1]) == pytest.approx(float(np.quantile(normal_c1, 0.99)), rel=1e-5)
    assert float(post_processor.image_thresholds[2]) == pytest.approx(float(post_processor.image_threshold))


def test_state_dict_round_trip_and_bad_arguments(tmp_path: Path) -> None:
    post_processor = PerCategoryPostProcessor()
    fit(post_processor, batches(two_scales()), tmp_path)
    restored = PerCategoryPostProcessor()
    restored.load_state_dict(post_processor.state_dict())
    assert torch.equal(restored.image_thresholds, post_processor.image_thresholds)
    assert torch.equal(restored.pixel_maxs, post_processor.pixel_maxs)
    older = {k: v for k, v in post_processor.state_dict().items() if not k.endswith("s") or k.startswith("_")}
    PerCategoryPostProcessor().load_state_dict(older)  # a checkpoint from before: pooled values only
    with pytest.raises(ValueError, match="threshold_method"):
        PerCategoryPostProcessor(threshold_method="otsu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="normal_quantile"):
        PerCategoryPostProcessor(normal_quantile=1.5)
