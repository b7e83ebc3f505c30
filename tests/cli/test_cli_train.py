"""The real ``anomalib`` console script with our short names: unified training on the demo data."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# the console script of the environment running the tests (also when it is not activated)
_BESIDE = Path(sys.executable).with_name("anomalib")
ANOMALIB = str(_BESIDE) if _BESIDE.is_file() else shutil.which("anomalib")

SMALL_RD_CONFIG = """
model:
  class_path: ReverseDistillation
  init_args:
    backbone: resnet18
    pre_trained: false
    pre_processor:
      class_path: anomalib.pre_processing.PreProcessor
      init_args:
        transform:
          class_path: torchvision.transforms.v2.Compose
          init_args:
            transforms:
              - class_path: torchvision.transforms.v2.Resize
                init_args: {size: [64, 64], antialias: true}
              - class_path: torchvision.transforms.v2.Normalize
                init_args: {mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}
data:
  class_path: MultiClassDemo
  init_args:
    image_size: 64
    num_train: 6
    num_test_good: 3
    num_test_defective: 3
    num_workers: 0
trainer:
  max_epochs: 1
"""


def _anomalib(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    assert ANOMALIB is not None, "the anomalib console script is not installed"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.run([ANOMALIB, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=600, check=False)


def test_unified_reverse_distillation_on_demo_reports_per_category_metrics(tmp_path: Path) -> None:
    config = tmp_path / "rd.yaml"
    config.write_text(SMALL_RD_CONFIG)
    result = _anomalib(
        [
            "train",
            "--config",
            str(config),
            "--data.root",
            str(tmp_path / "demo" / "MultiClassDemo"),
            "--data.categories",
            "[brick, coffee]",
        ],
        tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    for name in ("brick/image_AUROC", "coffee/pixel_AUPRO", "mean/image_AUROC", "mean/pixel_AUROC"):
        assert name in output
    run_dir = tmp_path / "results" / "ReverseDistillation" / "MultiClassDemo" / "unified" / "v0"
    with (run_dir / "per_category_metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["category"] for row in rows] == ["brick", "coffee", "mean"]
    mean = sum(float(row["image_AUROC"]) for row in rows[:2]) / 2
    assert float(rows[2]["image_AUROC"]) == pytest.approx(mean, abs=1e-5)
    # The visualizer keeps each category's images apart (same file names in both categories).
    for category in ("brick", "coffee"):
        assert (run_dir / "images" / category / "test" / "good" / "000.png").is_file()


def test_unknown_category_from_the_cli_lists_valid_ones(tmp_path: Path) -> None:
    result = _anomalib(
        [
            *("train", "--model", "ReverseDistillation", "--model.pre_trained", "false"),
            *("--data", "MultiClassDemo", "--data.categories", "[brick, bricks]"),
        ],
        tmp_path,
    )
    assert result.returncode != 0
    assert "Unknown category ['bricks']" in result.stderr
    assert "'brick'" in result.stderr
