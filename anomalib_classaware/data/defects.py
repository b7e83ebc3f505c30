"""Synthetic surface defects with exact ground-truth masks.

Every defect function takes an ``HxWx3`` ``uint8`` image and a :class:`numpy.random.Generator` and returns
``(defective_image, mask)`` where ``mask`` is a boolean ``HxW`` array that is *exact*:

* outside the mask the returned image is bit-for-bit identical to the input;
* inside the mask every pixel differs from the input by at least :data:`CHANGE_THRESHOLD` grey levels
  (maximum over the channels);
* the mask is never empty.

Region defects (foreign texture, stain, cut-out, blur) cover roughly 1%-8% of the image area by default;
scratches are thin curves, so they cover less. All randomness comes from the given generator, so the same
generator state gives the same defect.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
import torch
from anomalib.data.utils.generators.perlin import generate_perlin_noise
from PIL import Image
from scipy import ndimage
from skimage import data as skdata
from skimage import draw, morphology

CHANGE_THRESHOLD = 10
"""Minimum change (grey levels, max over channels) for a pixel to count as defective."""

DEFAULT_AREA_RANGE = (0.01, 0.08)
"""Default area of region defects, as a fraction of the image area."""

DEFECT_TYPES = ("foreign_texture", "scratch", "stain", "cutout", "blur")
"""Names of the defect types, also used as folder names in the MVTec layout."""

FOREIGN_SOURCE_PHOTOS = ("immunohistochemistry", "camera", "moon", "hubble_deep_field")
"""``skimage.data`` photos used as foreign textures when no other source is given."""

_MAX_ATTEMPTS = 30

Proposal = tuple[np.ndarray, np.ndarray]  # (candidate image float HxWx3, region bool HxW)


def _check_image(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"Expected an HxWx3 uint8 image, got shape {image.shape} and dtype {image.dtype}.")
    if min(image.shape[:2]) < 16:
        raise ValueError(f"Image too small for a defect: {image.shape[:2]} (need at least 16x16).")


def _is_grey(image: np.ndarray) -> bool:
    return bool(np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2]))


def _finalize(image: np.ndarray, candidate: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Paste ``candidate`` into ``image`` exactly where it changes a pixel of ``region`` noticeably."""
    candidate = np.clip(np.rint(candidate), 0, 255).astype(np.uint8)
    change = np.abs(candidate.astype(np.int16) - image.astype(np.int16)).max(axis=-1)
    mask = region & (change >= CHANGE_THRESHOLD)
    out = image.copy()
    out[mask] = candidate[mask]
    return out, mask


def _run_proposals(
    image: np.ndarray,
    rng: np.random.Generator,
    propose: Callable[[np.random.Generator], Proposal],
    name: str,
    min_coverage: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw proposals until one visibly changes ``min_coverage`` of its region; else keep the best non-empty one."""
    best: tuple[np.ndarray, np.ndarray] | None = None
    for _ in range(_MAX_ATTEMPTS):
        candidate, region = propose(rng)
        out, mask = _finalize(image, candidate, region)
        if best is None or mask.sum() > best[1].sum():
            best = (out, mask)
        if region.any() and mask.sum() >= min_coverage * region.sum():
            return out, mask
    if best is None or not best[1].any():
        raise ValueError(f"Could not place a visible '{name}' defect on this image (is it uniform?).")
    return best


def _sample_area(rng: np.random.Generator, shape: tuple[int, int], area_range: tuple[float, float]) -> float:
    low, high = area_range
    if not 0 < low <= high < 1:
        raise ValueError(f"area_range must satisfy 0 < low <= high < 1, got {area_range}.")
    return float(rng.uniform(low, high)) * shape[0] * shape[1]


def _box(rng: np.random.Generator, shape: tuple[int, int], side: int) -> tuple[int, int, int]:
    """Draw a random square box fully inside the image: ``(top, left, side)``."""
    side = int(np.clip(side, 8, min(shape)))
    top = int(rng.integers(0, shape[0] - side + 1))
    left = int(rng.integers(0, shape[1] - side + 1))
    return top, left, side


def _perlin(rng: np.random.Generator, side: int, scale: tuple[int, int]) -> np.ndarray:
    """Anomalib's Perlin noise on the CPU, seeded from ``rng`` without touching torch's global RNG state.

    The noise has at most 4 cells per side, so it is computed at up to 64 px and resized (bilinear) to ``side``.
    """
    seed = int(rng.integers(0, 2**31 - 1))
    low = min(side, 64)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # CPU only: leaves CUDA & co. untouched
        noise = generate_perlin_noise(low, low, scale=scale, device=torch.device("cpu")).numpy()
    if low != side:
        noise = np.asarray(Image.fromarray(noise.astype(np.float32)).resize((side, side), Image.Resampling.BILINEAR))
    return noise.astype(np.float64)


def _perlin_blob(rng: np.random.Generator, shape: tuple[int, int], area: float) -> np.ndarray:
    """Draw an irregular blob of about ``area`` pixels: Perlin noise under a disc window, cut at a quantile."""
    top, left, side = _box(rng, shape, int(np.sqrt(area / 0.45)))
    scale = (int(2 ** rng.integers(1, 3)), int(2 ** rng.integers(1, 3)))
    noise = _perlin(rng, side, scale)
    yy, xx = np.mgrid[-1 : 1 : side * 1j, -1 : 1 : side * 1j]
    window = 1.0 - (xx**2 + yy**2)
    inside = window > 0
    field = window + 0.7 * noise
    count = int(np.clip(round(area), 1, 0.9 * inside.sum()))  # keep the `count` highest values in the disc
    blob = inside & (field >= np.partition(field[inside], -count)[-count])
    region = np.zeros(shape, dtype=bool)
    region[top : top + side, left : left + side] = blob
    return region


def _ellipse_alpha(
    rng: np.random.Generator, shape: tuple[int, int], area: float, softness: float
) -> tuple[np.ndarray, np.ndarray]:
    """Soft alpha (1 inside, falling to 0 over ``softness``) of a wobbly rotated ellipse; also its core region."""
    aspect = float(rng.uniform(0.5, 1.0))
    # the visible stain reaches about halfway into the soft rim: give that radius the target area
    semi_a = np.sqrt(area / (np.pi * aspect)) / (1 + softness / 2)
    semi_b = semi_a * aspect
    semi_a, semi_b = min(semi_a, shape[0] / 2.5), min(semi_b, shape[0] / 2.5)
    margin = semi_a * (1 + softness) + 1
    cy = rng.uniform(margin, max(margin, shape[0] - margin))
    cx = rng.uniform(margin, max(margin, shape[1] - margin))
    theta = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    dy, dx = yy - cy, xx - cx
    u = (dx * np.cos(theta) + dy * np.sin(theta)) / semi_a
    v = (-dx * np.sin(theta) + dy * np.cos(theta)) / semi_b
    radius = np.sqrt(u**2 + v**2)
    angle = np.arctan2(v, u)
    wobble = 1.0 + sum(
        rng.uniform(0.03, 0.12) * np.sin(k * angle + rng.uniform(0, 2 * np.pi)) for k in rng.choice([2, 3, 4, 5], 2)
    )
    radius = radius / wobble
    alpha = np.clip((1.0 + softness - radius) / softness, 0.0, 1.0)
    return alpha, radius <= 1.0


@lru_cache(maxsize=1)
def _load_foreign_sources() -> tuple[np.ndarray, ...]:
    sources = []
    for name in FOREIGN_SOURCE_PHOTOS:
        photo = np.asarray(getattr(skdata, name)())
        if photo.ndim == 2:
            photo = np.repeat(photo[..., None], 3, axis=-1)
        sources.append(np.ascontiguousarray(photo[..., :3]).astype(np.uint8))
    return tuple(sources)


def _foreign_patch(rng: np.random.Generator, source: np.ndarray, side: int, grey: bool) -> np.ndarray:
    """Cut a random square patch of ``source``, resized to ``side`` pixels (grey if the target is grey)."""
    src_side = int(np.clip(side * rng.uniform(0.6, 1.6), 8, min(source.shape[:2])))
    top = int(rng.integers(0, source.shape[0] - src_side + 1))
    left = int(rng.integers(0, source.shape[1] - src_side + 1))
    patch = Image.fromarray(source[top : top + src_side, left : left + src_side])
    if grey:
        patch = patch.convert("L").convert("RGB")
    return np.asarray(patch.resize((side, side), Image.Resampling.BILINEAR), dtype=np.float64)


def perlin_foreign_texture(
    image: np.ndarray,
    rng: np.random.Generator,
    sources: Sequence[np.ndarray] | None = None,
    area_range: tuple[float, float] = DEFAULT_AREA_RANGE,
) -> tuple[np.ndarray, np.ndarray]:
    """Blend a patch of a different photograph into an irregular Perlin-noise blob.

    Args:
        image: ``HxWx3`` ``uint8`` image.
        rng: Source of randomness.
        sources: ``HxWx3`` ``uint8`` photos to take the foreign texture from (``None``: the
            :data:`FOREIGN_SOURCE_PHOTOS` of scikit-image). They should differ from the image's own photo.
        area_range: Blob area as a fraction of the image area.

    Returns:
        The defective image and its exact boolean mask.

    """
    _check_image(image)
    pool = list(sources) if sources else list(_load_foreign_sources())
    grey = _is_grey(image)
    base = image.astype(np.float64)

    def propose(rng: np.random.Generator) -> Proposal:
        region = _perlin_blob(rng, image.shape[:2], _sample_area(rng, image.shape[:2], area_range))
        rows, cols = np.nonzero(region)
        top, left = rows.min(), cols.min()
        side = max(rows.max() - top, cols.max() - left) + 1
        patch = _foreign_patch(rng, pool[int(rng.integers(len(pool)))], int(side), grey)
        foreign = np.zeros_like(base)
        h, w = min(side, image.shape[0] - top), min(side, image.shape[1] - left)
        foreign[top : top + h, left : left + w] = patch[:h, :w]
        # pull the foreign brightness halfway towards the local one so the defect is not a plain colour jump
        local_mean = base[region].mean(axis=0)
        foreign_mean = foreign[region].mean(axis=0)
        foreign += 0.5 * (local_mean - foreign_mean)
        opacity = rng.uniform(0.6, 1.0)
        candidate = base.copy()
        candidate[region] = opacity * foreign[region] + (1 - opacity) * base[region]
        return candidate, region

    return _run_proposals(image, rng, propose, "foreign_texture", min_coverage=0.6)


def scratch(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw a thin curved scratch (a quadratic Bézier curve) that is lighter or darker than its surroundings.

    Args:
        image: ``HxWx3`` ``uint8`` image.
        rng: Source of randomness.

    Returns:
        The defective image and its exact boolean mask.

    """
    _check_image(image)
    height, width = image.shape[:2]
    size = min(height, width)
    base = image.astype(np.float64)
    max_radius = max(1, size // 96)

    def propose(rng: np.random.Generator) -> Proposal:
        length = rng.uniform(0.3, 0.65) * size
        start = rng.uniform([0.1 * height, 0.1 * width], [0.9 * height, 0.9 * width])
        direction = rng.uniform(0, 2 * np.pi)
        end = start + length * np.array([np.sin(direction), np.cos(direction)])
        normal = np.array([np.cos(direction), -np.sin(direction)])
        control = (start + end) / 2 + normal * rng.uniform(-0.35, 0.35) * length
        t = np.linspace(0.0, 1.0, int(3 * length) + 2)[:, None]
        points = (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end
        rows = np.clip(np.rint(points[:, 0]).astype(int), 0, height - 1)
        cols = np.clip(np.rint(points[:, 1]).astype(int), 0, width - 1)
        region = np.zeros((height, width), dtype=bool)
        region[rows, cols] = True
        radius = int(rng.integers(1, max_radius + 1))
        region = ndimage.binary_dilation(region, structure=morphology.disk(radius))
        luminance = base[region].mean()
        level = rng.uniform(0, 50) if luminance > 110 else rng.uniform(205, 255)
        strength = rng.uniform(0.55, 0.9)
        candidate = base.copy()
        candidate[region] = (1 - strength) * base[region] + strength * level
        return candidate, region

    return _run_proposals(image, rng, propose, "scratch", min_coverage=0.9)


def stain(
    image: np.ndarray, rng: np.random.Generator, area_range: tuple[float, float] = DEFAULT_AREA_RANGE
) -> tuple[np.ndarray, np.ndarray]:
    """Overlay a soft-edged, semi-transparent coloured (or grey) stain shaped like a wobbly ellipse.

    The mask is where the stain visibly changes the image, i.e. its soft rim is cut where the change
    drops below :data:`CHANGE_THRESHOLD`.

    Args:
        image: ``HxWx3`` ``uint8`` image.
        rng: Source of randomness.
        area_range: Stain core area as a fraction of the image area.

    Returns:
        The defective image and its exact boolean mask.

    """
    _check_image(image)
    grey = _is_grey(image)
    base = image.astype(np.float64)
    palette = np.array([[95, 60, 30], [150, 75, 35], [60, 55, 50], [190, 170, 90], [40, 70, 40], [225, 220, 205]])

    def propose(rng: np.random.Generator) -> Proposal:
        alpha, core = _ellipse_alpha(rng, image.shape[:2], _sample_area(rng, image.shape[:2], area_range), 0.35)
        colour = palette[int(rng.integers(len(palette)))].astype(np.float64)
        colour = colour * rng.uniform(0.8, 1.2)
        if grey:
            colour = np.full(3, colour.mean())
        local = base[core].mean(axis=0) if core.any() else base.mean(axis=(0, 1))
        if np.abs(colour - local).max() < 60:  # too close to the surface: darken or lighten instead
            colour = local * 0.35 if local.mean() > 110 else np.minimum(local + 120, 255)
        opacity = rng.uniform(0.45, 0.8)
        weight = (opacity * alpha)[..., None]
        candidate = (1 - weight) * base + weight * colour
        return candidate, alpha > 0

    return _run_proposals(image, rng, propose, "stain", min_coverage=0.5)


def cutout(
    image: np.ndarray, rng: np.random.Generator, area_range: tuple[float, float] = DEFAULT_AREA_RANGE
) -> tuple[np.ndarray, np.ndarray]:
    """Replace a random polygon by a flat colour or by noise, like a hole or a missing piece.

    Args:
        image: ``HxWx3`` ``uint8`` image.
        rng: Source of randomness.
        area_range: Polygon area as a fraction of the image area (approximately).

    Returns:
        The defective image and its exact boolean mask.

    """
    _check_image(image)
    height, width = image.shape[:2]
    grey = _is_grey(image)
    base = image.astype(np.float64)

    def propose(rng: np.random.Generator) -> Proposal:
        area = _sample_area(rng, (height, width), area_range)
        num_vertices = int(rng.integers(4, 9))
        angles = np.sort(rng.uniform(0, 2 * np.pi, num_vertices))
        radii = rng.uniform(0.65, 1.0, num_vertices)
        # area of the polygon with unit mean radius, to scale it to the target area
        unit_area = 0.5 * abs(np.sum(radii * np.roll(radii, -1) * np.sin(np.roll(angles, -1) - angles)))
        scale = np.sqrt(area / max(unit_area, 0.2))
        extent = scale * radii.max() + 1
        cy = rng.uniform(min(extent, height / 2), max(height - extent, height / 2))
        cx = rng.uniform(min(extent, width / 2), max(width - extent, width / 2))
        rows, cols = draw.polygon(
            cy + scale * radii * np.sin(angles), cx + scale * radii * np.cos(angles), (height, width)
        )
        region = np.zeros((height, width), dtype=bool)
        region[rows, cols] = True
        candidate = base.copy()
        if rng.random() < 0.5:
            fill = rng.uniform(0, 255, 3)
            candidate[region] = fill.mean() if grey else fill
        else:
            channels = 1 if grey else 3
            noise = rng.uniform(0, 255, (int(region.sum()), channels))
            candidate[region] = noise
        return candidate, region

    return _run_proposals(image, rng, propose, "cutout", min_coverage=0.85)


def blur_patch(
    image: np.ndarray, rng: np.random.Generator, area_range: tuple[float, float] = DEFAULT_AREA_RANGE
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian-blur an irregular (Perlin-shaped) patch, like a smudge or an out-of-focus spot.

    Proposals that land on flat areas (where blurring changes little) are redrawn.

    Args:
        image: ``HxWx3`` ``uint8`` image.
        rng: Source of randomness.
        area_range: Patch area as a fraction of the image area.

    Returns:
        The defective image and its exact boolean mask.

    """
    _check_image(image)
    size = min(image.shape[:2])
    base = image.astype(np.float64)

    def propose(rng: np.random.Generator) -> Proposal:
        region = _perlin_blob(rng, image.shape[:2], _sample_area(rng, image.shape[:2], area_range))
        sigma = rng.uniform(2.5, 5.0) * size / 256
        rows, cols = np.nonzero(region)
        pad = int(np.ceil(4 * sigma))  # blur only the blob's neighbourhood
        top, left = max(rows.min() - pad, 0), max(cols.min() - pad, 0)
        bottom, right = rows.max() + pad + 1, cols.max() + pad + 1
        window = ndimage.gaussian_filter(base[top:bottom, left:right], sigma=(sigma, sigma, 0), mode="reflect")
        candidate = base.copy()
        local = region[top:bottom, left:right]
        candidate[top:bottom, left:right][local] = window[local]
        return candidate, region

    return _run_proposals(image, rng, propose, "blur", min_coverage=0.6)


DefectFunction = Callable[..., tuple[np.ndarray, np.ndarray]]

DEFECT_FUNCTIONS: dict[str, DefectFunction] = {
    "foreign_texture": perlin_foreign_texture,
    "scratch": scratch,
    "stain": stain,
    "cutout": cutout,
    "blur": blur_patch,
}
"""Defect type name -> function."""


def apply_defect(
    image: np.ndarray,
    rng: np.random.Generator,
    defect_type: str,
    foreign_sources: Sequence[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply the defect called ``defect_type`` (one of :data:`DEFECT_TYPES`).

    Args:
        image: ``HxWx3`` ``uint8`` image.
        rng: Source of randomness.
        defect_type: Name of the defect.
        foreign_sources: Photos for ``foreign_texture`` (ignored by the other types).

    Returns:
        The defective image and its exact boolean mask.

    """
    if defect_type not in DEFECT_FUNCTIONS:
        raise ValueError(f"Unknown defect type {defect_type!r}; valid types: {', '.join(DEFECT_TYPES)}.")
    if defect_type == "foreign_texture":
        return perlin_foreign_texture(image, rng, sources=foreign_sources)
    return DEFECT_FUNCTIONS[defect_type](image, rng)


def apply_random_defect(
    image: np.ndarray,
    rng: np.random.Generator,
    defect_types: Sequence[str] = DEFECT_TYPES,
    foreign_sources: Sequence[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Apply a defect of a type drawn uniformly from ``defect_types``.

    Args:
        image: ``HxWx3`` ``uint8`` image.
        rng: Source of randomness.
        defect_types: Candidate defect type names.
        foreign_sources: Photos for ``foreign_texture``.

    Returns:
        The defective image, its exact boolean mask and the name of the defect type.

    """
    if not defect_types:
        raise ValueError("defect_types must not be empty.")
    defect_type = str(defect_types[int(rng.integers(len(defect_types)))])
    out, mask = apply_defect(image, rng, defect_type, foreign_sources)
    return out, mask, defect_type
