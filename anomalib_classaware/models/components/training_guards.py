"""``TrainingGuardsMixin``: every model of this package stops on a NaN loss and resumes with its random states.

Add it before ``AnomalibModule`` in a Lightning module's bases; it appends
:class:`~anomalib_classaware.callbacks.FiniteLossGuard` and
:class:`~anomalib_classaware.callbacks.RandomStateCheckpoint` to the callbacks the module configures
(pre-/post-processor, evaluator, visualizer). Lightning lets callbacks returned by
``configure_callbacks`` replace trainer callbacks of the same type, so a user's own instance of
either class is replaced by the model's (never doubled).
"""

from __future__ import annotations

from collections.abc import Sequence

from lightning.pytorch import Callback

from anomalib_classaware.callbacks import FiniteLossGuard, RandomStateCheckpoint


class TrainingGuardsMixin:
    """Adds :class:`FiniteLossGuard` and :class:`RandomStateCheckpoint` to ``configure_callbacks``."""

    def configure_callbacks(self) -> Sequence[Callback] | Callback:
        """The host's callbacks plus the two training guards."""
        callbacks = super().configure_callbacks()  # type: ignore[misc]
        callbacks = list(callbacks) if isinstance(callbacks, Sequence) else [callbacks]
        return [*callbacks, FiniteLossGuard(), RandomStateCheckpoint()]
