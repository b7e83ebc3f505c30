"""Small Lightning-module mixins shared by our models.

- :class:`PlannedStepsMixin`: the number of optimizer steps a fit is planned to take
  (``trainer.estimated_stepping_batches``), which the papers' step-based schedules (learning-rate
  decay at 80 %, ReContrast's hard-mining ramp) scale to; recomputed for every new fit, so the
  schedules follow ``max_steps`` or ``max_epochs`` and continue correctly when a fit resumes.
- :class:`OfflineCheckpointMixin`: ``load_from_checkpoint`` defaults ``pre_trained=False`` and
  ``weights_path=None``: the checkpoint holds every weight, so loading must not need the model hub
  or the original weights file (air-gapped inspection lines).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.types import _MAP_LOCATION_TYPE


class PlannedStepsMixin:
    """Adds :attr:`planned_steps`; the host's ``setup`` must call ``super().setup(stage)``."""

    _planned_steps: int | None = None

    @property
    def planned_steps(self) -> int:
        """Optimizer steps this fit is planned to take (``trainer.estimated_stepping_batches``).

        Raises:
            ValueError: if the training length is unbounded.

        """
        if self._planned_steps is None:
            steps = self.trainer.estimated_stepping_batches  # type: ignore[attr-defined]
            if not math.isfinite(steps) or steps < 1:
                msg = f"{type(self).__name__}'s schedules need a finite training length: set max_steps or max_epochs."
                raise ValueError(msg)
            self._planned_steps = int(steps)
        return self._planned_steps

    def setup(self, stage: str) -> None:
        """Forget a previous fit's planned steps (runs before ``configure_optimizers``; a new trainer may differ)."""
        super().setup(stage)  # type: ignore[misc]
        self._planned_steps = None


class OfflineCheckpointMixin:
    """``load_from_checkpoint`` that never fetches backbone weights (put before the Lightning base class)."""

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | Path,
        map_location: _MAP_LOCATION_TYPE = None,
        hparams_file: str | Path | None = None,
        strict: bool | None = None,
        weights_only: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Load a checkpoint with ``pre_trained=False`` and ``weights_path=None`` unless given."""
        kwargs.setdefault("pre_trained", False)
        kwargs.setdefault("weights_path", None)
        return super().load_from_checkpoint(  # type: ignore[misc]
            checkpoint_path,
            map_location=map_location,
            hparams_file=hparams_file,
            strict=strict,
            weights_only=weights_only,
            **kwargs,
        )
