"""Inspection-line building blocks: image sources, an OpenVINO detector for exported IRs, overlays.

Used by ``examples/deploy_openvino.py``. Needs only numpy, Pillow and OpenVINO (no torch, no
anomalib at run time), so the line computer needs neither. The detector runs the IR that anomalib exports (one
input: float RGB in [0, 1], NCHW; outputs ``pred_score``, ``pred_label``, ``anomaly_map``,
``pred_mask``) with the OpenVINO runtime directly: anomalib's ``OpenVINOInferencer`` does not resize
(the exported graph has a fixed height and width) and writes an ``openvino_cache`` folder into the
working directory.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np
from PIL import Image

from .categories import read_category_names

if TYPE_CHECKING:
    import openvino as ov

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"}
)
"""File extensions (lower case) treated as images when a folder is scanned (torchvision's list)."""

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})

PRECISION_KEY: tuple[str, str] = ("runtime_options", "INFERENCE_PRECISION_HINT")
"""Where an IR records the floating-point precision it is meant to run in (``model.get_rt_info``)."""

PRECISIONS: tuple[str, ...] = ("auto", "f32", "bf16")
"""Inference precisions of :class:`OpenVINODetector`: ``auto`` is the one the IR records, else ``f32``."""


def cpu_capabilities(core: ov.Core | None = None) -> list[str]:
    """OpenVINO's ``OPTIMIZATION_CAPABILITIES`` of the CPU (e.g. ``FP32``, ``INT8``, ``BF16``)."""
    import openvino as ov

    return [str(item) for item in (core or ov.Core()).get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def cpu_supports_bf16(core: ov.Core | None = None) -> bool:
    """Whether the CPU computes in bfloat16 natively (AVX-512 BF16 or AMX: OpenVINO lists ``BF16``)."""
    return "BF16" in cpu_capabilities(core)


def set_inference_precision(model: ov.Model, precision: str) -> ov.Model:
    """Record ``precision`` (``f32``, ``bf16``) as the IR's runtime option :data:`PRECISION_KEY`; returns ``model``.

    OpenVINO 2026.4's CPU plugin does not apply this option by itself (it applies only the KV-cache
    ones of ``runtime_options``): :class:`OpenVINODetector`, the speed benchmark and
    :func:`inference_config` read it and pass it to ``compile_model``.
    """
    model.set_rt_info(precision, list(PRECISION_KEY))
    return model


def recorded_precision(model: ov.Model) -> str | None:
    """The precision the IR records (:func:`set_inference_precision`), ``None`` if it records none."""
    if not model.has_rt_info(list(PRECISION_KEY)):
        return None
    return str(model.get_rt_info(list(PRECISION_KEY)).astype(str))


def resolve_precision(
    model: ov.Model, precision: str = "auto", device: str = "CPU", capabilities: Sequence[str] | None = None
) -> str:
    """The ``INFERENCE_PRECISION_HINT`` to compile ``model`` with.

    ``auto``: the precision the IR records, ``f32`` if it records none (OpenVINO's CPU default is
    ``bf16`` on CPUs with BF16, which moves scores by ~1e-2); a recorded ``bf16`` on a CPU without
    BF16 falls back to ``f32`` with a warning. ``f32``/``bf16``: as asked.

    Raises:
        ValueError: on an unknown precision, or ``bf16`` asked for a CPU without BF16.

    """
    if precision not in PRECISIONS:
        msg = f"Unknown inference precision {precision!r}; expected one of {', '.join(PRECISIONS)}."
        raise ValueError(msg)
    on_cpu = device.upper().startswith("CPU")
    if on_cpu and capabilities is None:
        capabilities = cpu_capabilities()
    has_bf16 = not on_cpu or "BF16" in (capabilities or ())
    if precision == "auto":
        recorded = recorded_precision(model) or "f32"
        if recorded == "bf16" and not has_bf16:
            logger.warning(
                "The IR records bf16, but this CPU has no BF16 (OpenVINO capabilities: %s): running it in f32.",
                ", ".join(capabilities or ()),
            )
            return "f32"
        return recorded
    if precision == "bf16" and not has_bf16:
        msg = (
            f"bf16 inference needs a CPU with BF16 (AVX-512 BF16 or AMX: Intel Cooper Lake, Sapphire Rapids and "
            f"later, AMD Zen 4 and later); OpenVINO lists this CPU's capabilities as {', '.join(capabilities or ())}. "
            "Use f32 here."
        )
        raise ValueError(msg)
    return precision


def inference_config(model_path: str | Path, precision: str = "auto", device: str = "CPU") -> dict[str, str]:
    """``compile_model`` config that runs an IR in the precision it records, e.g. for anomalib's ``OpenVINOInferencer``.

    ``OpenVINOInferencer(path, config=inference_config(path))``; see :func:`resolve_precision`.
    """
    import openvino as ov

    model = ov.Core().read_model(str(model_path))
    return {"INFERENCE_PRECISION_HINT": resolve_precision(model, precision, device)}


class ImageReadError(OSError):
    """An input that cannot be read as an image; the message names the file and the reason."""


def iter_image_paths(source: str | Path, stdin: TextIO | None = None) -> Iterator[Path]:
    """Yield the images to inspect.

    Args:
        source: A folder (every file below it, recursively, whose extension is in
            :data:`IMAGE_EXTENSIONS`, in sorted order), a single file, or ``"-"``: one path per line
            read from ``stdin`` as the lines arrive (blank lines and lines starting with ``#``
            are skipped; no extension filter, so a bad path is reported rather than ignored).
        stdin: The stream for ``"-"`` (default: :data:`sys.stdin`).

    Raises:
        FileNotFoundError: if ``source`` is neither ``"-"`` nor an existing file or folder.

    """
    if str(source) == "-":
        for line in stdin if stdin is not None else sys.stdin:
            text = line.strip()
            if text and not text.startswith("#"):
                yield Path(text)
        return
    path = Path(source)
    if path.is_dir():
        yield from sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    elif path.is_file():
        yield path
    else:
        msg = f"Image source not found: {path} (give a folder, an image file or '-' for paths on stdin)."
        raise FileNotFoundError(msg)


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image as an ``(H, W, 3)`` uint8 RGB array.

    Grayscale is copied into the three channels, alpha is dropped, 16-bit grayscale keeps its
    high byte (Pillow's ``convert("RGB")`` would clip it at 255).

    Raises:
        ImageReadError: if the file is missing, truncated, empty or not an image.

    """
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in _SIXTEEN_BIT_MODES:
                grey = (np.clip(np.asarray(image, dtype=np.int64), 0, 65535) // 256).astype(np.uint8)
                return np.repeat(grey[..., None], 3, axis=2)
            return np.asarray(image.convert("RGB"))
    except Exception as error:  # Pillow raises OSError, SyntaxError, ValueError, struct.error...
        msg = f"{path}: cannot read image ({type(error).__name__}: {error})"
        raise ImageReadError(msg) from error


@dataclass
class Detection:
    """The result of one image: post-processed outputs of the exported graph, at the image's own size."""

    score: float
    label: bool
    anomaly_map: np.ndarray  # (H, W) float32, normalised: 0.5 is the pixel threshold
    pred_mask: np.ndarray | None  # (H, W) bool
    latency_ms: float  # pre-processing and inference (the time a line controller waits for the decision)
    category_id: int | None = None  # the category the model predicts from the image (None: no such output)
    category: str | None = None  # its name, from the IR's rt_info (the id as text when the IR has no names)


class OpenVINODetector:
    """Runs an exported anomalib IR on single images.

    Args:
        model_path: ``model.xml`` (with ``model.bin`` beside it) or ``model.onnx``.
        device: OpenVINO device. Defaults to ``"CPU"``.
        threads: CPU inference threads (``None``: OpenVINO's default, all cores).
        config: Further OpenVINO properties (they win over ``precision``).
        precision: Floating-point precision (:data:`PRECISIONS`, :func:`resolve_precision`): ``auto``
            runs the precision the IR records (``f32`` for the package's FP32 and INT8 exports).

    Raises:
        FileNotFoundError: if the model file (or the ``.bin`` of an ``.xml``) does not exist.
        ValueError: for ``precision="bf16"`` on a CPU without BF16, or an unknown precision.

    """

    def __init__(
        self,
        model_path: str | Path,
        device: str = "CPU",
        threads: int | None = None,
        config: dict[str, Any] | None = None,
        precision: str = "auto",
    ) -> None:
        import openvino as ov

        path = Path(model_path)
        if not path.is_file():
            msg = f"Model file not found: {path} (export one with `anomalib export --export_type openvino ...`)."
            raise FileNotFoundError(msg)
        if path.suffix == ".xml" and not path.with_suffix(".bin").is_file():
            msg = f"Model weights not found: {path.with_suffix('.bin')} (it must sit beside {path.name})."
            raise FileNotFoundError(msg)
        core = ov.Core()
        model = core.read_model(str(path))
        properties: dict[str, Any] = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": resolve_precision(model, precision, device),
            **(config or {}),
        }
        if threads:
            properties["INFERENCE_NUM_THREADS"] = int(threads)
        self.category_names: list[str] | None = read_category_names(model)
        self.compiled: ov.CompiledModel = core.compile_model(model, device, properties)
        self.precision: str = compiled_precision(self.compiled)
        """The floating-point precision OpenVINO compiled the model for (``f32``, ``bf16``)."""
        self.request = self.compiled.create_infer_request()
        shape = self.compiled.input(0).get_partial_shape()
        self.input_size: tuple[int, int] | None = (
            (shape[2].get_length(), shape[3].get_length()) if shape[2].is_static and shape[3].is_static else None
        )
        self.outputs = {next(iter(port.get_names())): port for port in self.compiled.outputs}

    def _input(self, image: np.ndarray) -> np.ndarray:
        if self.input_size is not None and image.shape[:2] != self.input_size:
            image = np.asarray(Image.fromarray(image).resize(self.input_size[::-1], Image.Resampling.BILINEAR))
        return (image.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]

    def predict(self, image: np.ndarray) -> Detection:
        """Score one ``(H, W, 3)`` uint8 RGB image; maps are resized back to ``(H, W)``."""
        start = time.perf_counter()
        results = self.request.infer({0: self._input(image)})
        latency_ms = 1000 * (time.perf_counter() - start)
        values = {name: results[port] for name, port in self.outputs.items()}
        size = (image.shape[1], image.shape[0])
        anomaly_map = _resize_map(_plane(values["anomaly_map"]), size)
        pred_mask = _resize_map(_plane(values["pred_mask"]), size) > 0.5 if "pred_mask" in values else None
        score = float(np.asarray(values["pred_score"]).reshape(-1)[0])
        label = bool(np.asarray(values["pred_label"]).reshape(-1)[0]) if "pred_label" in values else score > 0.5
        category_id = category = None
        if "pred_category" in values:
            category_id = int(np.asarray(values["pred_category"]).reshape(-1)[0])
            names = self.category_names
            category = names[category_id] if names and 0 <= category_id < len(names) else str(category_id)
        return Detection(score, label, anomaly_map, pred_mask, latency_ms, category_id, category)


def compiled_precision(compiled: ov.CompiledModel) -> str:
    """A compiled model's ``INFERENCE_PRECISION_HINT`` as OpenVINO's short type name (``f32``, ``bf16``, ``f16``)."""
    value = compiled.get_property("INFERENCE_PRECISION_HINT")
    return value.to_string() if hasattr(value, "to_string") else str(value)


def _plane(value: np.ndarray) -> np.ndarray:
    """The ``(H, W)`` plane of a batch-of-one output (``(1, 1, H, W)`` or ``(1, H, W)``) as float32."""
    array = np.asarray(value, dtype=np.float32)
    return array.reshape(array.shape[-2:])


def _resize_map(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D float map to ``size`` = ``(width, height)``."""
    if array.shape[::-1] == size:
        return array
    return np.asarray(Image.fromarray(array.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR))


def jet_palette() -> list[int]:
    """A 256-entry "jet" palette (dark blue - cyan - yellow - dark red) for PIL ``P`` images, as anomalib draws maps."""
    anchors = np.array(
        [
            (0, 0, 143),  # dark blue
            (0, 0, 255),
            (0, 127, 255),
            (0, 255, 255),  # cyan
            (127, 255, 127),
            (255, 255, 0),  # yellow
            (255, 127, 0),
            (255, 0, 0),
            (127, 0, 0),  # dark red
        ],
        dtype=np.float64,
    )
    # anomalib stretches the 9 anchors to 256 entries with bilinear interpolation (align_corners=False)
    # and truncates to bytes; the same here, without torch
    source = np.clip((np.arange(256) + 0.5) * len(anchors) / 256 - 0.5, 0, len(anchors) - 1)
    channels = [np.interp(source, np.arange(len(anchors)), anchors[:, channel]) for channel in range(3)]
    return np.floor(np.stack(channels, axis=1)).astype(np.uint8).reshape(-1).tolist()


_JET = jet_palette()


def heat_map(anomaly_map: np.ndarray) -> Image.Image:
    """The normalised anomaly map (0.5 = threshold) as an RGB "jet" image; values outside [0, 1] are clipped."""
    grey = Image.fromarray(np.round(255 * np.clip(anomaly_map, 0.0, 1.0)).astype(np.uint8), mode="L")
    heat = grey.convert("P")
    heat.putpalette(_JET)
    return heat.convert("RGB")


def overlay(image: np.ndarray, detection: Detection, alpha: float = 0.4) -> Image.Image:
    """The image with the heat map blended in, the predicted defect outlined in white, and label and score written.

    Needs only numpy and Pillow (no torch): the colours follow anomalib's ``visualize_anomaly_map``.
    """
    from PIL import ImageDraw, ImageFilter

    result = Image.blend(Image.fromarray(image).convert("RGB"), heat_map(detection.anomaly_map), alpha)
    if detection.pred_mask is not None and detection.pred_mask.any():
        mask = Image.fromarray(detection.pred_mask.astype(np.uint8) * 255, mode="L")
        outline = np.asarray(mask) > np.asarray(mask.filter(ImageFilter.MinFilter(3)))
        pixels = np.array(result)
        pixels[outline] = 255
        result = Image.fromarray(pixels)
    text = f"{'ANOMALOUS' if detection.label else 'normal'} {detection.score:.3f}"
    draw = ImageDraw.Draw(result)
    left, top, right, bottom = draw.textbbox((3, 3), text)
    draw.rectangle((left - 2, top - 2, right + 2, bottom + 2), fill=(200, 0, 0) if detection.label else (0, 0, 0))
    draw.text((3, 3), text, fill=(255, 255, 255))
    return result
