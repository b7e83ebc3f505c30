"""Train tiny models with Lightning DDP (or one process) and write what the DDP tests compare.

Run from the repository root (Lightning's ``ddp`` strategy re-launches this same command for the other
processes; the models are trained one after the other in the same process group, so the launch and
import costs are paid once)::

    python -m tests.reliability.ddp_train ReContrast,Rlr DATA OUT --devices 2 --global-batch 4 --steps 2

Per model and process it writes ``OUT/<model>/rank<r>.json`` (per-step local losses, global step,
per-category test metrics) and, on rank 0, ``OUT/<model>/weights.pt`` (the trained torch model's
parameters), ``initial.pt`` (their values before training) and ``gradients.pt`` (the first step's
gradients, after DDP's all-reduce).

For a like-for-like comparison the training order is fixed (no shuffling; the distributed sampler
gives process ``r`` the samples ``r, r + N, ...`` so each global batch holds the same images as
the single-process batch), the random state is reset before the model's ``setup`` (models that
size a layer there, like MintAd's class table, get the same initial weights), and the models'
random training noise is switched off (:data:`NO_NOISE`, :func:`_deterministic_views`).

``--frozen-batchnorm`` keeps every BatchNorm layer on its running statistics: in training mode each
process normalises with the statistics of its own share of the batch (``SyncBatchNorm`` needs GPUs),
a difference by design that would hide whether DDP itself (gradient averaging, gathered
negatives, broadcast pseudo-labels) gives the single-process result. Batch statistics inside a
loss (ReContrast's hard-mining threshold) remain per process.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch
from anomalib.engine import Engine
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from torch.utils.data import DataLoader

from .helpers import TRAINED_CATEGORIES, make_model, tiny_datamodule

NO_NOISE: dict[str, dict[str, Any]] = {
    "ClassAwareRecon": {"noise_probability": 0.0},
    "MintAd": {"jitter_scale": 0.0, "dropout": 0.0},
    "Rlr": {"jitter_scale": 0.0},
}
"""Arguments that switch off each model's random training noise (feature jitter, dropout, noise)."""


def _deterministic_views(model: LightningModule) -> None:
    """Replace random draws that arguments cannot switch off by deterministic stand-ins (test only).

    ClassAwareRecon's random contrastive view becomes a horizontal flip; MintAd's reparameterised
    class-embedding samples become the class means. (In DDP each process draws its own share, so the
    draws cannot equal one process's draws for the whole batch.)
    """
    if hasattr(model, "_view_augmentation"):
        model._view_augmentation = lambda images, *_: torch.flip(images, dims=[-1])
    embeddings = getattr(model.model, "embeddings", None)
    if embeddings is not None and hasattr(embeddings, "sample") and hasattr(embeddings, "mean"):
        embeddings.sample = lambda class_ids: embeddings.mean[class_ids]


def _freeze_batchnorm(model: torch.nn.Module) -> None:
    """Make every BatchNorm layer use (and keep) its running statistics, whatever ``train()`` sets."""

    def evaluate(module: torch.nn.Module, inputs: Any) -> None:
        del inputs
        module.eval()

    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.register_forward_pre_hook(evaluate)


class _SameStart(Callback):
    """Reset the random state before the model's ``setup``; at train start, fix random draws and record the weights."""

    def __init__(self) -> None:
        self.initial: dict[str, torch.Tensor] = {}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        del trainer, pl_module, stage
        torch.manual_seed(1)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        del trainer
        _deterministic_views(pl_module)  # after ``setup``, which may rebuild modules (MintAd's class table)
        self.initial = {name: value.detach().clone() for name, value in pl_module.model.named_parameters()}


class _Losses(Callback):
    """Per-step local losses, and the gradients of the first step (averaged over processes by DDP)."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.first_gradients: dict[str, torch.Tensor] = {}

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        del optimizer
        if trainer.global_step == 0:
            self.first_gradients = {
                name: parameter.grad.detach().clone()
                for name, parameter in pl_module.model.named_parameters()
                if parameter.grad is not None
            }

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        del trainer, pl_module, batch, batch_idx
        self.losses.append(float(outputs["loss"] if isinstance(outputs, dict) else outputs))


def train_and_test(name: str, data: Path, out: Path, devices: int, global_batch: int, steps: int, frozen: bool) -> None:
    """Train ``name`` ``steps`` steps on ``devices`` processes, test it, and write the results under ``out``."""
    datamodule = tiny_datamodule(
        data, train_batch_size=global_batch // devices, eval_batch_size=2, per_category_metrics=True
    )

    def ordered_train_dataloader() -> DataLoader:
        return DataLoader(
            datamodule.train_data,
            shuffle=False,
            batch_size=datamodule.train_batch_size,
            num_workers=0,
            collate_fn=datamodule.train_data.collate_fn,
        )

    datamodule.train_dataloader = ordered_train_dataloader  # type: ignore[method-assign]

    seed_everything(0, workers=True)
    model = make_model(name, **NO_NOISE.get(name, {}))
    if frozen:
        _freeze_batchnorm(model.model)
    start = _SameStart()
    losses = _Losses()
    strategy = {"strategy": "ddp", "devices": devices} if devices > 1 else {"devices": 1}
    engine = Engine(
        max_steps=steps,
        default_root_dir=out / "results",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        callbacks=[start, losses],
        **strategy,
    )
    engine.fit(model, datamodule=datamodule)
    engine.test(model, datamodule=datamodule)
    rank = engine.trainer.global_rank
    results = {
        "rank": rank,
        "world_size": engine.trainer.world_size,
        "global_step": engine.trainer.global_step,
        "losses": losses.losses,
        "categories": sorted(TRAINED_CATEGORIES),
        "per_category": getattr(model.evaluator, "last_results", {}),
        "pid": os.getpid(),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps(results))
    if rank == 0:
        torch.save({name: value.detach() for name, value in model.model.named_parameters()}, out / "weights.pt")
        torch.save(start.initial, out / "initial.pt")
        torch.save(losses.first_gradients, out / "gradients.pt")


def main() -> None:
    """Parse the arguments, then train, test and write the results of each model."""
    parser = argparse.ArgumentParser()
    parser.add_argument("models", help="comma-separated model names")
    parser.add_argument("data", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--global-batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--frozen-batchnorm", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in args.models.split(","):
        train_and_test(
            name, args.data, args.out / name, args.devices, args.global_batch, args.steps, args.frozen_batchnorm
        )


if __name__ == "__main__":
    main()
