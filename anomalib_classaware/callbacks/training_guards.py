"""Training that stops cleanly on a NaN loss and resumes exactly: two Lightning callbacks.

- :class:`FiniteLossGuard`: when the training loss of a step is NaN or inf (on any process), training
  stops *before that step's backward pass and optimizer step* with a :class:`NonFiniteLossError`
  naming the model, the step and the batch's images, and pointing to the last good checkpoint. Since
  the weights and optimizer state are never touched by the bad step, every checkpoint Lightning keeps
  (``ModelCheckpoint(save_last=True)``, ``save_on_exception=True``) holds finite weights.
- :class:`RandomStateCheckpoint`: stores the global random states (torch, CUDA, numpy, Python) of
  every process in each checkpoint and restores them when training resumes (``ckpt_path``), so
  the data order (``shuffle=True`` draws from torch's global generator), random augmentations and
  feature jitter continue as in an uninterrupted run. Resuming from a checkpoint taken at the end of
  an epoch reproduces the uninterrupted run; Lightning restarts the data of an epoch that a
  mid-epoch checkpoint interrupted, so that case continues with other batches.

Models get both through :class:`~anomalib_classaware.models.components.lightning.mixins.TrainingGuardsMixin`;
any Lightning model can use them as ``Trainer(callbacks=[FiniteLossGuard(), RandomStateCheckpoint()])``
or ``anomalib train ... --trainer.callbacks+=anomalib_classaware.callbacks.FiniteLossGuard``.
"""

from __future__ import annotations

import logging
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import distributed

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or inf; the message names the model, the step and what to do."""


class FiniteLossGuard(Callback):
    """Stop training before a step whose loss is NaN or inf changes the weights.

    The check runs in ``on_before_backward``; under DDP the decision is reduced over all processes
    (one scalar all-reduce per step) so that every process stops at the same step instead of
    waiting for the others in the gradient all-reduce.

    Args:
        max_paths: number of the failing batch's image paths quoted in the error.

    """

    def __init__(self, max_paths: int = 8) -> None:
        self.max_paths = max_paths
        self._batch: Any = None
        self._batch_idx: int = -1

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        """Remember the batch, to name its images if its loss is not finite."""
        del trainer, pl_module
        self._batch, self._batch_idx = batch, batch_idx

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor) -> None:
        """Raise :class:`NonFiniteLossError` on every process if the loss is not finite on any of them."""
        finite = bool(torch.isfinite(loss.detach()).all())
        if trainer.strategy.reduce_boolean_decision(finite, all=True):
            return
        raise NonFiniteLossError(self.message(trainer, pl_module, loss, finite))

    def message(self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor, finite: bool) -> str:
        """The error message: model, step, loss value, images of the batch, last good checkpoint, remedies."""
        value = loss.detach().float().reshape(-1)[0].item() if loss.numel() else math.nan
        where = f"loss = {value}" if not finite else "loss finite here but not on another process"
        lines = [
            f"{type(pl_module).__name__}: the training loss is not finite at global step {trainer.global_step} "
            f"(epoch {trainer.current_epoch}, batch {self._batch_idx}, process {trainer.global_rank}: {where}). "
            "Training stopped before this step changed the weights.",
        ]
        paths = getattr(self._batch, "image_path", None)
        if paths:
            shown = [str(path) for path in list(paths)[: self.max_paths]]
            more = f" and {len(paths) - len(shown)} more" if len(paths) > len(shown) else ""
            lines.append(f"Images of this batch: {shown}{more}.")
        checkpoint = last_checkpoint(trainer)
        if checkpoint is not None:
            lines.append(f"Last good checkpoint: {checkpoint} (resume with --ckpt_path / ckpt_path=...).")
        else:
            lines.append(
                "No checkpoint was saved before this step; add ModelCheckpoint(every_n_train_steps=N, "
                "save_last=True) to keep one."
            )
        lines.append(
            "What to do: lower the learning rate, clip gradients (--trainer.gradient_clip_val 1.0), "
            "or check these images for NaN/inf values after pre-processing."
        )
        return "\n".join(lines)


def last_checkpoint(trainer: Trainer) -> str | None:
    """Path of the newest checkpoint file the trainer's ``ModelCheckpoint`` callbacks saved, if any."""
    paths = []
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint):
            paths.extend(p for p in (callback.last_model_path, callback.best_model_path) if p)
    existing = [Path(p) for p in paths if Path(p).is_file()]
    return str(max(existing, key=lambda p: p.stat().st_mtime)) if existing else None


def _random_states() -> dict[str, Any]:
    """This process's random states, as tensors and Python scalars (loadable with ``weights_only=True``)."""
    version, state, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [int(version), torch.tensor(state, dtype=torch.int64), gauss],
        "numpy": [str(name), torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["torch.cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_random_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    version, state, gauss = states["python"]
    random.setstate((int(version), tuple(int(v) for v in state.tolist()), gauss))
    name, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    cuda_states = states.get("torch.cuda")
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)


def _distributed() -> bool:
    return distributed.is_available() and distributed.is_initialized()


class RandomStateCheckpoint(Callback):
    """Save every process's global random states in checkpoints; restore them on resume.

    Under DDP the states of all processes are gathered when a checkpoint is written (every process
    takes part in ``Trainer.save_checkpoint``) and each process gets its own back on resume (with a
    different number of processes, process ``r`` gets the state of ``r`` modulo the saved count).
    """

    def state_dict(self) -> dict[str, Any]:
        """Random states of every process, rank order."""
        states = _random_states()
        if _distributed():
            gathered: list[Any] = [None] * distributed.get_world_size()
            distributed.all_gather_object(gathered, states)
            return {"per_rank": gathered}
        return {"per_rank": [states]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore this process's random states."""
        per_rank = state_dict.get("per_rank") or []
        if not per_rank:
            return
        rank = distributed.get_rank() if _distributed() else 0
        _set_random_states(per_rank[rank % len(per_rank)])
        logger.info("Restored the random states of process %d from the checkpoint.", rank)
