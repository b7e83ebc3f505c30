"""Compressed exports: FP16, INT8 weights, INT8_PTQ and INT8_ACQ through anomalib, and the package's INT8 recipe.

The fast tests check the helpers (attention detection, NNCF model type, fitted post-processor,
heat-map colours). The slow tests export every model of the package (64 px, the parity tests'
checkpoints) and report INT8 label agreement and score correlation with the checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from anomalib.deploy import CompressionType
from anomalib.post_processing import PostProcessor
from deploy_helpers import (
    MAP_TOLERANCE,
    MODEL_NAMES,
    OUTPUTS,
    SCORE_TOLERANCE,
    Deployments,
    Predictions,
    engine,
    fresh_images,
    predict_with_engine,
    run_openvino_inferencer,
    tiny_model,
)
from torch import nn
from torch.utils.data import DataLoader

from anomalib_classaware.deploy import OpenVINODetector, cpu_supports_bf16, heat_map, read_rgb, recorded_precision
from anomalib_classaware.deploy.export import (
    VARIANT_PRECISIONS,
    check_post_processor_fitted,
    export_openvino_variants,
    has_attention,
    nncf_model_type,
)
from anomalib_classaware.models.components.networks.attention import MaskedAttention

SIZE = 64


def test_attention_models_get_the_transformer_preset() -> None:
    import nncf

    cnn = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
    assert not has_attention(cnn)
    assert nncf_model_type(cnn) is None
    for block in (MaskedAttention(8, 2), nn.MultiheadAttention(8, 2), nn.TransformerEncoderLayer(8, 2)):
        assert has_attention(nn.Sequential(cnn, block))
        assert nncf_model_type(nn.Sequential(cnn, block)) == nncf.ModelType.TRANSFORMER
    assert nncf_model_type(cnn, "transformer") == nncf.ModelType.TRANSFORMER
    assert nncf_model_type(nn.Sequential(cnn, MaskedAttention(8, 2)), "cnn") is None
    with pytest.raises(ValueError, match="Unknown model type"):
        nncf_model_type(cnn, "vit")


ATTENTION = {"ReContrast": False, "ClassAwareRecon": False, "Rlr": True, "MintAd": True}


@pytest.mark.parametrize("name", [name for name in MODEL_NAMES if name in ATTENTION])
def test_package_models_with_attention_are_detected(name: str) -> None:
    """The transformer reconstructions (RLR, MINT-AD) get NNCF's transformer preset, the CNN ones do not."""
    assert has_attention(tiny_model(name, SIZE).model) == ATTENTION[name]


def test_int8_export_needs_a_fitted_post_processor() -> None:
    holder = nn.Module()
    holder.post_processor = PostProcessor()  # never validated: NaN statistics
    with pytest.raises(ValueError, match="no image_min, image_max, pixel_min, pixel_max: run a validation pass"):
        check_post_processor_fitted(holder)
    for name in ("image_min", "image_max", "pixel_min", "pixel_max"):
        getattr(holder.post_processor, name).fill_(0.5 if "max" in name else 0.0)
    check_post_processor_fitted(holder)  # fitted: no error
    with pytest.raises(ValueError, match="calibration"):
        export_openvino_variants(holder, "unused", (32, 32), variants=("int8_ptq",))


def test_heat_map_uses_anomalib_colours() -> None:
    from anomalib.visualization.image.functional import visualize_anomaly_map

    values = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    ours = np.asarray(heat_map(values), dtype=np.int16)
    anomalib = np.asarray(visualize_anomaly_map(np.round(255 * values).astype(np.uint8)), dtype=np.int16)
    assert np.abs(ours - anomalib).max() <= 1  # the same "jet" palette (rounding aside)
    assert tuple(ours[0, 0]) == (0, 0, 143) and tuple(ours[-1, -1]) == (127, 0, 0)


def _detector_scores(xml: Path, paths: list[Path], precision: str = "auto") -> tuple[np.ndarray, str]:
    detector = OpenVINODetector(xml, threads=1, precision=precision)
    return np.array([detector.predict(read_rgb(path)).score for path in paths]), detector.precision


PRECISION_MODEL = "MintAd"
"""The model whose FP32/FP16/INT8/BF16 variants' recorded precisions are checked (the fastest export)."""


@pytest.mark.slow  # ~35 s on 2 shared cores; CI checks the FP32 IRs' precision in test_parity and test_speed
def test_variants_record_their_inference_precision(
    deployments: Deployments, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """FP32, FP16 and INT8 weights record f32; bf16 records bf16 and warns where the CPU has no BF16."""
    import logging

    import openvino as ov

    deployment = deployments.get(PRECISION_MODEL, SIZE)
    model = type(tiny_model(PRECISION_MODEL, SIZE)).load_from_checkpoint(deployment.checkpoint)
    with caplog.at_level(logging.WARNING):
        exports = export_openvino_variants(model, tmp_path, (SIZE, SIZE), ("fp32", "fp16", "int8", "bf16"))
    recorded = {variant: recorded_precision(ov.Core().read_model(xml)) for variant, xml in exports.items()}
    assert recorded == {"fp32": "f32", "fp16": "f32", "int8": "f32", "bf16": "bf16"}
    assert recorded == {variant: VARIANT_PRECISIONS[variant] for variant in exports}
    sizes = {variant: xml.with_suffix(".bin").stat().st_size for variant, xml in exports.items()}
    assert sizes["fp16"] < 0.6 * sizes["fp32"]  # FP16 weights: the precision option does not undo the compression
    fp32, fp32_precision = _detector_scores(exports["fp32"], deployment.paths)
    assert fp32_precision == "f32"
    np.testing.assert_allclose(fp32, deployment.openvino_predictions.score, atol=SCORE_TOLERANCE)
    bf16, bf16_precision = _detector_scores(exports["bf16"], deployment.paths)
    if cpu_supports_bf16():
        assert bf16_precision == "bf16"
    else:
        assert "Writing bf16 variants on a CPU without BF16" in caplog.text
        assert bf16_precision == "f32"  # the detector falls back, with a warning
        np.testing.assert_allclose(bf16, fp32, atol=SCORE_TOLERANCE)


# ---------------------------------------------------------------- slow: every model, every compression


def _calibration(datamodule) -> DataLoader:
    """Normal training images of every category (what the package recommends for INT8_PTQ)."""
    datamodule.setup("fit")
    return DataLoader(datamodule.train_data, batch_size=4, collate_fn=datamodule.train_data.collate_fn)


def _spy_on_head(monkeypatch: pytest.MonkeyPatch, function: str) -> list[set[str]]:
    """Record the head node names that the export mixin hands to ``deploy.export.<function>``."""
    from anomalib_classaware.deploy import export as export_module

    original = getattr(export_module, function)
    heads: list[set[str]] = []

    def spy(model: nn.Module, fp32: object, head: set[str], *args: object, **kwargs: object) -> object:
        heads.append(set(head))
        return original(model, fp32, head, *args, **kwargs)

    monkeypatch.setattr(export_module, function, spy)
    return heads


def _head_inputs_quantized(xml: Path, head: set[str]) -> int:
    """How many head ops take a FakeQuantize output as an input."""
    import openvino as ov

    count = 0
    for op in ov.Core().read_model(xml).get_ops():
        if op.get_friendly_name().split("/")[0] in head:
            count += sum(value.get_node().get_type_name() == "FakeQuantize" for value in op.input_values())
    return count


def agreement(expected: Predictions, got: Predictions) -> dict[str, float]:
    decided = np.abs(expected.score - 0.5) > SCORE_TOLERANCE
    return {
        "label_agreement": float((expected.label == got.label)[decided].mean()),
        "pearson": float(np.corrcoef(expected.score, got.score)[0, 1]),
        "max_score_diff": float(np.abs(expected.score - got.score).max()),
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_int8_ptq_agrees_with_the_checkpoint(deployments: Deployments, name: str, tmp_path: Path) -> None:
    """The package's INT8 (network quantized, head in FP32) vs the whole graph quantized, on 40 fresh images."""
    from anomalib_classaware.deploy.export import head_node_names

    deployment = deployments.get(name, SIZE)
    model = type(tiny_model(name, SIZE)).load_from_checkpoint(deployment.checkpoint)
    paths = fresh_images(tmp_path, SIZE, good=10, defective=10)
    expected = predict_with_engine(name, SIZE, tmp_path, deployment.checkpoint, paths)
    exports = export_openvino_variants(
        model, tmp_path / "int8", (SIZE, SIZE), ("int8_ptq", "int8_ptq_full"), _calibration(deployment.datamodule)
    )
    onnx_path = model.to_onnx(tmp_path / "onnx", input_size=(SIZE, SIZE), opset_version=18)
    head = head_node_names(onnx_path, model)
    assert _head_inputs_quantized(exports["int8_ptq"], head) == 0  # the head stays in floating point
    assert _head_inputs_quantized(exports["int8_ptq_full"], head) > 0
    results = {}
    for variant, xml in exports.items():
        results[variant] = agreement(expected, run_openvino_inferencer(xml, paths, tmp_path))
    print(f"{name} INT8 vs checkpoint on {len(paths)} fresh images: {results}")
    # two training steps, 64 px: loose bounds (RLR, the most sensitive, measured 0.85 and 0.75); the
    # whole-graph variant collapses to a constant score for every model of the package
    assert results["int8_ptq"]["pearson"] > 0.8
    assert results["int8_ptq"]["label_agreement"] >= 0.7


@pytest.mark.slow
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_engine_export_compressions(deployments: Deployments, name: str, tmp_path: Path) -> None:
    """``Engine.export`` to OpenVINO with FP16, INT8, INT8_PTQ and INT8_ACQ: each IR loads and scores the images."""
    import openvino as ov

    deployment = deployments.get(name, SIZE)
    exporter = engine(tmp_path)
    results = {}
    for compression in (
        CompressionType.FP16,
        CompressionType.INT8,
        CompressionType.INT8_PTQ,
        CompressionType.INT8_ACQ,
    ):
        xml = exporter.export(
            tiny_model(name, SIZE),
            "openvino",
            export_root=tmp_path / compression.value,
            input_size=(SIZE, SIZE),
            ckpt_path=deployment.checkpoint,
            compression_type=compression,
            datamodule=deployment.datamodule,
            max_drop=1.0 if compression == CompressionType.INT8_ACQ else 0.01,  # ACQ: no slow ranking
            onnx_kwargs={"opset_version": 18},
        )
        model = ov.Core().read_model(xml)
        assert {next(iter(port.get_names())) for port in model.outputs} == set(OUTPUTS)
        assert recorded_precision(model) == "f32", compression  # FP16/INT8 weights, f32 arithmetic
        predictions = run_openvino_inferencer(xml, deployment.paths, tmp_path)
        assert np.isfinite(predictions.score).all()
        results[compression.value] = agreement(deployment.checkpoint_predictions, predictions)
    print(f"{name} Engine.export compressions vs checkpoint: {results}")
    assert results["fp16"]["max_score_diff"] <= 1e-2  # FP16 weights, FP32 arithmetic on the CPU
    assert results["fp16"]["label_agreement"] == 1.0
    assert results["int8"]["pearson"] > 0.99  # INT8 weights only


@pytest.mark.slow
@pytest.mark.skipif(not cpu_supports_bf16(), reason="bf16 agreement is measured on CPUs with BF16 only")
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_bf16_variants_agree_with_the_checkpoint(deployments: Deployments, name: str, tmp_path: Path) -> None:
    """The FP32 graph in bf16, and the INT8 graph with bf16 float parts, on 40 fresh images (CPUs with BF16)."""
    deployment = deployments.get(name, SIZE)
    model = type(tiny_model(name, SIZE)).load_from_checkpoint(deployment.checkpoint)
    paths = fresh_images(tmp_path, SIZE, good=10, defective=10)
    expected = predict_with_engine(name, SIZE, tmp_path, deployment.checkpoint, paths)
    exports = export_openvino_variants(
        model, tmp_path / "bf16", (SIZE, SIZE), ("bf16", "int8_ptq_bf16"), _calibration(deployment.datamodule)
    )
    results = {}
    for variant, xml in exports.items():
        predictions = run_openvino_inferencer(xml, paths, tmp_path)  # inference_config: the recorded bf16
        results[variant] = agreement(expected, predictions)
    print(f"{name} BF16 vs checkpoint on {len(paths)} fresh images: {results}")
    assert results["bf16"]["pearson"] > 0.99
    assert results["bf16"]["label_agreement"] >= 0.9
    assert results["int8_ptq_bf16"]["pearson"] > 0.8  # as the INT8 bound (tiny two-step models)


@pytest.mark.slow
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_onnx_export_matches_engine_predict(deployments: Deployments, name: str, tmp_path: Path) -> None:
    """``Engine.export(export_type="onnx")``, run by OpenVINO's ONNX frontend, scores like the checkpoint."""
    deployment = deployments.get(name, SIZE)
    onnx_path = engine(tmp_path).export(
        tiny_model(name, SIZE),
        "onnx",
        export_root=tmp_path,
        input_size=(SIZE, SIZE),
        ckpt_path=deployment.checkpoint,
        onnx_kwargs={"opset_version": 18},
    )
    assert onnx_path.suffix == ".onnx"
    predictions = run_openvino_inferencer(onnx_path, deployment.paths, tmp_path)
    found = agreement(deployment.checkpoint_predictions, predictions)
    map_difference = float(np.abs(deployment.checkpoint_predictions.anomaly_map - predictions.anomaly_map).max())
    print(f"{name} ONNX vs checkpoint: {found}, map {map_difference:.2e}")
    assert found["max_score_diff"] <= SCORE_TOLERANCE
    assert map_difference <= MAP_TOLERANCE
    assert found["label_agreement"] == 1.0


CI_INT8_MODEL = "MintAd"
"""The one model whose INT8_PTQ export runs in CI (attention: NNCF's transformer preset); the others are slow."""


@pytest.mark.parametrize(
    "name", [pytest.param(name, marks=() if name == CI_INT8_MODEL else pytest.mark.slow) for name in MODEL_NAMES]
)
def test_engine_export_int8_ptq_quantizes_the_network_and_keeps_the_scores(
    deployments: Deployments, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Engine.export(compression_type=INT8_PTQ)`` (= ``anomalib export``) uses the package's recipe for our models.

    The convolutions, linear layers and attention run in INT8, the head (distances, map, score,
    post-processing) stays in floating point, and the scores follow the checkpoint's.
    """
    import openvino as ov

    deployment = deployments.get(name, SIZE)
    model = type(tiny_model(name, SIZE)).load_from_checkpoint(deployment.checkpoint)
    heads = _spy_on_head(monkeypatch, "quantize_network")
    xml = engine(tmp_path).export(
        model,
        "openvino",
        export_root=tmp_path,
        input_size=(SIZE, SIZE),
        compression_type=CompressionType.INT8_PTQ,
        datamodule=deployment.datamodule,
    )
    assert len(heads) == 1 and len(heads[0]) > 0  # the package's recipe ran, with a head to keep in float
    quantizers = [op for op in ov.Core().read_model(xml).get_ops() if op.get_type_name() == "FakeQuantize"]
    assert len(quantizers) > 0  # the network is quantized
    assert _head_inputs_quantized(xml, heads[0]) == 0  # the head is not
    found = agreement(deployment.checkpoint_predictions, run_openvino_inferencer(xml, deployment.paths, tmp_path))
    print(f"{name} INT8_PTQ (Engine.export) vs checkpoint on {len(deployment.paths)} fresh images: {found}")
    assert found["pearson"] > 0.8, found  # anomalib's whole-graph INT8_PTQ gives a constant score (NaN)


CI_ACQ_MODEL = "ClassAwareRecon"
"""The one model whose INT8_ACQ export runs in CI; the others are slow."""


def _validation_metric(xml: Path, batches: DataLoader) -> float:
    import openvino as ov

    from anomalib_classaware.deploy import inference_config
    from anomalib_classaware.deploy.export import image_auroc_metric, labelled_score_fn

    compiled = ov.Core().compile_model(str(xml), "CPU", inference_config(xml))  # its recorded f32, on any CPU
    return labelled_score_fn(image_auroc_metric())(compiled, batches)


@pytest.mark.parametrize(
    "name", [pytest.param(name, marks=() if name == CI_ACQ_MODEL else pytest.mark.slow) for name in MODEL_NAMES]
)
def test_engine_export_int8_acq_keeps_the_validation_auroc_within_max_drop(
    deployments: Deployments, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``INT8_ACQ`` starts from the package's network-only INT8 and keeps the validation AUROC within ``max_drop``."""
    from anomalib_classaware.deploy.export import image_auroc_metric

    deployment = deployments.get(name, SIZE)
    model = type(tiny_model(name, SIZE)).load_from_checkpoint(deployment.checkpoint)
    exporter = engine(tmp_path)
    common = {"input_size": (SIZE, SIZE), "datamodule": deployment.datamodule, "onnx_kwargs": {"opset_version": 18}}
    heads = _spy_on_head(monkeypatch, "quantize_network_with_accuracy_control")
    xml = exporter.export(
        model,
        "openvino",
        export_root=tmp_path / "acq",
        compression_type=CompressionType.INT8_ACQ,
        metric=image_auroc_metric(),  # Engine.export's default is anomalib's: image F1 of the labels
        max_drop=0.01,
        **common,
    )
    assert len(heads) == 1 and len(heads[0]) > 0  # the package's recipe ran
    assert _head_inputs_quantized(xml, heads[0]) == 0  # the head stays in floating point
    validation = deployment.datamodule.val_dataloader()
    before, after = _validation_metric(deployment.openvino_path, validation), _validation_metric(xml, validation)
    found = agreement(deployment.checkpoint_predictions, run_openvino_inferencer(xml, deployment.paths, tmp_path))
    print(f"{name} INT8_ACQ: validation AUROC {before:.3f} (FP32) -> {after:.3f}; vs checkpoint: {found}")
    assert after >= before - 0.01 - 1e-6
    if name != "Rlr" or before > 0.5:
        # a constant score (anomalib's ACQ) has AUROC 0.5: a drop only for a model better than chance;
        # the tiny two-step RLR ranks worse than chance (0.31) and NNCF then accepts a collapsed graph
        assert np.isfinite(found["pearson"]) and found["pearson"] > 0.8


def test_int8_acq_rejects_a_metric_name_and_a_bad_max_drop() -> None:
    from anomalib_classaware.deploy.export import check_accuracy_control_arguments, image_auroc_metric

    check_accuracy_control_arguments(None, 0.01)
    check_accuracy_control_arguments(image_auroc_metric(), 0.0)
    with pytest.raises(TypeError, match="INT8_ACQ needs a metric object such as AUROC"):
        check_accuracy_control_arguments("AUROC", 0.01)
    with pytest.raises(ValueError, match=r"max_drop must be in \[0, 1\].*got 1.5"):
        check_accuracy_control_arguments(None, 1.5)


def _one_category_demo(root: Path, val_split_mode: str, **kwargs: object):
    """A 32 px demo of one category (brick) with the given validation split."""
    from anomalib_classaware.data import MultiClassDemo

    settings = {"num_train": 2, "num_test_good": 2, "num_test_defective": 2, **kwargs}
    return MultiClassDemo(
        root=root, categories=["brick"], image_size=32, num_workers=0, val_split_mode=val_split_mode, seed=0, **settings
    )


def test_int8_acq_needs_anomalous_validation_images(tmp_path: Path) -> None:
    from anomalib_classaware.deploy.lightning_export import labelled_validation_images

    normal_only = _one_category_demo(tmp_path / "demo", "from_train", num_train=6, val_split_ratio=0.5)
    with pytest.raises(ValueError, match=r"validation images of MultiClassDemo, which hold labels \[0\]"):
        labelled_validation_images(normal_only)


def test_int8_acq_warns_when_validation_images_are_the_test_images(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from anomalib_classaware.deploy.lightning_export import labelled_validation_images

    with caplog.at_level(logging.WARNING):
        loader = labelled_validation_images(_one_category_demo(tmp_path / "demo", "same_as_test"))
    assert len(loader.dataset) == 4
    assert "the accuracy is controlled on the test images" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        labelled_validation_images(_one_category_demo(tmp_path / "demo", "from_test"))
    assert "controlled on the test images" not in caplog.text
