"""Class-conditional residual calibration: each level's distance map in units of its normal spread, per category.

A reconstruction model's distance map (``1 - cos`` per level, :class:`AnomalyMapGenerator`) is not zero on normal
images: some positions of some categories (object borders, fine texture) are reconstructed worse than others, and
in one unified model these structured residuals differ by category. :class:`ResidualCalibration` learns, after
training, each category's per-position mean ``mu_c`` and spread of the level maps of the training images, and at
inference maps a level map ``d`` of an image of predicted category ``c`` to::

    (d - mu_c) / (sigma_c + shrinkage * s_c + eps)

with ``sigma_c`` the per-position standard deviation and ``s_c`` the standard deviation of category ``c``'s whole
level (shrinking the per-position scale towards it keeps positions that never vary from blowing up). The category is
the model's predicted one (:class:`~.category_prototypes.CategoryPrototypes`): no class label at inference. This is
the per-position Gaussian of PaDiM (Defard et al., ICPR 2021, Sec. 3) applied to the scalar residual of a
reconstruction model instead of the features, one Gaussian per category. Before :meth:`ResidualCalibration.fit` the
module is the identity, so a model with it behaves exactly as without it until it is fitted.

Export-safe: a row gather by the predicted category and static reshapes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from anomalib_classaware._buffers import ResizableBuffersMixin

#: Per-position scale is shrunk towards the level's scale by this factor (chosen on validation data: the demo with
#: ``generation_seed: 1``; docs/benchmark.md, "Residual calibration").
DEFAULT_SHRINKAGE = 0.5


def _level_sizes(level_maps: Sequence[Tensor]) -> list[int]:
    return [int(level.shape[-2]) * int(level.shape[-1]) for level in level_maps]


def _flatten(level_maps: Sequence[Tensor]) -> Tensor:
    """``(B, P)``: the ``(B, 1, h, w)`` level maps, flattened and concatenated."""
    return torch.cat([level.flatten(1) for level in level_maps], dim=1)


class ResidualMoments:
    """Per-category sums of the level maps and of their squares (float64), accumulated batch by batch.

    Args:
        num_categories: number of categories (predicted category ids lie in ``range(num_categories)``).

    """

    def __init__(self, num_categories: int) -> None:
        if num_categories < 1:
            msg = f"ResidualMoments needs at least one category, got num_categories={num_categories}."
            raise ValueError(msg)
        self.num_categories = int(num_categories)
        self.level_sizes: list[int] | None = None
        self.sums: Tensor | None = None
        self.squares: Tensor | None = None
        self.counts = torch.zeros(self.num_categories, dtype=torch.float64)

    def update(self, level_maps: Sequence[Tensor], categories: Tensor) -> None:
        """Add a batch: ``(B, 1, h, w)`` level maps and the ``(B,)`` category of each image."""
        flat = _flatten(level_maps).detach().to("cpu", torch.float64)
        categories = categories.detach().reshape(-1).long().cpu()
        if self.sums is None or self.squares is None:
            self.level_sizes = _level_sizes(level_maps)
            self.sums = torch.zeros(self.num_categories, flat.shape[1], dtype=torch.float64)
            self.squares = torch.zeros_like(self.sums)
        if flat.shape[1] != self.sums.shape[1]:
            sizes = _level_sizes(level_maps)
            msg = f"Level maps changed size during the calibration pass: {sizes} vs {self.level_sizes}."
            raise ValueError(msg)
        if bool(((categories < 0) | (categories >= self.num_categories)).any()):
            msg = f"Category ids {categories.unique().tolist()} outside range({self.num_categories})."
            raise ValueError(msg)
        self.sums.index_add_(0, categories, flat)
        self.squares.index_add_(0, categories, flat.square())
        self.counts += torch.bincount(categories, minlength=self.num_categories).double()

    def all_reduce(self) -> None:
        """Sum the moments of every DDP process (no-op without DDP)."""
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return
        if self.sums is None or self.squares is None:
            msg = "ResidualMoments.all_reduce before any update: every process needs at least one batch."
            raise RuntimeError(msg)
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        for tensor in (self.sums, self.squares, self.counts):
            reduced = tensor.to(device)
            dist.all_reduce(reduced)
            tensor.copy_(reduced.cpu())

    def mean_and_scale(self, shrinkage: float, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
        """``(C, P)`` mean and scale; a category without images gets the moments of all images.

        Raises:
            RuntimeError: if no image was added.

        """
        if self.sums is None or self.squares is None or self.level_sizes is None or float(self.counts.sum()) == 0:
            msg = "Residual calibration: no training image was seen; nothing to fit."
            raise RuntimeError(msg)
        sums, squares, counts = self.sums.clone(), self.squares.clone(), self.counts.clone()
        empty = counts == 0
        if bool(empty.any()):
            sums[empty], squares[empty], counts[empty] = sums.sum(0), squares.sum(0), counts.sum()
        mean = sums / counts[:, None]
        variance = (squares / counts[:, None] - mean.square()).clamp_min(0)
        level_scales = []
        for level_sum, level_square, size in zip(
            sums.split(self.level_sizes, 1), squares.split(self.level_sizes, 1), self.level_sizes, strict=True
        ):
            level_count = counts[:, None] * size
            level_mean = level_sum.sum(1, keepdim=True) / level_count
            level_variance = (level_square.sum(1, keepdim=True) / level_count - level_mean.square()).clamp_min(0)
            level_scales.append(level_variance.sqrt().expand(-1, size))
        scale = variance.sqrt() + shrinkage * torch.cat(level_scales, dim=1) + eps
        return mean.float(), scale.float()


class ResidualCalibration(ResizableBuffersMixin):
    """``(d - mu_c) / scale_c`` per position of each level map, ``c`` the image's predicted category.

    Args:
        shrinkage: weight of the level's standard deviation added to the per-position one.

    """

    mean: Tensor
    scale: Tensor
    resizable_buffers = ("mean", "scale")

    def __init__(self, shrinkage: float = DEFAULT_SHRINKAGE) -> None:
        super().__init__()
        if shrinkage < 0:
            msg = f"Residual calibration: `shrinkage` must be >= 0, got {shrinkage}."
            raise ValueError(msg)
        self.shrinkage = float(shrinkage)
        self.register_buffer("mean", torch.empty(0))
        self.register_buffer("scale", torch.empty(0))

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` has set the statistics (else the module is the identity)."""
        return self.mean.ndim == 2

    @property
    def num_categories(self) -> int:
        """Categories with statistics (0 before fitting)."""
        return int(self.mean.shape[0]) if self.fitted else 0

    def fit(self, moments: ResidualMoments) -> None:
        """Set the statistics from the training images' moments."""
        mean, scale = moments.mean_and_scale(self.shrinkage)
        self.mean = mean.to(self.mean.device)
        self.scale = scale.to(self.scale.device)

    def reset(self) -> None:
        """Forget the statistics (identity again)."""
        self.mean = torch.empty(0, device=self.mean.device)
        self.scale = torch.empty(0, device=self.scale.device)

    def forward(self, level_maps: Sequence[Tensor], categories: Tensor) -> list[Tensor]:
        """Calibrated ``(B, 1, h, w)`` level maps; the input maps unchanged before fitting.

        Raises:
            ValueError: if the level maps do not have the positions the statistics were fitted on.

        """
        if not self.fitted:
            return list(level_maps)
        sizes = _level_sizes(level_maps)
        if sum(sizes) != self.mean.shape[1]:
            msg = (
                f"Residual calibration was fitted on {self.mean.shape[1]} map positions, got level maps of "
                f"{sizes} positions: the input size changed since training; fit it again on this size."
            )
            raise ValueError(msg)
        categories = categories.reshape(-1).long()
        flat = (_flatten(level_maps) - self.mean[categories]) / self.scale[categories]
        return [part.reshape(level.shape) for part, level in zip(flat.split(sizes, dim=1), level_maps, strict=True)]
