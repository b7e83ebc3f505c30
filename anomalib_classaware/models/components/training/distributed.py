"""All-gathers across DDP processes (identity without DDP), for the contrastive losses and the fits at train start."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums the gradients of every process and keeps this one's slice.

    Not ``torch.distributed.nn.functional.all_gather``: its backward receives into ``empty_like`` of
    the incoming gradients, which keeps their strides, and the collective writes contiguous bytes
    into them, so a non-contiguous gradient (e.g. from ``F.normalize(x.flatten(2), dim=1)``) comes
    back scrambled (measured: wrong gradients of the dense term on gloo, torch 2.14).
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, tensor: Tensor) -> Tensor:
        parts = [torch.empty_like(tensor, memory_format=torch.contiguous_format) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rows = tensor.shape[0]  # type: ignore[attr-defined]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.rows  # type: ignore[attr-defined]
        return grad[start : start + ctx.rows]  # type: ignore[attr-defined]


def gather_with_grad(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` from all DDP processes along dim 0, keeping gradients; identity without DDP.

    Every process then computes the loss of the global batch; the backward sums the gradients of
    all processes for each owner's slice, and DDP's gradient averaging makes the result equal to a
    single process on the global batch. Every process must contribute the same number of rows.
    """
    if not _distributed():
        return tensor
    return _GatherWithGrad.apply(tensor)


def gather_no_grad(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` (labels, indices) from all DDP processes along dim 0; identity without DDP.

    One collective (it runs in every contrastive training step): every process must contribute the
    same number of rows, as Lightning's distributed sampler and the class-balanced sampler give.
    """
    if not _distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)
