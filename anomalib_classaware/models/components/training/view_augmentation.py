"""The augmented view of class-aware contrastive training, made on the device inside the training step.

Fan et al., arXiv 2412.04769 (authors' code): RandomResizedCrop (scale 0.8-1), horizontal and
vertical flips, ColorJitter(0.4, 0.4, 0.4, 0.1), RandomGrayscale (p 0.2), Gaussian blur and a
rotation of up to 15 degrees, drawn independently per image (kornia). Our choices where the code
is silent: colour jitter with p 0.8 and blur with p 0.5 (SimCLR's probabilities), blur sigma
0.1-2.0 with a kernel of about a tenth of the image side.

Batches reach the training step already normalised by the model's pre-processor. Photometric
operations need ``[0, 1]`` RGB, so the view is de-normalised with the pre-processor's
``Normalize`` statistics (found in its transform), augmented and normalised again.
"""

from __future__ import annotations

from collections.abc import Sequence

import kornia.augmentation as K
import torch
from torch import Tensor, nn
from torchvision.transforms import v2


def find_normalisation(transform: nn.Module | None) -> tuple[list[float], list[float]] | None:
    """Return ``(mean, std)`` of the first ``Normalize`` inside ``transform`` (a v2 ``Compose`` or module), if any."""
    if transform is None:
        return None
    if isinstance(transform, v2.Normalize):
        return list(transform.mean), list(transform.std)
    for child in getattr(transform, "transforms", []):
        found = find_normalisation(child)
        if found is not None:
            return found
    for child in transform.children() if isinstance(transform, nn.Module) else []:
        found = find_normalisation(child)
        if found is not None:
            return found
    return None


class ContrastiveViewAugmentation(nn.Module):
    """Random per-image view of a normalised ``(B, 3, H, W)`` batch, same size as the input.

    Args:
        image_size: ``(H, W)`` of the batches.
        mean: per-channel mean the batch is normalised with (``None``: images are already in ``[0, 1]``).
        std: per-channel std the batch is normalised with.

    """

    def __init__(
        self,
        image_size: Sequence[int],
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        height, width = int(image_size[0]), int(image_size[1])
        kernel = max(3, (min(height, width) // 10) | 1)
        self.augment = K.AugmentationSequential(
            K.RandomResizedCrop((height, width), scale=(0.8, 1.0)),
            K.RandomHorizontalFlip(),
            K.RandomVerticalFlip(),
            K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8),
            K.RandomGrayscale(p=0.2),
            K.RandomGaussianBlur((kernel, kernel), (0.1, 2.0), p=0.5),
            K.RandomRotation(15.0, p=1.0),
        )
        normalised = mean is not None and std is not None
        self.register_buffer(
            "mean", torch.tensor(mean if normalised else [0.0] * 3).view(1, -1, 1, 1), persistent=False
        )
        self.register_buffer("std", torch.tensor(std if normalised else [1.0] * 3).view(1, -1, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """Return the augmented view (no gradient flows into the view itself)."""
        if images.ndim != 4 or images.shape[1] != 3:
            msg = f"Expected a (B, 3, H, W) batch, got {tuple(images.shape)}."
            raise ValueError(msg)
        raw = (images * self.std + self.mean).clamp(0, 1)
        return (self.augment(raw) - self.mean) / self.std


class ContrastiveViewAugmenter:
    """Builds (once per image size and device) and applies the :class:`ContrastiveViewAugmentation` of a model.

    A plain object, not a module: it holds no state worth saving and stays out of checkpoints.
    """

    def __init__(self) -> None:
        self._augmentations: dict[tuple[int, int, str], ContrastiveViewAugmentation] = {}

    def __call__(self, images: Tensor, pre_processor: object | None) -> Tensor:
        """Augmented view of a batch normalised by ``pre_processor``'s ``Normalize`` (if it has one)."""
        key = (int(images.shape[-2]), int(images.shape[-1]), str(images.device))
        if key not in self._augmentations:
            statistics = find_normalisation(getattr(pre_processor, "transform", None))
            mean, std = statistics if statistics is not None else (None, None)
            self._augmentations[key] = ContrastiveViewAugmentation(key[:2], mean, std).to(images.device)
        return self._augmentations[key](images)
