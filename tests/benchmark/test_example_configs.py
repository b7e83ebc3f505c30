"""The benchmark configs under ``examples/benchmark/configs`` parse, and every model argument they set exists."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from anomalib_classaware.benchmark.cli import parse_config
from anomalib_classaware.benchmark.runner import resolve_model_class

CONFIGS = sorted((Path(__file__).parents[2] / "examples" / "benchmark" / "configs").glob("*.yaml"))


def test_the_example_configs_exist() -> None:
    assert {path.name for path in CONFIGS} >= {"equal_time.yaml", "class_aware_recipe_seeds.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_example_config_sets_only_real_model_arguments(path: Path) -> None:
    config = parse_config(["--profile", "default", "--config", str(path)])
    assert config.models, f"{path.name} names no model"
    labels = [spec.label or spec.name for spec in config.models]
    assert len(set(labels)) == len(labels), f"{path.name}: two models share a label, their runs would collide"
    for spec in config.models:
        parameters = inspect.signature(resolve_model_class(spec, config.backbone).__init__).parameters
        unknown = set(spec.init_args) - set(parameters)
        assert not unknown, f"{path.name}: {spec.name} has no argument {sorted(unknown)}"
