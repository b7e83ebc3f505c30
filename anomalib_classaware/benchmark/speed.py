"""Inference speed of a torch model: median wall time of repeated forward passes after warm-up."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch
from torch import nn


def measure_inference_speed(
    model: nn.Module,
    input_size: Sequence[int],
    batch_sizes: Sequence[int] = (1, 8),
    warmup: int = 2,
    repeats: int = 5,
) -> dict[int, float]:
    """Return images per second of ``model(x)`` for each batch size (eager torch, ``inference_mode``).

    ``x`` is a random float image batch in ``[0, 1]`` of shape ``(B, 3, H, W)`` on the model's
    device; for an anomalib ``AnomalibModule`` the forward pass is the exported graph
    (pre-processing, torch model, post-processing). Each batch size gets ``warmup`` untimed
    passes, then ``repeats`` timed ones; the result is ``B / median(seconds)``.

    Args:
        model: The model; it is put in eval mode.
        input_size: ``(H, W)`` of the input images.
        batch_sizes: Batch sizes to time.
        warmup: Untimed passes per batch size.
        repeats: Timed passes per batch size (at least 1).

    Returns:
        ``{batch_size: images_per_second}``.

    """
    if repeats < 1:
        msg = f"repeats must be at least 1, got {repeats}."
        raise ValueError(msg)
    model.eval()
    device = next((parameter.device for parameter in model.parameters()), torch.device("cpu"))
    height, width = int(input_size[0]), int(input_size[1])
    generator = torch.Generator().manual_seed(0)
    speeds: dict[int, float] = {}
    with torch.inference_mode():
        for batch_size in batch_sizes:
            images = torch.rand(int(batch_size), 3, height, width, generator=generator).to(device)
            for _ in range(warmup):
                model(images)
            timings = []
            for _ in range(repeats):
                _synchronize(device)
                start = time.perf_counter()
                model(images)
                _synchronize(device)
                timings.append(time.perf_counter() - start)
            speeds[int(batch_size)] = int(batch_size) / statistics.median(timings)
    return speeds


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
