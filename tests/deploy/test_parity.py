"""Exported models score like the checkpoint: Engine.predict vs TorchInferencer vs OpenVINO FP32, every model.

Real demo photographs (two categories), models trained two steps by anomalib's Engine so that the
post-processor has a threshold and normalisation; two input sizes (a model built for each) to catch
shapes baked into the graph. Tolerances: score 1e-4, anomaly map 1e-3 (max abs), identical labels.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from deploy_helpers import (
    MAP_TOLERANCE,
    MODEL_NAMES,
    SCORE_TOLERANCE,
    SIZES,
    Deployments,
    Predictions,
    working_directory,
)

CASES = [pytest.param(name, size, id=f"{name}-{size}px") for name in MODEL_NAMES for size in SIZES]


def differences(expected: Predictions, got: Predictions) -> dict[str, float]:
    """Max |score diff|, max |map diff|, label and mask disagreements (mask pixels far from the threshold)."""
    far_from_threshold = np.abs(expected.anomaly_map - 0.5) > MAP_TOLERANCE
    return {
        "score": float(np.abs(expected.score - got.score).max()),
        "map": float(np.abs(expected.anomaly_map - got.anomaly_map).max()),
        "labels": int((expected.label != got.label).sum()),
        "mask_pixels": int(((expected.pred_mask != got.pred_mask) & far_from_threshold).sum()),
        "categories": int((expected.category != got.category).sum()),
    }


def assert_parity(expected: Predictions, got: Predictions, what: str) -> None:
    found = differences(expected, got)
    print(f"{what}: {found}")  # shown with -rA / -s: the numbers of the parity report
    assert expected.anomaly_map.shape == got.anomaly_map.shape
    assert np.isfinite(got.score).all() and np.isfinite(got.anomaly_map).all()
    assert found["score"] <= SCORE_TOLERANCE, f"{what}: scores differ by {found['score']:.2e}"
    assert found["map"] <= MAP_TOLERANCE, f"{what}: anomaly maps differ by {found['map']:.2e}"
    assert found["labels"] == 0, f"{what}: labels differ: {expected.label} vs {got.label}"
    assert found["mask_pixels"] == 0, f"{what}: {found['mask_pixels']} mask pixels differ"
    assert found["categories"] == 0, f"{what}: predicted categories differ: {expected.category} vs {got.category}"


@pytest.mark.parametrize(("name", "size"), CASES)
def test_torch_inferencer_matches_engine_predict(deployments: Deployments, name: str, size: int) -> None:
    deployment = deployments.get(name, size)
    assert_parity(deployment.checkpoint_predictions, deployment.torch_predictions, f"{name} {size}px torch")


@pytest.mark.parametrize(("name", "size"), CASES)
def test_openvino_fp32_matches_engine_predict(deployments: Deployments, name: str, size: int) -> None:
    deployment = deployments.get(name, size)
    assert_parity(deployment.checkpoint_predictions, deployment.openvino_predictions, f"{name} {size}px openvino")
    print(f"{name} {size}px timings (s): { ({k: round(v, 1) for k, v in deployment.timings.items()}) }")


@pytest.mark.parametrize(("name", "size"), CASES)
def test_checkpoint_predictions_are_post_processed(deployments: Deployments, name: str, size: int) -> None:
    """The comparison is meaningful: normalised scores in [0, 1], maps at the input size, labels = score > 0.5."""
    predictions = deployments.get(name, size).checkpoint_predictions
    assert predictions.anomaly_map.shape == (len(predictions.score), size, size)
    assert ((predictions.score >= 0) & (predictions.score <= 1)).all()
    np.testing.assert_array_equal(predictions.label, predictions.score > 0.5)
    assert predictions.score.std() > 0  # not a constant output


@pytest.mark.parametrize(("name", "size"), CASES)
def test_openvino_graph_has_one_image_input_of_the_export_size(deployments: Deployments, name: str, size: int) -> None:
    import openvino as ov

    model = ov.Core().read_model(deployments.get(name, size).openvino_path)
    assert len(model.inputs) == 1  # the image only: no class id
    shape = model.input(0).get_partial_shape()
    assert shape[0].is_dynamic  # any batch size
    assert [shape[i].get_length() for i in (1, 2, 3)] == [3, size, size]
    names = {next(iter(port.get_names())) for port in model.outputs}
    assert names == {"pred_score", "pred_label", "anomaly_map", "pred_mask", "pred_category"}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_exports_name_the_predicted_categories(deployments: Deployments, name: str) -> None:
    """The IR's rt_info and the torch export know the names of the pred_category ids (the datamodule's)."""
    from anomalib_classaware.deploy import OpenVINOInferencer, TorchInferencer, read_category_names

    deployment = deployments.get(name, SIZES[0])
    expected = deployment.datamodule.category_names
    import openvino as ov

    assert read_category_names(ov.Core().read_model(deployment.openvino_path)) == expected
    with working_directory(deployment.root):
        assert OpenVINOInferencer(deployment.openvino_path, device="CPU").category_names == expected
    os.environ.setdefault("TRUST_REMOTE_CODE", "1")
    assert TorchInferencer(deployment.torch_path, device="cpu").category_names == expected
    assert set(deployment.checkpoint_predictions.category.tolist()) <= set(range(len(expected)))


@pytest.mark.parametrize(("name", "size"), CASES)
def test_openvino_fp32_ir_records_and_runs_f32(deployments: Deployments, name: str, size: int) -> None:
    """``Engine.export``'s FP32 IR records f32; the line script and ``inference_config`` compile it in f32."""
    import openvino as ov

    from anomalib_classaware.deploy import OpenVINODetector, inference_config, recorded_precision
    from anomalib_classaware.deploy.inspection import compiled_precision

    path = deployments.get(name, size).openvino_path
    assert recorded_precision(ov.Core().read_model(path)) == "f32"
    assert inference_config(path) == {"INFERENCE_PRECISION_HINT": "f32"}
    assert OpenVINODetector(path, threads=1).precision == "f32"
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": 1, **inference_config(path)})
    assert compiled_precision(compiled) == "f32"
