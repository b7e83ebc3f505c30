"""The default pre-processor of our models: resize to a fixed input size, ImageNet normalisation."""

from __future__ import annotations

from collections.abc import Sequence

from anomalib.pre_processing import PreProcessor
from torchvision.transforms.v2 import Compose, Normalize, Resize

DEFAULT_INPUT_SIZE = (256, 256)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_pre_processor(image_size: Sequence[int] | None = None) -> PreProcessor:
    """Resize to ``image_size`` (default 256 x 256, antialiased) and normalise with ImageNet statistics.

    Resize and Normalize are in anomalib's transform registry, so checkpoints restore them.
    """
    size = tuple(int(side) for side in (image_size or DEFAULT_INPUT_SIZE))
    return PreProcessor(
        transform=Compose([Resize(size, antialias=True), Normalize(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))])
    )
