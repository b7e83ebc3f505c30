"""Reading images and masks robustly: documented conversions to 8-bit RGB, and errors that name the file.

anomalib's ``read_image`` is ``PIL.Image.open(path).convert("RGB")``: grayscale and RGBA work, but
a 16-bit grayscale image is *clipped* at 255 (almost every pixel turns white) and an unreadable
file fails mid-epoch with PIL's message. :func:`read_rgb_image` applies these conversions instead:

=====================================  ==========================================================
stored as (Pillow mode)                 read as 3-channel 8-bit RGB by
=====================================  ==========================================================
RGB                                     unchanged
grayscale ``L``, bilevel ``1``          the grey value copied into R, G and B
palette ``P``/``PA``, ``CMYK``,         Pillow's conversion to RGB
``YCbCr``, ``LAB``, ``HSV``
with alpha (``RGBA``, ``LA``, ``PA``)   alpha dropped: the stored colour is kept as it is, not
                                        composited onto a background
16-bit grayscale (``I;16*``), 32-bit    the high byte (``value // 256``, values clipped to
integer ``I``                           0..65535), then grey to RGB
16-bit colour (PNG/TIFF, 48-bit)        Pillow decodes them to 8-bit RGB (the high byte) already
32-bit float ``F``                      values must lie in [0, 1]; multiplied by 255 and rounded;
                                        any other range is an error naming the file
=====================================  ==========================================================

Masks (:func:`read_binary_mask`): any mode; a pixel is defective where its stored value is
non-zero (as in anomalib), 16-bit masks included.

:func:`check_image_file` is the fast check run when a datamodule is set up: PNG files are verified
chunk by chunk (CRC, no decompression), JPEG files are decoded at 1/8 scale (Pillow's ``verify``
misses truncated JPEGs), other formats are decoded fully.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image
from torchvision.transforms.v2.functional import to_dtype, to_image
from torchvision.tv_tensors import Mask

logger = logging.getLogger(__name__)

SKIP_CORRUPT_HINT = (
    "Delete or replace the file, or pass skip_corrupt=True to the datamodule (CLI: --data.skip_corrupt true) "
    "to leave unreadable files out, listed in one warning."
)
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ALPHA_DROP = {"RGBA": "RGB", "RGBa": "RGB", "LA": "L", "La": "L", "PA": "RGBA"}


class CorruptImageError(OSError):
    """An image or mask file that cannot be read; the message names the file and what to do."""


def _unreadable(path: str | Path, reason: object) -> CorruptImageError:
    return CorruptImageError(f"Cannot read image file {str(path)!r} ({reason}). {SKIP_CORRUPT_HINT}")


def to_rgb8(image: Image.Image, path: str | Path = "<image>") -> np.ndarray:
    """Convert a Pillow image to an ``(H, W, 3)`` ``uint8`` array with the documented conversions."""
    mode = image.mode
    while mode in _ALPHA_DROP:  # PA -> RGBA -> RGB
        image = image.convert(_ALPHA_DROP[mode])
        mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        grey = np.asarray(image).astype(np.int64)
        grey = (np.clip(grey, 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "F":
        values = np.asarray(image, dtype=np.float32)
        if not np.isfinite(values).all() or values.min(initial=0.0) < 0 or values.max(initial=0.0) > 1:
            msg = (
                f"Float image {str(path)!r} has values outside [0, 1] (min {np.nanmin(values):.4g}, "
                f"max {np.nanmax(values):.4g}); save it as an 8-bit or 16-bit image."
            )
            raise ValueError(msg)
        grey = np.round(values * 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode != "RGB":
        try:
            image = image.convert("RGB")
        except (ValueError, OSError) as error:
            msg = f"Cannot convert image {str(path)!r} of mode {mode!r} to RGB ({error}); save it as an RGB PNG."
            raise ValueError(msg) from error
    return np.array(image)  # a writable copy


def read_rgb_image(path: str | Path, as_tensor: bool = True) -> torch.Tensor | np.ndarray:
    """Read an image as RGB: ``(3, H, W)`` float32 tensor in [0, 1] (or ``(H, W, 3)`` float64 array).

    Same output as anomalib's ``read_image``, with the conversions of this module's table.

    Raises:
        CorruptImageError: the file is missing, empty, truncated or not an image; the message names it.
        ValueError: a float image outside [0, 1] or a mode Pillow cannot convert to RGB.

    """
    try:
        with Image.open(path) as image:
            image.load()
            array = to_rgb8(image, path)
    except ValueError:
        raise
    except Exception as error:  # Pillow raises OSError, SyntaxError, struct.error, ...
        raise _unreadable(path, error) from error
    if as_tensor:
        return to_dtype(to_image(np.ascontiguousarray(array)), torch.float32, scale=True)
    return array / 255.0


def read_binary_mask(path: str | Path, as_tensor: bool = True) -> torch.Tensor | np.ndarray:
    """Read a mask: ``(H, W)`` uint8 ``Mask`` with 1 where the stored value is non-zero (or the raw array)."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in _SIXTEEN_BIT_MODES or image.mode == "F":
                array = np.asarray(image)
            else:
                array = np.asarray(image.convert("L"))
    except Exception as error:
        raise _unreadable(path, error) from error
    if not as_tensor:
        return array
    return Mask(torch.from_numpy(np.ascontiguousarray(array != 0)), dtype=torch.uint8)


@dataclass(frozen=True)
class ImageCheck:
    """Result of :func:`check_image_file`: ``(width, height)`` and Pillow mode, or the reason it is unreadable."""

    size: tuple[int, int] | None = None
    mode: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the file passed the check."""
        return self.error is None


def check_image_file(path: str | Path) -> ImageCheck:
    """Check that ``path`` is a readable image without decoding more than needed.

    PNG: Pillow's ``verify()`` (every chunk's CRC, including truncation); JPEG: a 1/8-scale decode
    (``verify()`` does nothing for JPEG); other formats: a full decode. About 0.3 ms per 256 px
    PNG of the demo data, roughly 10x less than decoding it.
    """
    try:
        if Path(path).stat().st_size == 0:
            return ImageCheck(error="empty file (0 bytes)")
        with Image.open(path) as image:
            size, mode, image_format = image.size, image.mode, image.format
            if image_format == "PNG":
                image.verify()
            else:
                if image_format in {"JPEG", "MPO"}:
                    image.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
                image.load()
    except Exception as error:  # Pillow raises OSError, SyntaxError, struct.error, ...
        return ImageCheck(error=f"{type(error).__name__}: {error}")
    return ImageCheck(size=(int(size[0]), int(size[1])), mode=mode)


def mask_size_message(
    image_path: str | Path, mask_path: str | Path, image_size: Sequence[int], mask_size: Sequence[int]
) -> str:
    """Error message for a mask whose ``(H, W)`` differs from its image's."""
    return (
        f"Mask {str(mask_path)!r} is {mask_size[0]}x{mask_size[1]} (HxW) but its image {str(image_path)!r} is "
        f"{image_size[0]}x{image_size[1]}. A mask must have its image's size: check that the mask belongs to "
        "this image, or resize it (nearest neighbour)."
    )


def _listing(lines: Sequence[str]) -> str:
    return "".join(f"\n  {line}" for line in lines)


def check_sample_files(samples: pd.DataFrame, skip_corrupt: bool = False) -> pd.DataFrame:
    """Check every image and mask of ``samples`` with :func:`check_image_file`; return the usable rows.

    - unreadable files (missing, empty, truncated, not an image): with ``skip_corrupt=False`` one
      :class:`CorruptImageError` listing all of them; with ``skip_corrupt=True`` their rows (for a
      mask: its image's row) are dropped with one warning listing the files and reasons;
    - a mask whose size differs from its image's: a ``ValueError`` listing every such pair;
    - a category left without training images: a ``ValueError`` naming it.

    ``samples.attrs`` (the task) is kept. Cost: see :func:`check_image_file`; the time is logged.
    """
    start = time.perf_counter()
    problems: dict[str, str] = {}
    mismatched: list[str] = []
    drop: list[int] = []
    for index, image_path, mask_path in zip(samples.index, samples.image_path, samples.mask_path, strict=True):
        image = check_image_file(image_path)
        if not image.ok:
            problems[image_path] = str(image.error)
            drop.append(index)
            continue
        if mask_path:
            mask = check_image_file(mask_path)
            if not mask.ok:
                problems[mask_path] = f"{mask.error} (mask of {image_path})"
                drop.append(index)
            elif mask.size != image.size:
                width, height = image.size  # type: ignore[misc]
                mask_width, mask_height = mask.size  # type: ignore[misc]
                mismatched.append(mask_size_message(image_path, mask_path, (height, width), (mask_height, mask_width)))
    logger.info("Checked %d samples' image and mask files in %.2f s.", len(samples), time.perf_counter() - start)
    if problems and not skip_corrupt:
        lines = [f"{path}: {reason}" for path, reason in problems.items()]
        msg = (
            f"{len(problems)} image file(s) cannot be read:{_listing(lines)}\nDelete or replace them, or pass "
            "skip_corrupt=True to the datamodule (CLI: --data.skip_corrupt true) to leave them out, listed in one "
            "warning."
        )
        raise CorruptImageError(msg)
    if mismatched:
        raise ValueError(f"{len(mismatched)} mask(s) do not match their image's size:{_listing(mismatched)}")
    if not problems:
        return samples
    lines = [f"{path}: {reason}" for path, reason in problems.items()]
    rank_zero_warn(
        f"skip_corrupt=True: leaving out {len(drop)} sample(s) whose image or mask cannot be read:{_listing(lines)}",
        category=UserWarning,
    )
    kept = samples.drop(index=drop)
    kept.attrs = dict(samples.attrs)
    emptied = sorted(set(samples.category[samples.split == "train"]) - set(kept.category[kept.split == "train"]))
    if emptied:
        msg = f"No readable training image is left in categor{'y' if len(emptied) == 1 else 'ies'} {emptied}."
        raise ValueError(msg)
    kept = kept.reset_index(drop=True)
    kept.attrs = dict(samples.attrs)
    return kept
