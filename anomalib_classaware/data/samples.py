"""Parse several categories in MVTec AD layout into one samples table with category columns.

Layout of each category folder (MVTec AD, VisA's ``visa_pytorch``, or any custom data)::

    <root>/<category>/train/good/*.png
    <root>/<category>/test/good/*.png
    <root>/<category>/test/<defect_type>/<name>.png                (any number of defect types)
    <root>/<category>/ground_truth/<defect_type>/<name>_mask.png   (optional; or <name>.png)

Unlike anomalib's ``make_mvtec_ad_dataset``, masks are paired with images **by name**, so a
missing or extra mask is reported by file instead of shifting every later pairing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from anomalib.data.utils import LabelName

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
NORMAL_FOLDER = "good"
SAMPLE_COLUMNS = ["path", "split", "label", "image_path", "mask_path", "label_index", "category", "category_id"]


class CategoryIndex:
    """A stable mapping between category names and integer ids (ids follow sorted names).

    Sorting makes the ids independent of the order in which a user lists the categories, so
    a model trained with ``[cable, bottle]`` and a datamodule built with ``[bottle, cable]``
    agree on what ``category_id == 0`` means.
    """

    def __init__(self, names: Sequence[str]) -> None:
        duplicates = sorted({name for name in names if list(names).count(name) > 1})
        if duplicates:
            msg = f"Categories must be unique; listed more than once: {duplicates}."
            raise ValueError(msg)
        if not names:
            msg = "At least one category is needed."
            raise ValueError(msg)
        self.names: list[str] = sorted(names)
        self._ids = {name: index for index, name in enumerate(self.names)}

    def id_of(self, name: str) -> int:
        """Return the integer id of ``name``."""
        return self._ids[name]

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"CategoryIndex({self.names})"


def discover_categories(root: Path) -> list[str]:
    """Return every non-hidden sub-folder of ``root`` (sorted), or raise if there is none."""
    if not root.is_dir():
        msg = f"Dataset root {str(root)!r} does not exist or is not a folder. Pass an existing folder as `root`."
        raise FileNotFoundError(msg)
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        msg = f"Dataset root {str(root)!r} contains no category folders (expected <root>/<category>/train/good/...)."
        raise FileNotFoundError(msg)
    return names


def resolve_categories(root: Path, categories: Sequence[str] | None, valid: Sequence[str] | None = None) -> list[str]:
    """Check requested categories against ``valid`` (or the folders under ``root``) and return them.

    Raises:
        ValueError: naming the unknown categories and listing the valid ones.

    """
    if isinstance(categories, str):
        categories = [categories]
    available = list(valid) if valid is not None else discover_categories(root)
    if categories is None:
        return list(available)
    unknown = [name for name in categories if name not in available]
    if unknown:
        msg = f"Unknown categor{'y' if len(unknown) == 1 else 'ies'} {unknown} under {str(root)!r}. Valid: {available}."
        raise ValueError(msg)
    return list(categories)


def _image_files(folder: Path, ignored: list[str] | None = None) -> list[Path]:
    """Image files of ``folder`` (by suffix, hidden files skipped); other entries are appended to ``ignored``."""
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    images = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if ignored is not None:
        ignored.extend(str(p) + ("/" if p.is_dir() else "") for p in entries if p not in images)
    return images


def _other_entries(folder: Path, expected: Sequence[str] = ()) -> list[str]:
    """Non-hidden entries of ``folder`` that are files, or folders not named in ``expected``."""
    if not folder.is_dir():
        return []
    return [
        str(p) + ("/" if p.is_dir() else "")
        for p in sorted(folder.iterdir())
        if not p.name.startswith(".") and (p.is_file() or p.name not in expected)
    ]


def warn_ignored(ignored: Sequence[str]) -> None:
    """Log one warning listing the entries left out: files that are not images (by suffix), unexpected folders."""
    if ignored:
        logger.warning(
            "Ignoring %d entries that are not image files (suffixes %s) or are not part of the MVTec layout "
            "(train/good, test/<label>, ground_truth/<defect>):%s",
            len(ignored),
            " ".join(sorted(IMAGE_SUFFIXES)),
            "".join(f"\n  {path}" for path in ignored),
        )


def _mask_stem(mask: Path) -> str:
    return mask.stem.removesuffix("_mask")


def make_category_samples(
    category_root: Path, category: str, category_id: int, ignored: list[str] | None = None
) -> pd.DataFrame:
    """Parse one category folder in MVTec layout into anomalib's samples columns plus category columns.

    Entries of the image folders that are not image files are appended to ``ignored`` (if given).
    """
    if not (category_root / "train" / NORMAL_FOLDER).is_dir():
        msg = (
            f"Category folder {str(category_root)!r} has no 'train/{NORMAL_FOLDER}' sub-folder. Each category needs "
            f"MVTec layout: train/good, test/good, test/<defect>, optional ground_truth/<defect>/<name>_mask.png."
        )
        raise FileNotFoundError(msg)
    rows: list[dict] = []
    if ignored is not None:
        ignored.extend(_other_entries(category_root, ("train", "test", "ground_truth")))
    for split in ("train", "test"):
        split_root = category_root / split
        if not split_root.is_dir():
            continue
        if ignored is not None:
            ignored.extend(path for path in _other_entries(split_root) if not path.endswith("/"))
        for label_dir in sorted(p for p in split_root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if split == "train" and label_dir.name != NORMAL_FOLDER:
                msg = (
                    f"Training folder {str(label_dir)!r} is not '{NORMAL_FOLDER}': training images must be normal. "
                    f"Move defective images to test/<defect_type>/."
                )
                raise ValueError(msg)
            label_index = LabelName.NORMAL if label_dir.name == NORMAL_FOLDER else LabelName.ABNORMAL
            rows.extend(
                {
                    "path": str(category_root),
                    "split": split,
                    "label": label_dir.name,
                    "image_path": str(image),
                    "mask_path": "",
                    "label_index": int(label_index),
                    "category": category,
                    "category_id": category_id,
                }
                for image in _image_files(label_dir, ignored)
            )
    if not any(row["split"] == "train" for row in rows):
        msg = f"Category {category!r} has no training images in {str(category_root / 'train' / NORMAL_FOLDER)!r}."
        raise ValueError(msg)
    _attach_masks(rows, category_root / "ground_truth", ignored)
    return pd.DataFrame(rows, columns=SAMPLE_COLUMNS)


def _attach_masks(rows: list[dict], ground_truth: Path, ignored: list[str] | None = None) -> None:
    """Pair each defective test image with ``ground_truth/<defect>/<name>[_mask].<ext>`` by name."""
    if not ground_truth.is_dir():
        return  # classification-only category
    masks: dict[tuple[str, str], Path] = {}
    if ignored is not None:
        ignored.extend(path for path in _other_entries(ground_truth) if not path.endswith("/"))
    for defect_dir in sorted(p for p in ground_truth.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for mask in _image_files(defect_dir, ignored):
            key = (defect_dir.name, _mask_stem(mask))
            if key in masks:
                msg = (
                    f"Masks {str(masks[key])!r} and {str(mask)!r} both belong to image {key[1]!r} of "
                    f"test/{key[0]}; keep one mask per image (<name>_mask.<ext> or <name>.<ext>)."
                )
                raise ValueError(msg)
            masks[key] = mask
    abnormal = [row for row in rows if row["split"] == "test" and row["label_index"] == LabelName.ABNORMAL]
    missing = []
    for row in abnormal:
        mask = masks.pop((row["label"], Path(row["image_path"]).stem), None)
        if mask is None:
            missing.append(row["image_path"])
        else:
            row["mask_path"] = str(mask)
    if missing:
        msg = (
            f"{len(missing)} defective image(s) have no mask in {str(ground_truth)!r}, e.g. {missing[:5]}. "
            "Add ground_truth/<defect>/<name>_mask.png for each, or remove the ground_truth folder to evaluate "
            "this category without pixel metrics."
        )
        raise FileNotFoundError(msg)
    if masks:
        orphans = [str(path) for path in masks.values()]
        msg = f"{len(orphans)} mask(s) in {str(ground_truth)!r} match no test image, e.g. {orphans[:5]}."
        raise ValueError(msg)


def make_multiclass_samples(
    root: Path,
    categories: Sequence[str],
    index: CategoryIndex,
    split: str | None = None,
) -> pd.DataFrame:
    """Concatenate the samples of several categories; ``split`` selects ``"train"`` or ``"test"``.

    The task (``samples.attrs["task"]``) is segmentation when every defective image has a mask and
    classification when none has; a mix is an error naming the categories without masks. Entries
    that are not image files are left out with one warning listing them (hidden files silently).
    """
    ignored: list[str] = []
    frames = [make_category_samples(root / name, name, index.id_of(name), ignored) for name in categories]
    warn_ignored(ignored)
    samples = pd.concat(frames, ignore_index=True)
    abnormal = samples[(samples.split == "test") & (samples.label_index == LabelName.ABNORMAL)]
    with_masks = abnormal.groupby("category").mask_path.apply(lambda paths: bool((paths != "").all()))
    if with_masks.any() and not with_masks.all():
        msg = (
            f"Categories {sorted(with_masks[~with_masks].index)} have no ground_truth masks while "
            f"{sorted(with_masks[with_masks].index)} do. Evaluate them in separate runs, or add the masks."
        )
        raise ValueError(msg)
    samples.attrs["task"] = "segmentation" if len(with_masks) and with_masks.all() else "classification"
    if split is not None:
        samples = select_split(samples, split)
    return samples


def select_split(samples: pd.DataFrame, split: str) -> pd.DataFrame:
    """Rows of ``split`` (``"train"``/``"test"``), index reset, ``attrs`` (the task) kept."""
    selected = samples[samples.split == split].reset_index(drop=True)
    selected.attrs = dict(samples.attrs)
    return selected
