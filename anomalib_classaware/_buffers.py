"""Buffers whose size comes from the data (per-category values), loaded at the checkpoint's size."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn


class ResizableBuffersMixin(nn.Module):
    """Loads the buffers named in :attr:`resizable_buffers` at the checkpoint's shape.

    A checkpoint without one of them (written before it existed) leaves it empty instead of failing
    a strict load, when the buffer is persistent.
    """

    resizable_buffers: ClassVar[tuple[str, ...]] = ()

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        for name in self.resizable_buffers:
            key = prefix + name
            current = getattr(self, name)
            if key in state_dict:
                setattr(self, name, torch.empty_like(state_dict[key], device=current.device))
            elif name not in self._non_persistent_buffers_set:
                state_dict[key] = torch.empty(0)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
