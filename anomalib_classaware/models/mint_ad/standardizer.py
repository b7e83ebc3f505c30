"""Per-channel standardisation of frozen-backbone features with statistics gathered while training.

Reconstruction models that regress raw backbone features (UniAD's MSE, You et al., NeurIPS 2022)
inherit the backbone's channel scales: a few high-variance channels dominate the loss and the L2
anomaly map, and an output layer initialised at unit scale needs many steps to reach targets of
standard deviation ~10. :class:`RunningStandardizer` maps every channel to zero mean and unit
variance with the cumulative mean and variance of all features it has seen in training mode
(exact over the batches seen, not an exponential average); in eval mode it is a fixed affine map
(export-safe). The statistics are persistent buffers, so checkpoints restore them. A fresh module
(nothing seen yet) is the identity. Under DDP every process adds the batches of all processes
(an all-reduce), so the statistics are those of the global batch on every process.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


class RunningStandardizer(nn.Module):
    """``(x - mean_c) / std_c`` per channel of ``(B, C, ...)`` maps; statistics accumulate in training mode.

    Args:
        channels: number of channels ``C`` (dimension 1).
        eps: added to the variance.

    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = float(eps)
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("sum", torch.zeros(channels, dtype=torch.float64))
        self.register_buffer("sum_sq", torch.zeros(channels, dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))

    @torch.no_grad()
    def update(self, features: Tensor) -> None:
        """Add a batch of ``(B, C, ...)`` features to the statistics."""
        values = features.detach().transpose(0, 1).reshape(features.shape[1], -1).double()
        batch = torch.cat([values.new_full((1,), values.shape[1]), values.sum(dim=1), values.pow(2).sum(dim=1)])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(batch)  # every process adds the global batch, so the statistics stay identical
        self.count += batch[0]
        self.sum += batch[1 : 1 + values.shape[0]]
        self.sum_sq += batch[1 + values.shape[0] :]
        mean = self.sum / self.count
        variance = (self.sum_sq / self.count - mean.pow(2)).clamp_min(0)
        self.mean.copy_(mean.float())
        self.std.copy_((variance + self.eps).sqrt().float())

    def forward(self, features: Tensor) -> Tensor:
        """Standardise ``features``; in training mode the batch is added to the statistics first."""
        if self.training:
            self.update(features)
        shape = (1, -1) + (1,) * (features.dim() - 2)
        return (features - self.mean.view(shape)) / self.std.view(shape)
