"""``examples/deploy_openvino.py``: an exported IR scores a folder of demo images, skipping unreadable files."""

from __future__ import annotations

import csv
import importlib.util
import io
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from deploy_helpers import MODEL_NAMES, SCORE_TOLERANCE, Deployment, Deployments
from PIL import Image

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "deploy_openvino.py"
MODEL = "ReContrast" if "ReContrast" in MODEL_NAMES else MODEL_NAMES[0]
SIZE = 64


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_openvino_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as handle:
        return {row["path"]: row for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def deployment(deployments: Deployments) -> Deployment:
    """The parity tests' export of one model at 64 px (shared: built once per session)."""
    return deployments.get(MODEL, SIZE)


@pytest.fixture(scope="module")
def line_folder(deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Demo images in nested folders, plus a truncated PNG, a text file named .jpg and a plain text file."""
    folder = tmp_path_factory.mktemp("line")
    common = Path(*deployment.paths[0].parts[:-4])  # <root>/<category>/test/<kind>/<file>
    for path in deployment.paths:
        target = folder / path.relative_to(common)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    (folder / "brick" / "corrupt.png").write_bytes(deployment.paths[0].read_bytes()[:120])
    (folder / "coffee" / "fake.jpg").write_text("not an image")
    (folder / "notes.txt").write_text("no image extension: not scanned")
    return folder


def test_folder_run_writes_csv_and_overlays_and_skips_unreadable_files(
    deployment: Deployment, line_folder: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    command = [sys.executable, str(EXAMPLE), str(deployment.openvino_path), str(line_folder)]
    result = subprocess.run(
        [*command, "--output", str(output), "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stderr  # some files were skipped
    rows = read_csv(output / "predictions.csv")
    images = sorted(line_folder.rglob("0*.png"))
    assert len(images) == len(deployment.paths)
    errors = {Path(path).name for path, row in rows.items() if row["error"]}
    assert errors == {"corrupt.png", "fake.jpg"}
    assert not any(path.endswith("notes.txt") for path in rows)  # folders are scanned for image extensions only
    assert all(rows[path]["score"] == "" for path in rows if rows[path]["error"])

    expected = deployment.openvino_predictions  # same images, same IR: the example's scores are the parity scores
    for index, original in enumerate(deployment.paths):
        copy = line_folder / Path(*original.parts[-4:])
        row = rows[str(copy)]
        assert row["error"] == ""
        score = float(row["score"])
        assert abs(score - expected.score[index]) <= SCORE_TOLERANCE
        assert row["label"] == ("anomalous" if expected.label[index] else "normal")
        assert row["label"] == ("anomalous" if score > 0.5 else "normal")
        assert float(row["latency_ms"]) > 0
        overlay = output / "overlays" / copy.relative_to(line_folder)
        with Image.open(overlay) as image:
            assert image.size == (SIZE, SIZE) and image.mode == "RGB"
            drawn = np.asarray(image, dtype=np.int16)
        assert np.abs(drawn - np.asarray(Image.open(copy).convert("RGB"), dtype=np.int16)).mean() > 5  # heat map
    assert f"Scored {len(images)} image(s)" in result.stdout
    assert "images/s" in result.stdout
    assert "Skipped 2 unreadable file(s)" in result.stdout
    assert "corrupt.png" in result.stdout and "fake.jpg" in result.stdout


def test_paths_from_stdin_report_missing_and_non_image_files(
    deployment: Deployment, line_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    good = sorted(line_folder.rglob("0*.png"))[0]
    lines = f"{good}\n\n# a comment\n{line_folder / 'notes.txt'}\n{tmp_path / 'missing.png'}\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    output = tmp_path / "stdin"
    status = load_example().main([str(deployment.openvino_path), "-", "--output", str(output), "--no-overlays"])
    assert status == 1
    rows = read_csv(output / "predictions.csv")
    assert list(rows) == [str(good), str(line_folder / "notes.txt"), str(tmp_path / "missing.png")]
    assert rows[str(good)]["error"] == "" and rows[str(good)]["label"] in {"anomalous", "normal"}
    assert "cannot read image" in rows[str(line_folder / "notes.txt")]["error"]
    assert "No such file" in rows[str(tmp_path / "missing.png")]["error"]
    assert not (output / "overlays").exists()
    assert "Skipped 2 unreadable file(s)" in capsys.readouterr().out


def test_an_earlier_run_is_not_overwritten_without_overwrite(
    deployment: Deployment, line_folder: Path, tmp_path: Path, capsys
) -> None:
    output = tmp_path / "out"
    output.mkdir()
    (output / "predictions.csv").write_text("an earlier run")
    image = str(sorted(line_folder.rglob("0*.png"))[0])
    arguments = [str(deployment.openvino_path), image, "--output", str(output), "--no-overlays"]
    with pytest.raises(SystemExit) as exit_info:
        load_example().main(arguments)
    assert exit_info.value.code == 2
    assert "predictions.csv exists (an earlier run)" in capsys.readouterr().err
    assert (output / "predictions.csv").read_text() == "an earlier run"
    assert load_example().main([*arguments, "--overwrite"]) == 0
    assert list(read_csv(output / "predictions.csv")) == [image]


def test_missing_model_is_a_clear_usage_error(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        load_example().main([str(tmp_path / "nope.xml"), str(tmp_path)])
    assert exit_info.value.code == 2
    assert f"model file not found: {tmp_path / 'nope.xml'}" in capsys.readouterr().err


def test_xml_without_weights_is_a_clear_usage_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "model.xml").write_text("<net/>")
    with pytest.raises(SystemExit) as exit_info:
        load_example().main([str(tmp_path / "model.xml"), str(tmp_path)])
    assert exit_info.value.code == 2
    assert "model.bin" in capsys.readouterr().err


def test_help_describes_the_inputs_and_outputs(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        load_example().main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for expected in ("stdin", "--output", "--threads", "--no-overlays", "--overwrite", "Exit status"):
        assert expected in text
