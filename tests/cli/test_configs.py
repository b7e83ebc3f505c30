"""Every YAML recipe in configs/ names classes that exist and arguments they accept (no training, no weights)."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest
import yaml

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*/*.yaml"))


def _resolve(class_path: str, package: str) -> type:
    if "." in class_path:
        module, _, name = class_path.rpartition(".")
        return getattr(importlib.import_module(module), name)
    import anomalib_classaware.data  # exposes our datamodules on anomalib.data
    import anomalib_classaware.models  # noqa: F401

    return getattr(importlib.import_module(package), class_path)


def accepted_arguments(cls: type) -> set[str]:
    """Keyword arguments of ``cls.__init__``, following ``**kwargs`` up the class hierarchy."""
    accepted: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = inspect.signature(klass.__init__).parameters
        accepted |= {name for name, p in parameters.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            break
    return accepted - {"self"}


def test_there_is_a_recipe_per_model() -> None:
    import anomalib_classaware.models

    folders = {path.parent.name for path in CONFIGS}
    for name in anomalib_classaware.models.__all__:
        expected = importlib.import_module(getattr(anomalib_classaware.models, name).__module__).__package__
        expected = expected.rpartition(".")[2]  # the model's package name, e.g. class_aware_recon
        assert expected in folders, f"configs/{expected}/ is missing for {name}"
        assert {"demo.yaml", "mvtec_unified.yaml"} <= {p.name for p in CONFIGS if p.parent.name == expected}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_recipe_classes_and_arguments_exist(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    for section, package in (("model", "anomalib.models"), ("data", "anomalib.data")):
        cls = _resolve(config[section]["class_path"], package)
        accepted = accepted_arguments(cls)
        unknown = set(config[section].get("init_args") or {}) - accepted
        assert not unknown, f"{path.name}: {cls.__name__} does not take {sorted(unknown)}"
    assert set(config) <= {"seed_everything", "model", "data", "trainer"}
