"""Forward passes that must not move BatchNorm running statistics.

A training-only branch (the augmented view of the class-aware contrastive terms, Fan et al.,
arXiv 2412.04769, Sec. 3.3) runs trainable layers on images that are never seen at inference:
colour-jittered, grayscale and rotated views. In training mode its BatchNorm layers would fold
their statistics into the running mean and variance that inference normalises with. Inside
:func:`frozen_batchnorm_statistics` the layers still normalise with the statistics of the batch
they see (as in training, so gradients are those of a training pass), but leave ``running_mean``,
``running_var`` and ``num_batches_tracked`` untouched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@contextlib.contextmanager
def frozen_batchnorm_statistics(module: nn.Module) -> Iterator[None]:
    """Run ``module``'s BatchNorm layers on batch statistics without updating their running statistics.

    In eval mode the layers use their running statistics as usual; the context changes nothing then.
    """
    layers = [layer for layer in module.modules() if isinstance(layer, _BATCH_NORMS) and layer.track_running_stats]
    for layer in layers:
        layer.track_running_stats = False  # torch then passes no running buffers to F.batch_norm in training
    try:
        yield
    finally:
        for layer in layers:
            layer.track_running_stats = True
