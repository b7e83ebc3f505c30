"""Sweep ClassAwareRecon's inference-side knobs on trained checkpoints (no retraining), per-category metrics.

The knobs act after the network: the residual calibration's ``shrinkage``, the level weights of the map,
the Gaussian ``blur_sigma`` and the image score (``max`` or the mean of the top ``topk_ratio`` pixels). The
script passes the training and test images of the datamodule through each checkpoint's network once, keeps
the raw level maps and predicted categories, refits the calibration for every shrinkage and scores every
combination with the harness's own metric set (:class:`~anomalib_classaware.metrics.category_metrics.
CategoryMetrics`, raw scores), so the row of the trained defaults reproduces the benchmark's numbers.

The datamodule and input size are the benchmark's own (its ``config.yaml`` in the output folder, built by
the harness's :func:`~anomalib_classaware.benchmark.runner.build_datamodule`). Use it on VALIDATION data only
(the demo with ``generation_seed: 1``): the checkpoints come from ``configs/calibration_knobs_validation.yaml``
(``keep_checkpoints: true``)::

    anomalib-classaware-bench --profile default \\
        --config examples/benchmark/configs/calibration_knobs_validation.yaml --output bench_knobs_validation/
    python examples/benchmark/calibration_knobs_sweep.py bench_knobs_validation/

Prints a Markdown table (mean over categories, then mean ± std over checkpoints) sorted by image AUROC.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import yaml
from torch import Tensor

from anomalib_classaware._stats import nanmean
from anomalib_classaware.benchmark.cli import config_from_dict
from anomalib_classaware.benchmark.runner import build_datamodule
from anomalib_classaware.metrics.category_metrics import CategoryMetrics
from anomalib_classaware.models import ClassAwareRecon
from anomalib_classaware.models.components import AnomalyMapGenerator
from anomalib_classaware.models.components.networks.residual_calibration import ResidualCalibration, ResidualMoments


@dataclass
class CachedSplit:
    """Raw level maps of a split, their predicted categories and, for the test split, the targets."""

    level_maps: list[Tensor]
    pred_category: Tensor
    gt_label: Tensor | None = None
    gt_mask: Tensor | None = None
    category: list[str] | None = None


@dataclass(frozen=True)
class Knobs:
    """One inference setting."""

    shrinkage: float | None  # None: no calibration (the paper's map)
    level_weights: tuple[float, ...]
    blur_sigma: float
    score: str  # "max" or "topk:<ratio>"
    positive_part: bool = False  # calibrated levels below their normal mean count as 0

    def label(self) -> str:
        shrinkage = "off" if self.shrinkage is None else f"{self.shrinkage:g}"
        weights = "/".join(f"{weight:g}" for weight in self.level_weights)
        clamp = ", z >= 0" if self.positive_part else ""
        return f"shrinkage {shrinkage}, levels {weights}, sigma {self.blur_sigma:g}, {self.score}{clamp}"


@torch.no_grad()
def cache_split(model: ClassAwareRecon, loader: torch.utils.data.DataLoader, with_targets: bool) -> CachedSplit:
    """Pass every batch through the pre-processor and the network in eval mode; keep the raw level maps."""
    network = model.model.eval()
    transform = model.pre_processor.transform
    levels: list[list[Tensor]] = []
    categories, labels, masks, names = [], [], [], []
    for batch in loader:
        level_maps, pred_category = network.inference_level_maps(transform(batch.image))
        levels.append(level_maps)
        categories.append(pred_category)
        if with_targets:
            labels.append(batch.gt_label)
            masks.append(batch.gt_mask)
            names.extend(batch.category)
    level_maps = [torch.cat(parts) for parts in zip(*levels, strict=True)]
    if not with_targets:
        return CachedSplit(level_maps, torch.cat(categories))
    return CachedSplit(level_maps, torch.cat(categories), torch.cat(labels), torch.cat(masks), names)


def fitted_calibration(train: CachedSplit, num_categories: int, shrinkage: float) -> ResidualCalibration:
    """The calibration fitted on the cached training level maps with ``shrinkage``."""
    moments = ResidualMoments(num_categories)
    moments.update(train.level_maps, train.pred_category)
    calibration = ResidualCalibration(shrinkage)
    calibration.fit(moments)
    return calibration


def evaluate(
    test: CachedSplit, level_maps: list[Tensor], knobs: Knobs, image_size: int, pixel_metrics: bool
) -> dict[str, float]:
    """Mean over categories of image AUROC (and F1-max, pixel AUROC, AUPRO with ``pixel_metrics``)."""
    score, _, ratio = knobs.score.partition(":")
    generator = AnomalyMapGenerator(
        (image_size, image_size),
        reduction="mean",
        sigma=knobs.blur_sigma,
        score_reduction="max" if score == "max" else "topk_mean",
        topk_ratio=float(ratio) if ratio else 0.01,
    )
    if knobs.positive_part:
        level_maps = [level.clamp_min(0) for level in level_maps]
    weighted = [weight * level for weight, level in zip(knobs.level_weights, level_maps, strict=True)]
    anomaly_map, pred_score = generator.from_level_maps(weighted)
    assert test.category is not None and test.gt_label is not None and test.gt_mask is not None
    per_category: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(test.category):
        index = torch.tensor([position for position, category in enumerate(test.category) if category == name])
        metrics = CategoryMetrics(name, pixel_metrics=pixel_metrics)
        metrics.update(
            SimpleNamespace(
                pred_score=pred_score[index],
                gt_label=test.gt_label[index],
                anomaly_map=anomaly_map[index].squeeze(1) if pixel_metrics else None,
                gt_mask=test.gt_mask[index] if pixel_metrics else None,
            )
        )
        per_category[name] = metrics.compute()
    names = next(iter(per_category.values())).keys()
    return {metric: nanmean(values[metric] for values in per_category.values()) for metric in names}


def load_bench_output(bench_output: Path) -> tuple[list[Path], Any, Any]:
    """The kept checkpoints, the benchmark config and its set-up datamodule of a benchmark output folder.

    Raises:
        SystemExit: if the folder has no checkpoint (the benchmark ran without ``keep_checkpoints``).

    """
    checkpoints = sorted(bench_output.glob("runs/*/**/*.ckpt"))
    if not checkpoints:
        msg = f"No checkpoint under {bench_output}/runs: run the benchmark with `keep_checkpoints: true`."
        raise SystemExit(msg)
    config = config_from_dict(yaml.safe_load((bench_output / "config.yaml").read_text()))
    datamodule = build_datamodule(config.data.class_path, config.data.init_args, None)
    datamodule.setup()
    return checkpoints, config, datamodule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bench_output", type=Path, help="benchmark output folder with kept checkpoints (runs/)")
    parser.add_argument("--shrinkage", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0])
    parser.add_argument("--blur-sigma", type=float, nargs="+", default=[2.0, 4.0, 6.0])
    parser.add_argument("--scores", nargs="+", default=["max", "topk:0.01", "topk:0.002"])
    parser.add_argument("--level-weights", nargs="+", default=["1,1,1", "0,1,1", "1,1,0", "0.5,1,1"])
    parser.add_argument("--pixel-top", type=int, default=6, help="settings that also get pixel metrics (by AUROC)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    checkpoints, config, datamodule = load_bench_output(args.bench_output)
    grid = [
        Knobs(shrinkage, tuple(float(part) for part in weights.split(",")), sigma, score, positive)
        for shrinkage, weights, sigma, score, positive in itertools.product(
            [None, *args.shrinkage], args.level_weights, args.blur_sigma, args.scores, (False, True)
        )
        if not (positive and shrinkage is None)  # uncalibrated distances are never negative
    ]
    results: dict[Knobs, list[dict[str, float]]] = {knobs: [] for knobs in grid}
    for checkpoint in checkpoints:
        model = ClassAwareRecon.load_from_checkpoint(checkpoint, map_location="cpu")
        train = cache_split(model, datamodule.train_dataloader(), with_targets=False)
        test = cache_split(model, datamodule.test_dataloader(), with_targets=True)
        num_categories = model.model.category_prototypes.num_categories
        calibrated: dict[float | None, list[Tensor]] = {None: test.level_maps}
        for shrinkage in args.shrinkage:
            calibration = fitted_calibration(train, num_categories, shrinkage)
            calibrated[shrinkage] = calibration(test.level_maps, test.pred_category)
        image_rows = {}
        for knobs in grid:
            maps = calibrated[knobs.shrinkage]
            image_rows[knobs] = (maps, evaluate(test, maps, knobs, config.input_size, pixel_metrics=False))
        default = Knobs(0.5, (1.0, 1.0, 1.0), 4.0, "max")
        best = sorted(grid, key=lambda knobs: -image_rows[knobs][1]["image_AUROC"])[: args.pixel_top]
        for knobs in grid:
            maps, row = image_rows[knobs]
            if knobs in best or knobs == default:
                row = evaluate(test, maps, knobs, config.input_size, pixel_metrics=True)
            results[knobs].append(row)
        print(f"{checkpoint}: default {results[default][-1]}", flush=True)

    def summary(knobs: Knobs, metric: str) -> str:
        values = [100 * row[metric] for row in results[knobs] if metric in row]
        if len(values) < len(checkpoints):
            return ""
        spread = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
        return f"{statistics.fmean(values):.1f}{spread}"

    print(f"\n{len(checkpoints)} checkpoints, data {config.data.class_path} {config.data.init_args}\n")
    print("| Setting | Image AUROC | Image F1-max | Pixel AUROC | AUPRO |")
    print("|---|---|---|---|---|")
    ranked = sorted(grid, key=lambda knobs: -statistics.fmean(row["image_AUROC"] for row in results[knobs]))
    for knobs in ranked:
        cells = [summary(knobs, metric) for metric in ("image_AUROC", "image_F1Max", "pixel_AUROC", "pixel_AUPRO")]
        print(f"| {knobs.label()} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
