"""Property tests of the folder parser on random MVTec-layout trees (hypothesis).

Names are random text with spaces, unicode and dots; files are empty (the parser reads names only).
Every image appears exactly once with its split, label, category and id; every mask is paired with
its image; stray entries are reported, never parsed; a missing mask or an unknown category is an
error naming it.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anomalib_classaware.data.samples import (
    IMAGE_SUFFIXES,
    CategoryIndex,
    make_multiclass_samples,
    resolve_categories,
)

FAST = settings(
    max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

NAME = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\"),
    min_size=1,
    max_size=10,
).filter(lambda name: not name.startswith(".") and not name.endswith("_mask") and len(name.encode()) < 60)
SUFFIX = st.sampled_from([*sorted(IMAGE_SUFFIXES), ".PNG", ".Jpg"])


@st.composite
def trees(draw: st.DrawFn) -> dict:
    """A dataset description: categories -> train names, test good names, defects -> names; masks or not."""
    masks = draw(st.booleans())
    categories = draw(st.lists(NAME, min_size=1, max_size=3, unique_by=str.casefold))
    tree: dict = {"masks": masks, "categories": {}}
    for category in categories:
        stems = st.lists(NAME, min_size=1, max_size=3, unique_by=str.casefold)
        defects = draw(st.dictionaries(NAME.filter(lambda name: name != "good"), stems, max_size=2, dict_class=dict))
        tree["categories"][category] = {
            "train": [name + draw(SUFFIX) for name in draw(stems)],
            "good": [name + draw(SUFFIX) for name in draw(st.lists(NAME, max_size=2, unique_by=str.casefold))],
            "defects": {defect: [name + draw(SUFFIX) for name in names] for defect, names in defects.items()},
            "stray": draw(st.lists(NAME.map(lambda name: name + ".txt"), max_size=1)),
        }
    return tree


def _write(root: Path, tree: dict) -> tuple[dict[str, tuple[str, str, str, str]], list[Path]]:
    """Write the tree; return ``{image path: (split, label, category, mask path)}`` and the stray paths."""
    expected: dict[str, tuple[str, str, str, str]] = {}
    stray: list[Path] = []

    def touch(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()

    for category, parts in tree["categories"].items():
        folders = [("train", "good", parts["train"]), ("test", "good", parts["good"])]
        folders += [("test", defect, names) for defect, names in parts["defects"].items()]
        for split, label, names in folders:
            for name in names:
                image = root / category / split / label / name
                touch(image)
                mask = ""
                if split == "test" and label != "good" and tree["masks"]:
                    mask_path = root / category / "ground_truth" / label / f"{Path(name).stem}_mask.png"
                    touch(mask_path)
                    mask = str(mask_path)
                expected[str(image)] = (split, label, category, mask)
        for name in parts["stray"]:
            touch(root / category / "train" / "good" / name)
            stray.append(root / category / "train" / "good" / name)
    return expected, stray


@FAST
@given(tree=trees())
def test_every_image_is_parsed_once_with_its_split_label_category_and_mask(tree: dict, caplog) -> None:
    root = Path(tempfile.mkdtemp(prefix="parser_property_"))
    try:
        expected, stray = _write(root, tree)
        names = resolve_categories(root, None)
        assert sorted(names) == sorted(tree["categories"])
        index = CategoryIndex(names)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="anomalib_classaware"):
            samples = make_multiclass_samples(root, names, index)
        assert sorted(samples.image_path) == sorted(expected)
        for row in samples.itertuples():
            split, label, category, mask = expected[row.image_path]
            assert (row.split, row.label, row.category, row.mask_path) == (split, label, category, mask)
            assert row.category_id == index.id_of(category) == sorted(names).index(category)
            assert row.label_index == (0 if label == "good" else 1)
        has_defects = any(parts["defects"] for parts in tree["categories"].values())
        assert samples.attrs["task"] == ("segmentation" if tree["masks"] and has_defects else "classification")
        warnings = [record.getMessage() for record in caplog.records if "Ignoring" in record.getMessage()]
        if stray:
            assert len(warnings) == 1
            assert all(str(path) in warnings[0] for path in stray)
        else:
            assert not warnings
    finally:
        shutil.rmtree(root, ignore_errors=True)


@FAST
@given(tree=trees(), data=st.data())
def test_a_missing_mask_is_an_error_naming_its_image(tree: dict, data: st.DataObject) -> None:
    root = Path(tempfile.mkdtemp(prefix="parser_property_"))
    try:
        expected, _ = _write(root, tree)
        with_masks = sorted(path for path, (*_, mask) in expected.items() if mask)
        if not with_masks:
            return
        image = data.draw(st.sampled_from(with_masks))
        Path(expected[image][3]).unlink()
        names = resolve_categories(root, None)
        with pytest.raises(FileNotFoundError) as error:
            make_multiclass_samples(root, names, CategoryIndex(names))
        assert image in str(error.value) or "defective image(s) have no mask" in str(error.value)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@FAST
@given(known=st.lists(NAME, min_size=1, max_size=3, unique=True), unknown=NAME)
def test_unknown_categories_are_named_with_the_valid_ones(known: list[str], unknown: str) -> None:
    if unknown in known:
        return
    with pytest.raises(ValueError, match="Unknown category") as error:
        resolve_categories(Path("/nonexistent"), [*known, unknown], valid=known)
    assert repr([unknown]) in str(error.value)
    assert repr(known) in str(error.value)
