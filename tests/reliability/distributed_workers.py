"""Functions run in ``torch.multiprocessing.spawn`` processes by the DDP tests (importable by the children)."""

from __future__ import annotations

import datetime
import socket
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import distributed


def free_port() -> int:
    """A free TCP port on localhost for the gloo rendezvous."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def evaluation_batches() -> list[list[SimpleNamespace]]:
    """Test batches of two processes: ``a`` on both, ``b`` only on process 0, ``c`` only on process 1.

    Process 1 meets ``c`` before ``a``, so the two processes also discover the categories in a different
    order. Scores are noisy (AUROC strictly between 0 and 1), labels and masks alternate.
    """
    generator = torch.Generator().manual_seed(0)

    def batch(category: str, category_id: int, size: int, shift: float) -> SimpleNamespace:
        labels = torch.arange(size) % 2
        masks = torch.zeros(size, 8, 8, dtype=torch.bool)
        masks[labels == 1, 2:5, 2:5] = True
        maps = torch.rand(size, 8, 8, generator=generator) + shift * masks
        fields = {
            "pred_score": torch.rand(size, generator=generator) + shift * labels,
            "gt_label": labels,
            "anomaly_map": maps,
            "gt_mask": masks,
        }
        return SimpleNamespace(**fields, category=[category] * size, category_id=torch.full((size,), category_id))

    return [
        [batch("a", 0, 4, 0.4), batch("b", 1, 6, 0.2), batch("a", 0, 2, 0.4)],
        [batch("c", 2, 4, 0.3), batch("a", 0, 4, 0.4)],
    ]


def contrastive_inputs() -> dict[str, torch.Tensor]:
    """A global batch of 4 images (2 classes) for the class-aware contrastive loss: embeddings and feature maps."""
    generator = torch.Generator().manual_seed(0)

    def draw(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    return {
        "labels": torch.tensor([0, 0, 1, 1]),
        "embeddings": draw(4, 8),
        "augmented_embeddings": draw(4, 8),
        "features": draw(4, 5, 3, 3),
        "augmented_features": draw(4, 5, 3, 3),
        "matching": draw(4, 4, 3, 3),
        "augmented_matching": draw(4, 4, 3, 3),
    }


TRAINABLE = ("embeddings", "augmented_embeddings", "features", "augmented_features")


def contrastive_loss_and_gradients(rows: slice) -> tuple[float, dict[str, torch.Tensor]]:
    """The class-aware contrastive loss of ``rows`` of :func:`contrastive_inputs` and its input gradients."""
    from anomalib_classaware.models.components.training.contrastive_losses import ClassAwareContrastiveLoss

    inputs = {name: value[rows].clone() for name, value in contrastive_inputs().items()}
    for name in TRAINABLE:
        inputs[name].requires_grad_(True)
    losses = ClassAwareContrastiveLoss()(
        inputs["labels"],
        inputs["embeddings"],
        inputs["augmented_embeddings"],
        [inputs["features"]],
        [inputs["augmented_features"]],
        [inputs["matching"]],
        [inputs["augmented_matching"]],
    )
    losses.total.backward()
    return float(losses.total), {name: inputs[name].grad.detach().clone() for name in TRAINABLE}


def distributed_worker(rank: int, world_size: int, port: int, out: str) -> None:
    """In one gloo process group: the per-category evaluator's reduction and the contrastive loss's gradients."""
    torch.set_num_threads(1)
    distributed.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=60),
    )
    from anomalib_classaware.metrics import PerCategoryEvaluator

    evaluator = PerCategoryEvaluator(print_table=False, save_csv=False)
    for batch in evaluation_batches()[rank]:
        evaluator.update(batch)
    results: dict = {"per_category": evaluator.compute()}
    # each process holds the images rank, rank + N, ...; DDP averages parameter gradients over N processes
    loss, gradients = contrastive_loss_and_gradients(slice(rank, None, world_size))
    results["contrastive"] = (loss, {name: gradient / world_size for name, gradient in gradients.items()})
    torch.save(results, Path(out) / f"rank{rank}.pt")
    distributed.destroy_process_group()
