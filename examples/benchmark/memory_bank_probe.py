"""Probe: how far a nearest-neighbour memory of the frozen teacher's features gets without any training.

Why reconstruction loses to Patchcore at 100 steps (docs/benchmark.md, "Memory-bank probe"). The script scores
the test images of a benchmark output's datamodule in three ways, with the harness's own metric set
(:class:`~anomalib_classaware.metrics.category_metrics.CategoryMetrics`, raw scores, mean over categories):

- the trained ClassAwareRecon checkpoint's calibrated residual (its default inference);
- the distance of each test patch to its nearest training patch in the frozen teacher's features (Patchcore's
  score, Roth et al., CVPR 2022, Sec. 3.1-3.2: 3x3 average-pooled "locally aware" patch features, the image score
  is the largest patch distance), with the memory restricted to the image's predicted category or unified
  (all categories), and a random fraction of the training patches kept (Patchcore keeps a greedy coreset, which
  covers the features better than a random subset of the same size);
- the calibrated residual plus the calibrated kNN distance (the same per-category calibration,
  :class:`~anomalib_classaware.models.components.networks.residual_calibration.ResidualCalibration`, fitted on the
  training images' kNN maps with each image left out of its own memory).

The teacher is frozen, so the kNN rows need no training; they are computed with each checkpoint's teacher and
category prototypes (the same in every checkpoint of one benchmark, hence their spread of 0). Use it on
VALIDATION data only (the demo with ``generation_seed: 1``)::

    anomalib-classaware-bench --profile default \\
        --config examples/benchmark/configs/calibration_knobs_validation.yaml --output bench_knobs_validation/
    python examples/benchmark/memory_bank_probe.py bench_knobs_validation/

Prints a Markdown table (mean over categories, then mean ± std over checkpoints).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibration_knobs_sweep import CachedSplit, Knobs, evaluate, fitted_calibration, load_bench_output

from anomalib_classaware.models import ClassAwareRecon

#: The trained model's inference: calibration shrinkage 0.5, all levels, blur sigma 4, max pixel score.
DEFAULT_KNOBS = Knobs(0.5, (1.0, 1.0, 1.0), 4.0, "max")


@dataclass
class ProbeSplit(CachedSplit):
    """A cached split plus the 3x3-pooled teacher features of every level."""

    features: list[Tensor] | None = None


@torch.no_grad()
def cache_probe_split(model: ClassAwareRecon, loader: torch.utils.data.DataLoader, with_targets: bool) -> ProbeSplit:
    """Raw level maps, predicted categories, pooled teacher features (and the targets of the test split)."""
    network = model.model.eval()
    transform = model.pre_processor.transform
    levels: list[list[Tensor]] = []
    features: list[list[Tensor]] = []
    categories, labels, masks, names = [], [], [], []
    for batch in loader:
        images = transform(batch.image)
        level_maps, pred_category = network.inference_level_maps(images)  # the model's own inference
        levels.append(level_maps)
        categories.append(pred_category)
        teacher = network.teacher_features(images)
        features.append([F.avg_pool2d(level, kernel_size=3, stride=1, padding=1) for level in teacher])
        if with_targets:
            labels.append(batch.gt_label)
            masks.append(batch.gt_mask)
            names.extend(batch.category)
    split = ProbeSplit(
        level_maps=[torch.cat(parts) for parts in zip(*levels, strict=True)],
        pred_category=torch.cat(categories),
        features=[torch.cat(parts) for parts in zip(*features, strict=True)],
    )
    if with_targets:
        split.gt_label, split.gt_mask, split.category = torch.cat(labels), torch.cat(masks), names
    return split


def _patches(features: Tensor) -> Tensor:
    """``(B, h*w, C)`` patch vectors of a ``(B, C, h, w)`` feature map."""
    return features.flatten(2).transpose(1, 2)


def nearest_patch_distances(
    memory: Tensor,
    memory_categories: Tensor,
    queries: Tensor,
    query_categories: Tensor,
    per_category: bool,
    keep_fraction: float = 1.0,
    leave_own_image_out: bool = False,
    seed: int = 0,
) -> Tensor:
    """``(B, 1, h, w)`` L2 distance of every query patch to its nearest memory patch.

    Args:
        memory: ``(N, C, h, w)`` features of the memory images (the training images).
        memory_categories: ``(N,)`` category of each memory image.
        queries: ``(B, C, h, w)`` features of the images to score.
        query_categories: ``(B,)`` category of each query image (the memory is restricted to it if ``per_category``).
        per_category: search only the query's category (class-aware) instead of all memory patches (unified).
        keep_fraction: random fraction of the memory patches kept (the same subset for every query).
        leave_own_image_out: the queries are the memory images in order; each query skips its own patches.
        seed: seed of the random subset.

    Raises:
        ValueError: if ``keep_fraction`` is not in ``(0, 1]`` or a query has no memory patch to compare with.

    """
    if not 0 < keep_fraction <= 1:
        msg = f"keep_fraction must lie in (0, 1], got {keep_fraction}."
        raise ValueError(msg)
    patches_per_image = memory.shape[-2] * memory.shape[-1]
    bank = _patches(memory).reshape(-1, memory.shape[1])
    bank_category = memory_categories.repeat_interleave(patches_per_image)
    bank_image = torch.arange(len(memory)).repeat_interleave(patches_per_image)
    kept = torch.rand(len(bank), generator=torch.Generator().manual_seed(seed)) < keep_fraction
    distances = []
    for index, (patches, category) in enumerate(zip(_patches(queries), query_categories, strict=True)):
        selected = kept & (bank_category == category) if per_category else kept.clone()
        if leave_own_image_out:
            selected &= bank_image != index
        if not bool(selected.any()):
            msg = f"Query image {index} (category {int(category)}) has no memory patch to compare with."
            raise ValueError(msg)
        distances.append(torch.cdist(patches, bank[selected]).min(dim=1).values)
    return torch.stack(distances).reshape(len(queries), 1, *queries.shape[-2:])


def probe_rows(
    train: ProbeSplit,
    test: ProbeSplit,
    num_categories: int,
    knn_level: int,
    keep_fractions: Sequence[float],
    image_size: int,
) -> dict[str, dict[str, float]]:
    """Metrics of each scoring (residual, kNN variants, residual + kNN) on the test split."""
    assert train.features is not None and test.features is not None
    memory, queries = train.features[knn_level], test.features[knn_level]
    residual = fitted_calibration(train, num_categories, DEFAULT_KNOBS.shrinkage)(test.level_maps, test.pred_category)
    one_level = Knobs(None, (1.0,), DEFAULT_KNOBS.blur_sigma, "max")
    rows = {
        "ClassAwareRecon, calibrated residual (trained default)": evaluate(
            test, residual, DEFAULT_KNOBS, image_size, True
        )
    }
    knn_test = nearest_patch_distances(memory, train.pred_category, queries, test.pred_category, True)
    for per_category in (True, False):
        scope = "per category" if per_category else "unified"
        for fraction in keep_fractions:
            knn = (
                knn_test
                if per_category and fraction == 1.0
                else nearest_patch_distances(
                    memory, train.pred_category, queries, test.pred_category, per_category, fraction
                )
            )
            rows[f"kNN, {scope} memory, {100 * fraction:g} % of patches"] = evaluate(
                test, [knn], one_level, image_size, True
            )
    knn_train = nearest_patch_distances(
        memory, train.pred_category, memory, train.pred_category, True, leave_own_image_out=True
    )
    knn_split = CachedSplit([knn_train], train.pred_category)
    knn_calibrated = fitted_calibration(knn_split, num_categories, DEFAULT_KNOBS.shrinkage)(
        [knn_test], test.pred_category
    )
    calibrated_knobs = Knobs(DEFAULT_KNOBS.shrinkage, (1.0,), DEFAULT_KNOBS.blur_sigma, "max")
    rows["kNN, per category memory, 100 % of patches, calibrated"] = evaluate(
        test, knn_calibrated, calibrated_knobs, image_size, True
    )
    combined_knobs = Knobs(DEFAULT_KNOBS.shrinkage, (1.0,) * (len(residual) + 1), DEFAULT_KNOBS.blur_sigma, "max")
    for weight in (1.0, 2.0):
        maps = [*residual, weight * knn_calibrated[0]]
        rows[f"calibrated residual + {weight:g} x calibrated kNN"] = evaluate(
            test, maps, combined_knobs, image_size, True
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bench_output", type=Path, help="benchmark output folder with kept ClassAwareRecon checkpoints")
    parser.add_argument(
        "--knn-level", type=int, default=1, help="teacher level of the memory (default 1: stride 8, Patchcore's layer2)"
    )
    parser.add_argument("--keep-fractions", type=float, nargs="+", default=[1.0, 0.1, 0.01])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    checkpoints, config, datamodule = load_bench_output(args.bench_output)
    results: dict[str, list[dict[str, float]]] = {}
    for checkpoint in checkpoints:
        model = ClassAwareRecon.load_from_checkpoint(checkpoint, map_location="cpu")
        train = cache_probe_split(model, datamodule.train_dataloader(), with_targets=False)
        test = cache_probe_split(model, datamodule.test_dataloader(), with_targets=True)
        rows = probe_rows(
            train,
            test,
            model.model.category_prototypes.num_categories,
            args.knn_level,
            args.keep_fractions,
            config.input_size,
        )
        for label, row in rows.items():
            results.setdefault(label, []).append(row)
        print(f"{checkpoint}: " + ", ".join(f"{label}: {100 * row['image_AUROC']:.1f}" for label, row in rows.items()))

    def summary(label: str, metric: str) -> str:
        values = [100 * row[metric] for row in results[label]]
        spread = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
        return f"{statistics.fmean(values):.1f}{spread}"

    print(f"\n{len(checkpoints)} checkpoints, data {config.data.class_path} {config.data.init_args}, ")
    print(f"kNN on teacher level {args.knn_level}\n")
    print("| Scoring | Image AUROC | Image F1-max | Pixel AUROC | AUPRO |")
    print("|---|---|---|---|---|")
    for label in results:
        cells = [summary(label, metric) for metric in ("image_AUROC", "image_F1Max", "pixel_AUROC", "pixel_AUPRO")]
        print(f"| {label} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
