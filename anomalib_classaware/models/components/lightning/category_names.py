"""Category bookkeeping shared by our Lightning models.

Class labels enter only the training losses; nothing after the torch model's forward needs
them. What the Lightning module keeps is the list of category names (ordered by
``category_id``), saved as a hyperparameter so that a checkpoint can map ids back to names at
test, predict and export time.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

logger = logging.getLogger(__name__)

SINGLE_CLASS_NAME = "all"


def category_names_from_datamodule(datamodule: object) -> list[str] | None:
    """Return the datamodule's ``category_names`` (ours), or ``None`` for anomalib's single-category datamodules."""
    names = getattr(datamodule, "category_names", None)
    return list(names) if names else None


def batch_category_ids(batch: object, batch_size: int, device: torch.device) -> torch.Tensor:
    """``batch.category_id`` as a ``(B,)`` long tensor; zeros (one class) when the batch carries none."""
    ids = getattr(batch, "category_id", None)
    if ids is None:
        return torch.zeros(batch_size, dtype=torch.long, device=device)
    return torch.as_tensor(ids, device=device).long().reshape(batch_size)


class CategoryNamesMixin:
    """Keeps ``category_names`` in the module's hyperparameters; logs once when data has no categories.

    The host class takes ``category_names: Sequence[str] | None = None`` as an ``__init__`` argument
    (so ``load_from_checkpoint`` restores it) and calls :meth:`_record_category_names` from
    ``on_fit_start``.
    """

    category_names: list[str] | None

    def _record_category_names(self) -> list[str]:
        datamodule = getattr(getattr(self, "trainer", None), "datamodule", None)
        names = category_names_from_datamodule(datamodule)
        if names is None:
            datamodule_name = type(datamodule).__name__
            names = [getattr(datamodule, "category", None) or SINGLE_CLASS_NAME]
            logger.info(
                "%s: the datamodule (%s) gives no category ids; treating the training data as one class %r.",
                type(self).__name__,
                datamodule_name,
                names[0],
            )
        elif self.category_names and list(self.category_names) != names:
            logger.warning(
                "%s: categories change from %s (checkpoint) to %s (datamodule); ids now follow the datamodule.",
                type(self).__name__,
                self.category_names,
                names,
            )
        self.category_names = names
        self.hparams["category_names"] = names  # type: ignore[attr-defined]
        return names


def validate_category_names(names: Sequence[str] | None) -> list[str] | None:
    """Check an init-time ``category_names`` argument (unique strings) and return it as a list."""
    if names is None:
        return None
    names = [str(name) for name in names]
    if len(set(names)) != len(names):
        msg = f"`category_names` must be unique, got {names}."
        raise ValueError(msg)
    return names
