"""Inference precision of exported IRs: recorded in the IR, applied by our tools, BF16 only where the CPU has it.

Tiny OpenVINO graphs built in place (no training): the IR of an anomalib export has one image input
and the outputs ``pred_score``, ``pred_label``, ``anomaly_map``, ``pred_mask``; :func:`toy_ir` mimics it.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from anomalib_classaware.deploy import (
    OpenVINODetector,
    cpu_capabilities,
    cpu_supports_bf16,
    inference_config,
    recorded_precision,
    resolve_precision,
    set_inference_precision,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "deploy_openvino.py"
NO_BF16 = ["FP32", "INT8"]
WITH_BF16 = ["FP32", "INT8", "BF16"]


def toy_model(size: int = 8) -> object:
    """An anomalib-shaped graph: image in, a 1x1 convolution, map = channel mean, score = map max."""
    import openvino as ov
    from openvino import opset13 as ops

    image = ops.parameter([-1, 3, size, size], np.float32, name="input")
    weights = np.random.default_rng(0).normal(size=(3, 3, 1, 1)).astype(np.float32)
    features = ops.convolution(image, ops.constant(weights), [1, 1], [0, 0], [0, 0], [1, 1])
    anomaly_map = ops.sigmoid(ops.reduce_mean(features, ops.constant(np.array([1], np.int64)), keep_dims=True))
    score = ops.reduce_max(anomaly_map, ops.constant(np.array([1, 2, 3], np.int64)), keep_dims=False)
    half = ops.constant(np.float32(0.5))
    outputs = {
        "pred_score": score,
        "pred_label": ops.greater(score, half),
        "anomaly_map": anomaly_map,
        "pred_mask": ops.greater(anomaly_map, half),
    }
    for name, node in outputs.items():
        node.output(0).get_tensor().set_names({name})
    return ov.Model([node.output(0) for node in outputs.values()], [image], "toy")


def toy_ir(folder: Path, precision: str | None = "f32") -> Path:
    import openvino as ov

    model = toy_model()
    if precision is not None:
        set_inference_precision(model, precision)
    path = folder / "model.xml"
    ov.save_model(model, path, compress_to_fp16=False)
    return path


def test_the_recorded_precision_survives_save_and_read(tmp_path: Path) -> None:
    import openvino as ov

    assert recorded_precision(ov.Core().read_model(toy_ir(tmp_path / "f32", "f32"))) == "f32"
    assert recorded_precision(ov.Core().read_model(toy_ir(tmp_path / "bf16", "bf16"))) == "bf16"
    assert recorded_precision(ov.Core().read_model(toy_ir(tmp_path / "none", None))) is None


def test_resolve_precision_defaults_to_f32_and_refuses_bf16_without_bf16(caplog: pytest.LogCaptureFixture) -> None:
    f32, bf16, plain = toy_model(), toy_model(), toy_model()
    set_inference_precision(f32, "f32")
    set_inference_precision(bf16, "bf16")
    assert resolve_precision(f32, capabilities=WITH_BF16) == "f32"  # recorded f32 wins over the CPU's bf16 default
    assert resolve_precision(plain, capabilities=WITH_BF16) == "f32"  # nothing recorded: f32
    assert resolve_precision(bf16, capabilities=WITH_BF16) == "bf16"
    assert resolve_precision(f32, "bf16", capabilities=WITH_BF16) == "bf16"  # asked for
    assert resolve_precision(bf16, "bf16", device="GPU") == "bf16"  # only the CPU's capabilities are checked
    with caplog.at_level(logging.WARNING):
        assert resolve_precision(bf16, capabilities=NO_BF16) == "f32"
    assert "records bf16, but this CPU has no BF16 (OpenVINO capabilities: FP32, INT8): running it in f32" in (
        caplog.text
    )
    with pytest.raises(ValueError, match=r"bf16 inference needs a CPU with BF16 .* capabilities as FP32, INT8"):
        resolve_precision(f32, "bf16", capabilities=NO_BF16)
    with pytest.raises(ValueError, match="Unknown inference precision 'fp8'"):
        resolve_precision(f32, "fp8", capabilities=WITH_BF16)


def test_detector_and_inference_config_compile_the_recorded_precision(tmp_path: Path) -> None:
    import openvino as ov

    from anomalib_classaware.deploy.inspection import compiled_precision

    path = toy_ir(tmp_path)
    assert inference_config(path) == {"INFERENCE_PRECISION_HINT": "f32"}
    compiled = ov.Core().compile_model(str(path), "CPU", inference_config(path))
    assert compiled_precision(compiled) == "f32"
    detector = OpenVINODetector(path, threads=1)
    assert detector.precision == "f32"
    detection = detector.predict(np.full((8, 8, 3), 128, np.uint8))
    assert 0.0 < detection.score < 1.0 and detection.anomaly_map.shape == (8, 8)


def bf16_hint_takes_effect() -> bool:
    """Whether this CPU compiles an explicit bf16 hint as bf16 (native BF16, or AVX-512 emulating it)."""
    import openvino as ov

    from anomalib_classaware.deploy.inspection import compiled_precision

    compiled = ov.Core().compile_model(toy_model(), "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
    return compiled_precision(compiled) == "bf16"


def test_openvino_does_not_apply_the_recorded_precision_by_itself(tmp_path: Path) -> None:
    """Why our tools pass the recorded precision: OpenVINO's CPU plugin ignores it in ``runtime_options``.

    The IR records the precision that differs from what this CPU compiles by default (a CPU with BF16
    defaults to bf16: the IR records f32; an AVX-512 CPU defaults to f32 and emulates a bf16 hint: the
    IR records bf16). Compiled without a config, the default wins. If this fails, OpenVINO applies the
    recorded precision now, and the README's advice to pass ``inference_config`` can be relaxed.
    """
    import openvino as ov

    from anomalib_classaware.deploy.inspection import compiled_precision

    default = compiled_precision(ov.Core().compile_model(toy_model(), "CPU"))
    if default == "f32" and not bf16_hint_takes_effect():
        pytest.skip("this CPU compiles bf16 hints as f32: a recorded bf16 cannot be told from the default")
    recorded = "f32" if default == "bf16" else "bf16"
    compiled = ov.Core().compile_model(str(toy_ir(tmp_path, recorded)), "CPU")
    assert compiled_precision(compiled) == default != recorded


@pytest.mark.skipif(cpu_supports_bf16(), reason="this CPU has BF16: the refusal is for CPUs without it")
def test_bf16_is_refused_on_a_cpu_without_bf16(tmp_path: Path) -> None:
    path = toy_ir(tmp_path)
    with pytest.raises(ValueError, match="bf16 inference needs a CPU with BF16"):
        OpenVINODetector(path, precision="bf16")
    command = [sys.executable, str(EXAMPLE), str(path), str(tmp_path), "--precision", "bf16"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path)
    assert result.returncode == 2
    assert "bf16 inference needs a CPU with BF16" in result.stderr
    assert ", ".join(cpu_capabilities()) in result.stderr


def test_deploy_example_prints_the_precision_it_runs(tmp_path: Path) -> None:
    from PIL import Image

    path = toy_ir(tmp_path / "ir")
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(tmp_path / "a.png")
    command = [sys.executable, str(EXAMPLE), str(path), str(tmp_path / "a.png"), "--output", str(tmp_path / "out")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Inference precision: f32 (CPU)" in result.stdout
