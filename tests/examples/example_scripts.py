"""Import a script of ``examples/benchmark/`` as a module (the scripts are not part of the package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARK_EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "benchmark"


def load_benchmark_script(name: str) -> ModuleType:
    """``examples/benchmark/<name>.py``, imported and registered in ``sys.modules`` under ``name``."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARK_EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module
