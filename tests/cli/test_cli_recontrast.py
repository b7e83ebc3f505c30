"""ReContrast through the real ``anomalib`` CLI: train, then test, predict and export from the checkpoint."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

_BESIDE = Path(sys.executable).with_name("anomalib")
ANOMALIB = str(_BESIDE) if _BESIDE.is_file() else shutil.which("anomalib")
MODEL_ARGS = [
    *("--model", "ReContrast", "--model.backbone", "resnet18", "--model.pre_trained", "false"),
    *("--model.input_size", "[64, 64]"),
]


def _anomalib(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    assert ANOMALIB is not None, "the anomalib console script is not installed"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    result = subprocess.run(
        [ANOMALIB, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=900, check=False
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Train ReContrast for 3 steps on two demo categories; return the working folder."""
    work = tmp_path_factory.mktemp("recontrast_cli")
    result = _anomalib(
        [
            "train",
            *MODEL_ARGS,
            *("--data", "MultiClassDemo", "--data.root", str(work / "demo" / "MultiClassDemo")),
            *("--data.image_size", "64", "--data.num_train", "6", "--data.num_test_good", "3"),
            *("--data.num_test_defective", "3", "--data.num_workers", "0", "--data.categories", "[brick, coffee]"),
            *("--trainer.max_steps", "3"),
        ],
        work,
    )
    assert "coffee/image_AUROC" in result.stdout + result.stderr
    return work


def _run_dir(work: Path) -> Path:
    return work / "results" / "ReContrast" / "MultiClassDemo" / "unified" / "v0"


def test_test_and_predict_from_checkpoint_in_new_processes(trained_run: Path) -> None:
    run_dir = _run_dir(trained_run)
    checkpoint = run_dir / "weights" / "lightning" / "model.ckpt"
    assert checkpoint.is_file()
    tested = _anomalib(["test", "--config", str(run_dir / "config.yaml"), "--ckpt_path", str(checkpoint)], trained_run)
    output = tested.stdout + tested.stderr
    assert "brick/image_AUROC" in output
    assert "mean/pixel_AUPRO" in output

    images = trained_run / "to_predict"
    images.mkdir()
    demo = trained_run / "demo" / "MultiClassDemo"
    defective = next(path for path in sorted((demo / "coffee" / "test").glob("*/*.png")) if path.parent.name != "good")
    shutil.copy(demo / "brick" / "test" / "good" / "000.png", images / "brick.png")
    shutil.copy(defective, images / "coffee.png")
    _anomalib(["predict", *MODEL_ARGS, "--ckpt_path", str(checkpoint), "--data", str(images)], trained_run)
    predicted = sorted(path.name for path in (trained_run / "results").rglob("*.png") if "to_predict" in path.parts)
    assert predicted == ["brick.png", "coffee.png"]


@pytest.mark.slow
def test_openvino_export_from_checkpoint(trained_run: Path) -> None:
    checkpoint = _run_dir(trained_run) / "weights" / "lightning" / "model.ckpt"
    _anomalib(
        [
            "export",
            *MODEL_ARGS,
            "--ckpt_path",
            str(checkpoint),
            "--export_type",
            "openvino",
            "--input_size",
            "[64, 64]",
        ],
        trained_run,
    )
    assert (trained_run / "results" / "weights" / "openvino" / "model.xml").is_file()
