"""Quickstart: one Reverse Distillation model for every category of the embedded demo data.

Run ``python examples/quickstart.py`` (a few minutes on a laptop CPU; no download). It generates
the demo dataset on first use, trains anomalib's own ``ReverseDistillation`` in the unified
multi-class setting, tests it and prints per-category and mean metrics.
"""

from __future__ import annotations

import argparse

from anomalib.engine import Engine
from anomalib.models import ReverseDistillation
from lightning.pytorch import seed_everything

from anomalib_classaware import MultiClassDemo
from anomalib_classaware.metrics import per_category_metrics_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=128, help="demo image side in pixels")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--categories", nargs="*", default=None, help="subset of demo categories")
    parser.add_argument("--num-train", type=int, default=60, help="training images per category")
    parser.add_argument("--pretrained", action="store_true", help="ImageNet weights (needs the model hub)")
    args = parser.parse_args()

    seed_everything(0)
    datamodule = MultiClassDemo(image_size=args.image_size, categories=args.categories, num_train=args.num_train)
    model = ReverseDistillation(
        backbone="resnet18",
        pre_trained=args.pretrained,
        pre_processor=ReverseDistillation.configure_pre_processor(image_size=(args.image_size, args.image_size)),
    )
    engine = Engine(max_epochs=args.epochs, default_root_dir="results")
    engine.fit(model, datamodule=datamodule)
    engine.test(model, datamodule=datamodule)

    # The evaluator that our datamodule gave the model keeps the last results for Python users.
    print(per_category_metrics_table(model.evaluator.last_results))
    print(f"CSV: {model.evaluator.last_csv_path}")


if __name__ == "__main__":
    main()
