"""Every model of the package through the real ``anomalib`` CLI, each step in a new process.

Train for 3 steps on two demo categories, then ``anomalib test`` with the run's saved config and
``anomalib predict`` on two images from the checkpoint; ``anomalib export`` to OpenVINO is slow-marked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

_BESIDE = Path(sys.executable).with_name("anomalib")
ANOMALIB = str(_BESIDE) if _BESIDE.is_file() else shutil.which("anomalib")
TINY = ("--model.backbone", "resnet18", "--model.pre_trained", "false", "--model.input_size", "[64, 64]")
# model name -> extra CLI arguments that keep it tiny (a model missing here runs with TINY only)
MODEL_ARGS: dict[str, tuple[str, ...]] = {
    "ReContrast": (),
    "ClassAwareRecon": ("--model.class_labels", "pseudo", "--model.num_pseudo_classes", "2"),
    "Rlr": ("--model.hidden_dims", "[32, 64]", "--model.num_layers", "1"),
    "MintAd": (
        *("--model.neighbour_window", "3", "--model.hidden_dim", "32", "--model.num_heads", "4"),
        *("--model.feedforward_dim", "64", "--model.num_encoder_layers", "1", "--model.num_decoder_layers", "1"),
        *("--model.inr_hidden_dim", "32", "--model.embedding_dim", "8"),
    ),
}


def _model_names() -> list[str]:
    import anomalib_classaware.models

    return list(anomalib_classaware.models.__all__)


def _model_args(name: str) -> list[str]:
    return ["--model", name, *TINY, *MODEL_ARGS.get(name, ())]


def _anomalib(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    assert ANOMALIB is not None, "the anomalib console script is not installed"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    result = subprocess.run(
        [ANOMALIB, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=900, check=False
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


@pytest.fixture(scope="module", params=_model_names())
def trained_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """Train the model for 3 steps on two demo categories; return its name and the working folder."""
    name = request.param
    work = tmp_path_factory.mktemp(f"{name}_cli")
    result = _anomalib(
        [
            "train",
            *_model_args(name),
            *("--data", "MultiClassDemo", "--data.root", str(work / "demo" / "MultiClassDemo")),
            *("--data.image_size", "64", "--data.num_train", "6", "--data.num_test_good", "3"),
            *("--data.num_test_defective", "3", "--data.num_workers", "0", "--data.categories", "[brick, coffee]"),
            *("--trainer.max_steps", "3"),
        ],
        work,
    )
    assert "coffee/image_AUROC" in result.stdout + result.stderr
    return name, work


def _checkpoint(name: str, work: Path) -> Path:
    return work / "results" / name / "MultiClassDemo" / "unified" / "v0" / "weights" / "lightning" / "model.ckpt"


def test_test_and_predict_from_checkpoint_in_new_processes(trained_run: tuple[str, Path]) -> None:
    name, work = trained_run
    checkpoint = _checkpoint(name, work)
    assert checkpoint.is_file()
    config = checkpoint.parents[2] / "config.yaml"
    tested = _anomalib(["test", "--config", str(config), "--ckpt_path", str(checkpoint)], work)
    output = tested.stdout + tested.stderr
    assert "brick/image_AUROC" in output
    assert "mean/pixel_AUPRO" in output

    images = work / "to_predict"
    images.mkdir()
    demo = work / "demo" / "MultiClassDemo"
    defective = next(path for path in sorted((demo / "coffee" / "test").glob("*/*.png")) if path.parent.name != "good")
    shutil.copy(demo / "brick" / "test" / "good" / "000.png", images / "brick.png")
    shutil.copy(defective, images / "coffee.png")
    _anomalib(["predict", *_model_args(name), "--ckpt_path", str(checkpoint), "--data", str(images)], work)
    predicted = sorted(path.name for path in (work / "results").rglob("*.png") if "to_predict" in path.parts)
    assert predicted == ["brick.png", "coffee.png"]


@pytest.mark.slow
def test_openvino_export_from_checkpoint(trained_run: tuple[str, Path]) -> None:
    """``anomalib export`` to OpenVINO FP32, then INT8_PTQ calibrated on the demo's normal training images."""
    import openvino as ov

    name, work = trained_run
    export = ["export", *_model_args(name), "--ckpt_path", str(_checkpoint(name, work))]
    export += ["--export_type", "openvino", "--input_size", "[64, 64]"]
    _anomalib([*export, "--export_root", str(work / "fp32")], work)
    assert (work / "fp32" / "weights" / "openvino" / "model.xml").is_file()
    data = ["--data", "MultiClassDemo", "--data.root", str(work / "demo" / "MultiClassDemo"), "--data.image_size", "64"]
    data += ["--data.num_train", "6", "--data.num_test_good", "3", "--data.num_test_defective", "3"]
    data += ["--data.num_workers", "0", "--data.categories", "[brick, coffee]"]
    _anomalib([*export, "--export_root", str(work / "int8"), "--compression_type", "INT8_PTQ", *data], work)
    quantized = ov.Core().read_model(work / "int8" / "weights" / "openvino" / "model.xml")
    assert any(op.get_type_name() == "FakeQuantize" for op in quantized.get_ops())


@pytest.mark.slow
def test_mint_ad_true_label_conditioning_from_the_cli(tmp_path: Path) -> None:
    """The ablation that conditions MintAd on the true category (validation/test only) runs through the CLI."""
    if "MintAd" not in _model_names():
        pytest.skip("MintAd is not registered")
    result = _anomalib(
        [
            "train",
            *_model_args("MintAd"),
            *("--model.class_conditioning", "true_label"),
            *("--data", "MultiClassDemo", "--data.root", str(tmp_path / "demo"), "--data.image_size", "64"),
            *("--data.num_train", "4", "--data.num_test_good", "2", "--data.num_test_defective", "2"),
            *("--data.num_workers", "0", "--data.categories", "[brick, coffee]", "--trainer.max_steps", "2"),
        ],
        tmp_path,
    )
    output = result.stdout + result.stderr
    assert "test_class_accuracy" in output
    assert "coffee/image_AUROC" in output
