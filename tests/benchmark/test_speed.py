"""Deployment speed (``--speed``): timing arithmetic, AUROC, agreement, reports, configuration, one real run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from anomalib_classaware.benchmark import speed
from anomalib_classaware.benchmark.cli import _bare_flags, parse_config
from anomalib_classaware.benchmark.config import model_label
from anomalib_classaware.benchmark.report import (
    deployment_rows,
    layer_table,
    speed_table,
    speedups,
    target_table,
    write_speed_markdown,
)


def test_mean_category_auroc_counts_ties_half_and_averages_categories() -> None:
    scores = np.array([0.1, 0.9, 0.5, 0.5, 0.2, 0.3, 0.4])
    labels = np.array([0, 1, 0, 1, 0, 1, 1])
    categories = ["a", "a", "b", "b", "c", "c", "c"]  # a: 1.0, b: tie -> 0.5, c: 1.0
    assert speed.mean_category_auroc(scores, labels, categories) == pytest.approx((1.0 + 0.5 + 1.0) / 3)
    only_normal = speed.mean_category_auroc(np.array([0.1, 0.2]), np.array([0, 0]), ["a", "a"])
    assert math.isnan(only_normal)


def test_median_times_after_warmup(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    clock = iter([0.0, 3.0, 10.0, 11.0, 20.0, 22.0])  # wall durations 3, 1, 2
    cpu = iter([0.0, 0.5, 1.0, 1.25, 2.0, 2.5])  # CPU durations 0.5, 0.25, 0.5
    monkeypatch.setattr(speed.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(speed.time, "process_time", lambda: next(cpu))
    assert speed.median_times(lambda: calls.append(1), warmup=2, repeats=3) == (2.0, 0.5)
    assert len(calls) == 5
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        speed.median_seconds(lambda: None, warmup=0, repeats=0)


def test_threads_and_batches() -> None:
    assert speed.resolve_threads(0) == speed.all_cores() >= 1
    assert speed.resolve_threads(3) == 3
    with pytest.raises(ValueError, match=">= 0"):
        speed.resolve_threads(-1)
    images = torch.arange(3.0).reshape(3, 1, 1, 1)
    assert speed.image_batch(images, 5).flatten().tolist() == [0.0, 1.0, 2.0, 0.0, 1.0]


def test_quality_row_leaves_threshold_ties_out_of_the_label_agreement() -> None:
    reference = {
        "score": np.array([0.1, 0.5, 0.7, 0.9]),
        "label": np.array([False, False, True, True]),
        "gt_label": np.array([0, 0, 1, 1]),
        "category": np.array(["a"] * 4),
    }
    flipped_tie = {**reference, "score": reference["score"] + 1e-6, "label": np.array([False, True, True, True])}
    row = speed.quality_row("openvino_fp32", flipped_tie, reference)
    assert row["label_agreement"] == 1.0  # the image on the threshold does not count
    assert row["at_threshold"] == 1
    assert row["max_score_diff"] == pytest.approx(1e-6)
    assert row["score_pearson"] == pytest.approx(1.0)
    assert row["image_AUROC"] == 1.0
    wrong = {**reference, "label": np.array([True, False, True, False])}
    assert speed.quality_row("x", wrong, reference)["label_agreement"] == pytest.approx(1 / 3)
    constant = {**reference, "score": np.full(4, 0.5)}
    assert math.isnan(speed.quality_row("x", constant, reference)["score_pearson"])


def test_cpu_isa_flags_and_class(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu sse avx2 avx512f avx512_vnni avx512bw\n")
    assert speed.cpu_isa_flags(cpuinfo) == ["avx2", "avx512f", "avx512_vnni"]
    assert speed.cpu_isa_flags(tmp_path / "missing") == []
    assert speed.isa_class(["avx2"]) == "AVX2"
    assert speed.isa_class(["avx2", "avx512f", "avx512_vnni"]) == "VNNI"
    assert speed.isa_class(["avx2", "avx_vnni"]) == "VNNI"
    assert speed.isa_class(["avx2", "avx512_vnni", "avx512_bf16"]) == "AVX-512 BF16"
    assert speed.isa_class(["avx512_bf16", "amx_int8"]) == "AMX"
    assert speed.isa_class([]) == "other"


def test_speed_header_names_the_cpu_flags() -> None:
    from anomalib_classaware.benchmark.cli import cpu_precision_description
    from anomalib_classaware.deploy import cpu_capabilities

    text = cpu_precision_description()
    assert text.startswith(f"ISA flags {', '.join(speed.cpu_isa_flags()) or 'unknown'} (class **")
    assert f"OpenVINO CPU capabilities {', '.join(cpu_capabilities())}" in text
    assert ("BF16 variants measured" in text) == ("BF16" in cpu_capabilities())


def test_low_precision_share() -> None:
    profile = [
        {"layer_type": "Convolution", "ms": 6.0, "int8_ms": 4.0},
        {"layer_type": "MatMul", "ms": 2.0, "int8_ms": 0.0},
        {"layer_type": "Select", "ms": 1.0, "int8_ms": 1.0},  # boolean masks: not arithmetic
    ]
    assert speed.low_precision_share(profile) == pytest.approx(0.5)
    assert math.isnan(speed.low_precision_share([]))


def _timing(model: str, variant: str, batch: int, threads: int, ms: float, auroc: float, **extra: float) -> dict:
    """A speed row; the CPU time is half the wall time (a machine shared with one other process)."""
    return {
        "run_id": f"{model}|unified|seed0",
        "model": model,
        "variant": variant,
        "batch_size": str(batch),
        "threads": str(threads),
        "ms_per_image": str(ms),
        "cpu_ms_per_image": str(ms / 2),
        "image_AUROC": str(auroc),
        "label_agreement": str(extra.get("agreement", 1.0)),
        "score_pearson": str(extra.get("pearson", 1.0)),
    }


def _rows() -> list[dict]:
    rows = []
    for batch, threads, scale in ((1, 1, 1.0), (8, 1, 0.5), (1, 2, 0.8), (8, 2, 0.4)):
        rows.append(_timing("A", "torch", batch, threads, 20 * scale, 0.90))
        rows.append(_timing("A", "openvino_fp32", batch, threads, 10 * scale, 0.90))
        rows.append(_timing("A", "openvino_int8_ptq", batch, threads, 4 * scale, 0.88, agreement=0.95, pearson=0.99))
        rows.append(_timing("B", "torch", batch, threads, 5 * scale, 0.80))
        rows.append(_timing("B", "openvino_fp32", batch, threads, 10 * scale, 0.80))
        rows.append(_timing("B", "openvino_int8_ptq", batch, threads, 8 * scale, 0.795))
    return rows


def test_speed_table_cells_are_ms_per_image_and_images_per_second() -> None:
    table = "\n".join(speed_table(_rows()))
    assert "| Model | Variant | bs 1, 1 thread | bs 8, 1 thread | bs 1, 2 threads | bs 8, 2 threads |" in table
    one_thread = "20.0 ms (50 img/s); CPU 10.0 ms | 10.0 ms (100 img/s); CPU 5.0 ms"
    assert f"| A | torch eager | {one_thread} | 16.0 ms (62 img/s) | 8.0 ms (125 img/s) |" in table  # CPU: 1 thread
    assert "| A | OpenVINO INT8 | 4.0 ms (250 img/s); CPU 2.0 ms |" in table
    assert "| 88.0 | 95.0 | 0.9900 |" in table


def test_targets_compare_variants_at_each_configuration() -> None:
    rows = _rows()
    assert speedups(rows, "openvino_fp32", "torch") == {"A": [2.0] * 4, "B": [0.5] * 4}
    assert speedups(rows, "openvino_fp32", "torch", "cpu_ms_per_image", threads=1) == {"A": [2.0] * 2, "B": [0.5] * 2}
    rows[0] = {**rows[0], "cpu_ms_per_image": "5"}  # A, eager, bs 1, 1 thread: FP32 (5 ms) no longer faster
    table = "\n".join(target_table(rows))
    assert "| A | 1.00–2.00× | 2.00× | 1 of 2 | 2.50× | 2.50× | yes | -2.0 | **no** |" in table
    assert "| B | 0.50× | 0.50× | **no** | 1.25× | 1.25× | **no** | -0.5 | yes |" in table


def test_deployment_rows_merge_quality_and_record_failures() -> None:
    common = {"run_id": "A|unified|seed0", "model": "A", "setting": "unified", "seed": 0}
    deployment = {
        "timings": [{"variant": "torch", "batch_size": 1, "threads": 1, "ms_per_image": 2.0}],
        "quality": [{"variant": "torch", "image_AUROC": 0.9, "label_agreement": 1.0}],
        "profiles": {"openvino_fp32": [{"layer_type": "Convolution", "ms": 1.0, "share": 1.0, "exec_types": "x"}]},
        "export_s": {"openvino": 12.0},
        "wall_time_s": 30.0,
    }
    rows, layers = deployment_rows(common, deployment)
    assert rows == [
        {
            **common,
            "export_s": 12.0,
            "deployment_s": 30.0,
            "variant": "torch",
            "batch_size": 1,
            "threads": 1,
            "ms_per_image": 2.0,
            "image_AUROC": 0.9,
            "label_agreement": 1.0,
        }
    ]
    assert layers == [
        {
            "run_id": "A|unified|seed0",
            "model": "A",
            "variant": "openvino_fp32",
            **deployment["profiles"]["openvino_fp32"][0],
        }
    ]
    failed, no_layers = deployment_rows(common, {"error": "RuntimeError: export\nfailed"})
    assert failed == [{**common, "error": "RuntimeError: export failed"}]
    assert no_layers == []


def test_layer_table_and_markdown(tmp_path: Path) -> None:
    int8 = {"model": "A", "variant": "openvino_int8_ptq"}
    layers = [
        {**int8, "layer_type": "Convolution", "ms": "6", "int8_ms": "4.5", "exec_types": "jit_avx2_I8"},
        {**int8, "layer_type": "Interpolate", "ms": "2", "int8_ms": "0", "exec_types": "jit_avx2_f32"},
    ]
    table = "\n".join(layer_table(layers))
    assert "| A | OpenVINO INT8 | Convolution 75% (jit_avx2_I8); Interpolate 25% (jit_avx2_f32) | 75% |" in table
    rows = [*_rows(), {"model": "C", "run_id": "C|unified|seed0", "error": "ValueError: no export"}]
    text = write_speed_markdown(rows, layers, tmp_path / "speed.md", ["- header line"]).read_text()
    for section in ("- header line", "## Median time per image", "## Targets", "## Where the time goes"):
        assert section in text
    assert "| C | ValueError: no export |" in text


def test_speed_flag_and_profile() -> None:
    assert _bare_flags(["--speed"]) == ["--speed=true"]
    assert _bare_flags(["--speed", "false", "--speed", "--seeds", "[1]"]) == [
        "--speed",
        "false",
        "--speed=true",
        "--seeds",
        "[1]",
    ]
    assert parse_config(["--profile", "smoke", "--speed"]).speed is True
    assert parse_config(["--profile", "smoke"]).speed is False
    config = parse_config(["--profile", "speed"])
    assert config.speed is True
    assert config.speed_threads == [1, 0]
    assert config.speed_batch_sizes == [1, 8]
    assert {"torch", "openvino_fp32", "openvino_int8_ptq"} <= set(config.speed_variants)


def test_speed_profile_covers_every_model_of_the_package_and_the_anchors() -> None:
    import anomalib_classaware.models as package_models

    config = parse_config(["--profile", "speed"])
    names = {spec.name for spec in config.models}
    missing = set(package_models.__all__) - names
    assert not missing, f"add {sorted(missing)} to anomalib_classaware/benchmark/profiles/speed.yaml"
    assert {"Patchcore", "ReverseDistillation", "Stfpm"} <= names
    labels = [model_label(spec, config.backbone) for spec in config.models]
    assert len(labels) == len(set(labels))


def _fitted_tiny_rd(root: Path):
    """A tiny RD (resnet18, 32 px) fitted one step on two demo categories, validated (post-processor fitted)."""
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    from anomalib_classaware.benchmark.baselines import ComponentReverseDistillation
    from anomalib_classaware.data import MultiClassDemo

    seed_everything(0, verbose=False)
    datamodule = MultiClassDemo(
        root=root / "demo",
        categories=["brick", "coffee"],
        image_size=32,
        num_train=4,
        num_test_good=2,
        num_test_defective=2,
        train_batch_size=4,
        eval_batch_size=4,
        num_workers=0,
    )
    model = ComponentReverseDistillation(
        backbone="resnet18", pre_trained=False, input_size=(32, 32), evaluator=False, visualizer=False
    )
    engine = Engine(
        default_root_dir=root / "run",
        max_steps=1,
        check_val_every_n_epoch=None,
        val_check_interval=1,  # the post-processor learns its threshold and normalisation
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        devices=1,
    )
    engine.fit(model, datamodule=datamodule)
    return model, datamodule


def test_measure_deployment_times_and_scores_eager_and_openvino(tmp_path: Path) -> None:
    """OpenVINO FP32 scores the test set like eager; both are timed per batch size; OpenVINO is profiled."""
    model, datamodule = _fitted_tiny_rd(tmp_path)
    result = speed.measure_deployment(
        model,
        datamodule,
        32,
        tmp_path / "deploy",
        batch_sizes=(1, 2),
        thread_counts=(1,),
        warmup=0,
        repeats=1,
        variants=("torch", "openvino_fp32", "openvino_bf16"),
    )
    import openvino as ov

    from anomalib_classaware.deploy import cpu_capabilities, cpu_supports_bf16, recorded_precision

    assert recorded_precision(ov.Core().read_model(tmp_path / "deploy" / "openvino_fp32" / "model.xml")) == "f32"
    if cpu_supports_bf16():
        assert result["skipped"] == {}
        assert {row["variant"] for row in result["timings"]} == {"torch", "openvino_fp32", "openvino_bf16"}
        return
    assert set(result["skipped"]) == {"openvino_bf16"}
    capabilities = ", ".join(cpu_capabilities())
    assert result["skipped"]["openvino_bf16"] == f"this CPU has no BF16 (OpenVINO capabilities: {capabilities})"
    timings = {(row["variant"], row["batch_size"]) for row in result["timings"]}
    assert timings == {(v, b) for v in ("torch", "openvino_fp32") for b in (1, 2)}
    assert all(row["ms_per_image"] > 0 and row["cpu_ms_per_image"] > 0 for row in result["timings"])
    assert all(row["threads"] == 1 for row in result["timings"])
    quality = {row["variant"]: row for row in result["quality"]}
    assert quality["torch"]["test_images"] == 8
    assert quality["openvino_fp32"]["max_score_diff"] <= 1e-4
    assert quality["openvino_fp32"]["label_agreement"] == 1.0
    assert quality["openvino_fp32"]["image_AUROC"] == quality["torch"]["image_AUROC"]
    assert set(result["profiles"]) == {"openvino_fp32"}
    layer_types = {row["layer_type"] for row in result["profiles"]["openvino_fp32"]}
    assert {"Convolution", "ConvolutionBackpropData"} <= layer_types  # encoder and RD decoder
    assert speed.low_precision_share(result["profiles"]["openvino_fp32"]) == 0.0


@pytest.mark.slow
def test_measure_deployment_quantizes_the_network_only(tmp_path: Path) -> None:
    """INT8 runs INT8 kernels; the whole-graph variant (anomalib's INT8_PTQ) is measured beside it."""
    model, datamodule = _fitted_tiny_rd(tmp_path)
    variants = ("torch", "openvino_fp32", "openvino_int8_ptq", "openvino_int8_ptq_full")
    result = speed.measure_deployment(
        model,
        datamodule,
        32,
        tmp_path / "deploy",
        batch_sizes=(1,),
        thread_counts=(1, 0),
        warmup=0,
        repeats=1,
        variants=variants,
    )
    assert {(row["variant"], row["threads"]) for row in result["timings"]} == {
        (variant, threads) for variant in variants for threads in (1, speed.all_cores())
    }
    quality = {row["variant"]: row for row in result["quality"]}
    assert set(quality) == set(variants)
    # mean over 2 categories of 2 normal x 2 defective images: a multiple of 1/16 (ties count half)
    auroc = quality["openvino_int8_ptq"]["image_AUROC"]
    assert 0.0 <= auroc <= 1.0 and auroc * 16 == pytest.approx(round(auroc * 16)), auroc
    assert speed.low_precision_share(result["profiles"]["openvino_int8_ptq"]) > 0.0
    assert (tmp_path / "deploy" / "openvino_int8_ptq_full" / "model.xml").is_file()


@pytest.mark.slow
def test_speed_flag_runs_the_deployment_measurement_end_to_end(tmp_path: Path) -> None:
    """``--profile smoke --speed``: speed.csv, speed_layers.csv and speed.md next to the usual reports."""
    from anomalib_classaware.benchmark.cli import main
    from anomalib_classaware.benchmark.report import read_results

    output = tmp_path / "bench"
    arguments = ["--profile", "smoke", "--speed", "--speed_threads", "[1]", "--output", str(output)]
    assert main(arguments) == 0
    rows = read_results(output / "speed.csv")
    assert {row["model"] for row in rows} == {"RD (components, resnet18)", "ReContrast"}
    assert not any(row["error"] for row in rows)
    assert {row["variant"] for row in rows} == {"torch", "openvino_fp32", "openvino_int8_ptq"}
    assert read_results(output / "speed_layers.csv")
    text = (output / "speed.md").read_text()
    assert "| ReContrast | OpenVINO FP32 |" in text
    assert "## Targets" in text
    before = (output / "speed.csv").read_text()
    assert main(arguments) == 0  # resumes: nothing to re-run
    assert (output / "speed.csv").read_text() == before
