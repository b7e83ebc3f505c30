"""``EvalModeEncoders``: base of our torch models whose encoders always run in eval mode.

A frozen timm encoder (and ReContrast's trainable one) must keep its pretrained BatchNorm statistics and run
without dropout, in training too. ``train()`` puts the encoders back into eval mode; Lightning >= 2.2 also
restores submodule modes by setting ``.training`` directly, without calling ``train()``, so a forward pass calls
:meth:`~EvalModeEncoders.encoders_eval` before it runs an encoder.
"""

from __future__ import annotations

from typing import ClassVar, TypeVar

from torch import nn

_Module = TypeVar("_Module", bound="EvalModeEncoders")


class EvalModeEncoders(nn.Module):
    """``nn.Module`` whose submodules named in :attr:`eval_encoders` stay in eval mode."""

    #: Attribute names of the encoders that always run in eval mode.
    eval_encoders: ClassVar[tuple[str, ...]] = ()

    def train(self: _Module, mode: bool = True) -> _Module:
        """Set training mode; the encoders stay in eval mode."""
        super().train(mode)
        self.encoders_eval()
        return self

    def encoders_eval(self) -> None:
        """Put the encoders into eval mode (call it at the start of a forward pass)."""
        for name in self.eval_encoders:
            getattr(self, name).eval()
