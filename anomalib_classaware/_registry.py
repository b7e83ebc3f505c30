"""Expose our classes on anomalib's own namespaces, as its built-ins are.

Each of our packages calls these when it finishes importing (so registration never reads a
half-imported module of ours, whatever the import order):

* models are set on ``anomalib.models`` (``get_model({"class_path": "ReContrast"})``) and their
  modules and parent packages are added to ``anomalib.models.ALLOWED_MODULES`` (dotted class
  paths, which saved configs contain);
* datamodules are set on ``anomalib.data`` (``get_datamodule({"class_path": "MultiClassDemo"})``).

Short names in the CLI, ``list_models()`` and ``get_model("ReContrast")`` need no registration:
defining an ``AnomalibModule``/``AnomalibDataModule`` subclass is enough for them.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable


def expose_models(classes: Iterable[type]) -> None:
    """Set ``classes`` on ``anomalib.models`` and allow-list their modules (idempotent)."""
    namespace = importlib.import_module("anomalib.models")
    for cls in classes:
        if not hasattr(namespace, cls.__name__):
            setattr(namespace, cls.__name__, cls)
        module = cls.__module__
        while module:  # the class's module and each parent package: a.b.c, a.b, a
            namespace.ALLOWED_MODULES.add(module)
            module = module.rpartition(".")[0]


def expose_datamodules(classes: Iterable[type]) -> None:
    """Set ``classes`` on ``anomalib.data`` (idempotent)."""
    namespace = importlib.import_module("anomalib.data")
    for cls in classes:
        if not hasattr(namespace, cls.__name__):
            setattr(namespace, cls.__name__, cls)
