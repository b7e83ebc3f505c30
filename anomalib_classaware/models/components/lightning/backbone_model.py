"""``BackboneModelMixin``: what the ``__init__``, training step and trainer arguments of our Lightning models share.

Every model's ``__init__`` opens with ``backbone, layers, pre_trained, weights_path, input_size`` and ends with the
four anomalib components; it keeps that explicit signature (the CLI reads it) and calls ``AnomalibModule.__init__``
itself::

    super().__init__(self.resolve_pre_processor(pre_processor, input_size), post_processor, evaluator, visualizer)
    self.model = TorchModel(**self.backbone_arguments(backbone, layers, pre_trained, weights_path, input_size), ...)

The mixin has no ``__init__`` on purpose: Lightning's ``save_hyperparameters`` (called by
``AnomalibModule.__init__``) collects the arguments by walking the ``__init__`` frames from ``AnomalibModule`` up
to the model's, and a helper function in that chain would stop the walk before the model's arguments. The helpers
here run before and after that call, so ``hparams`` stays the model's whole signature, in its order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

from anomalib.pre_processing import PreProcessor
from torch import Tensor


class BackboneArguments(TypedDict):
    """The backbone arguments of our torch models, as the Lightning module resolved them."""

    backbone: str
    layers: tuple[int, ...]
    input_size: tuple[int, int]
    pre_trained: bool
    weights_path: str | None


class BackboneModelMixin:
    """Pre-processor at the model's input size, backbone arguments, loss logging, trainer arguments.

    Put it before ``AnomalibModule`` in the bases.
    """

    #: Gradient-norm clipping the module asks the trainer for (0: none); a model with the argument sets it.
    gradient_clip_val: float = 0

    @classmethod
    def resolve_pre_processor(
        cls, pre_processor: PreProcessor | bool, input_size: Sequence[int]
    ) -> PreProcessor | bool:
        """``True``: the default pre-processor (``configure_pre_processor``) at ``input_size``; else as given."""
        if pre_processor is True:
            return cls.configure_pre_processor(image_size=(int(input_size[0]), int(input_size[1])))  # type: ignore[attr-defined]
        return pre_processor

    def backbone_arguments(
        self,
        backbone: str,
        layers: Sequence[int],
        pre_trained: bool,
        weights_path: str | None,
        input_size: Sequence[int],
    ) -> BackboneArguments:
        """The torch model's backbone arguments; its input size is the pre-processor's, if that resizes.

        Call it after ``AnomalibModule.__init__`` (which sets the pre-processor).
        """
        size = self.input_size or input_size  # type: ignore[attr-defined]
        return BackboneArguments(
            backbone=backbone,
            layers=tuple(int(layer) for layer in layers),
            input_size=(int(size[0]), int(size[1])),
            pre_trained=pre_trained,
            weights_path=weights_path,
        )

    def log_training_loss(
        self,
        loss: Tensor,
        batch_size: int,
        terms: Mapping[str, Tensor | float] | None = None,
        terms_on_epoch: bool = False,
    ) -> None:
        """Log ``train_loss`` (step and epoch, progress bar, synced across processes) and each named term per step."""
        log = self.log  # type: ignore[attr-defined]
        log(
            "train_loss",
            loss.detach(),
            on_step=True,
            on_epoch=True,
            prog_bar=True,
            batch_size=batch_size,
            sync_dist=True,
        )
        for name, value in (terms or {}).items():
            value = value.detach() if isinstance(value, Tensor) else value
            log(name, value, on_step=True, on_epoch=terms_on_epoch, batch_size=batch_size)

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """Clip gradients at :attr:`gradient_clip_val`, skip sanity validation; the training length is the user's."""
        return {"gradient_clip_val": self.gradient_clip_val, "num_sanity_val_steps": 0}
