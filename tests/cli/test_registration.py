"""Plugin registration: entry point + start-up hook, measured in fresh interpreters (subprocesses)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from anomalib_classaware._autoload import DISABLE_ENV_VAR, ENTRY_POINT_GROUP


def _python(code: str, env: dict[str, str] | None = None, *args: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, *args, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=300,
        check=False,
    )


def test_interpreter_start_imports_neither_torch_nor_anomalib() -> None:
    result = _python("import sys; print(sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'anomalib'}))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    importtime = _python("pass", None, "-X", "importtime").stderr
    assert "anomalib_classaware._autoload" in importtime, "the start-up hook (.pth) is not installed"
    imported = {line.rsplit("|", 1)[-1].strip() for line in importtime.splitlines() if "|" in line}
    assert not {name for name in imported if name.split(".")[0] in {"torch", "anomalib", "typing"}}


def test_models_and_datamodules_resolve_without_user_import() -> None:
    result = _python(
        """
        import anomalib.models, anomalib.data
        print(sorted(anomalib.models.list_models(case="pascal") & {"ReContrast", "ReverseDistillation"}))
        model = anomalib.models.get_model("ReContrast", backbone="resnet18", pre_trained=False)
        dotted = anomalib.models.get_model(
            {"class_path": "anomalib_classaware.models.ReContrast",
             "init_args": {"backbone": "resnet18", "pre_trained": False}})
        print(type(model).__module__, type(dotted).__name__)
        print(anomalib.data.get_datamodule({"class_path": "MultiClassDemo", "init_args": {"image_size": 32}}).name)
        """,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    assert lines[0] == "['ReContrast', 'ReverseDistillation']"
    assert lines[1] == "anomalib_classaware.models.recontrast.lightning_model ReContrast"
    assert lines[2] == "MultiClassDemo"


def test_env_var_switches_autoload_off() -> None:
    """Autoload on is covered by every other test here; off: short names are gone, dotted paths still work."""
    result = _python(
        """
        import anomalib.models
        print("ReContrast" in anomalib.models.list_models(case="pascal"))
        from anomalib_classaware.models import ReContrast
        print(ReContrast.__name__)
        """,
        {DISABLE_ENV_VAR: "1"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "ReContrast"]


def test_broken_plugin_warns_and_anomalib_keeps_working(tmp_path: Path) -> None:
    dist_info = tmp_path / "broken_plugin-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nbroken = no_such_module_for_test\n")
    result = _python(
        "import anomalib.models; print('ReContrast' in anomalib.models.list_models(case='pascal'))",
        {"PYTHONPATH": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
    assert "anomalib plugin 'broken' (no_such_module_for_test) failed to load" in result.stderr


# anomalib.metrics first is the hard case: it imports anomalib.data while half-imported itself.
@pytest.mark.parametrize("first", ["anomalib.metrics", "anomalib.engine", "anomalib.cli.cli"])
def test_any_import_order_loads_the_plugin(first: str) -> None:
    result = _python(f"import {first}; import anomalib.models; print(anomalib.models.ReContrast.__name__)")
    assert result.returncode == 0, result.stderr
    assert "failed to load" not in result.stderr
    assert result.stdout.strip() == "ReContrast"
