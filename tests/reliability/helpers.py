"""Helpers of the reliability tests: every model of ``anomalib_classaware.models.__all__``, tiny.

A new model is covered as soon as it is listed in ``__all__``. Its tiny arguments default to
:data:`TINY`; a model that needs other arguments to be small gets an entry in :data:`TINY_OVERRIDES`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from anomalib.engine import Engine
from anomalib.models.components import AnomalibModule
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything

import anomalib_classaware.models as models
from anomalib_classaware.data import MultiClassFolder
from tests.conftest import write_mvtec_category
from tests.tiny_models import TINY_INIT_ARGS

MODEL_NAMES: list[str] = list(models.__all__)

TINY: dict[str, Any] = {"backbone": "resnet18", "pre_trained": False, "input_size": (32, 32)}
"""Arguments that make any of our models tiny (random resnet18 weights, 32 px)."""

TINY_OVERRIDES: dict[str, dict[str, Any]] = {
    # two reconstructed levels: 4x fewer trainable parameters, so optimizer steps and checkpoints are cheap
    "ClassAwareRecon": {"layers": (1, 2)},
    "ReContrast": {"layers": (1, 2)},
    # stride-16 tokens: 32 px would leave a 2x2 grid, too small for the window
    "MintAd": {"input_size": (64, 64), **TINY_INIT_ARGS["MintAd"]},
    "Rlr": TINY_INIT_ARGS["Rlr"],
}

TRAINED_CATEGORIES = ("alpha", "beta")
UNSEEN_CATEGORY = "gamma"


def make_model(name: str, **kwargs: Any) -> AnomalibModule:
    """The model class ``name`` of ``anomalib_classaware.models`` with tiny arguments (no visualizer)."""
    arguments = {**TINY, **TINY_OVERRIDES.get(name, {}), "visualizer": False, **kwargs}
    return getattr(models, name)(**arguments)


def write_tiny_dataset(root: Path) -> Path:
    """Two trained categories (4 train images each, 32 px) and one category that is never trained on."""
    for index, name in enumerate((*TRAINED_CATEGORIES, UNSEEN_CATEGORY)):
        write_mvtec_category(root, name, num_train=2, num_good=2, num_per_defect=2, size=32, seed=index)
    return root


def tiny_datamodule(root: Path, categories: tuple[str, ...] = TRAINED_CATEGORIES, **kwargs: Any) -> MultiClassFolder:
    """Batches of 2 (2 optimizer steps per epoch), no worker processes."""
    arguments = {"num_workers": 0, "train_batch_size": 2, "eval_batch_size": 4, **kwargs}
    return MultiClassFolder(root, categories=list(categories), **arguments)


class StepRecorder(Callback):
    """Records, per optimizer step: the loss, every parameter group's learning rate, logged train scalars."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        del pl_module, batch_idx
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.steps.append(
            {
                "step": trainer.global_step,
                "loss": float(loss),
                "lr": [group["lr"] for optimizer in trainer.optimizers for group in optimizer.param_groups],
                "logged": {
                    key: float(value)
                    for key, value in trainer.callback_metrics.items()
                    if key.startswith("train") and key.endswith("_step")
                },
                "images": [Path(path).name for path in (batch.image_path or [])],
            }
        )


def fit(
    model: LightningModule,
    datamodule: MultiClassFolder,
    workdir: Path,
    max_steps: int,
    ckpt_path: str | Path | None = None,
    callbacks: list[Callback] | None = None,
    **trainer_kwargs: Any,
) -> tuple[Engine, StepRecorder]:
    """``Engine.fit`` on CPU, seeded with ``seed_everything(0)`` first.

    No guard callbacks are passed: our datamodule adds ``FiniteLossGuard`` and ``RandomStateCheckpoint``
    (``training_guards=True``), which is what these tests check.
    """
    seed_everything(0, workers=True)
    recorder = StepRecorder()
    engine = Engine(
        max_steps=max_steps,
        default_root_dir=workdir,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        callbacks=[recorder, *(callbacks or [])],
        **trainer_kwargs,
    )
    engine.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    return engine, recorder


def float_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The torch model's floating-point parameters and buffers, detached copies."""
    return {key: value.detach().clone() for key, value in model.state_dict().items() if value.is_floating_point()}


def max_abs_difference(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference over equally keyed tensors."""
    assert first.keys() == second.keys()
    return max(float((first[key] - second[key]).abs().max()) if first[key].numel() else 0.0 for key in first)
