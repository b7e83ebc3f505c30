"""The ``anomalib.plugins`` entry point of this package.

Importing it defines our ``AnomalibModule`` and ``AnomalibDataModule`` subclasses, which is
what anomalib's CLI (jsonargparse subclass resolution), ``list_models`` and ``get_model``
search. :func:`register` additionally exposes them on ``anomalib.models`` / ``anomalib.data``
and allow-lists our model modules in ``anomalib.models.ALLOWED_MODULES`` so that
``get_model({"class_path": "anomalib_classaware.models.ReContrast"})`` and
``get_datamodule({"class_path": "MultiClassDemo"})`` work as they do for built-ins.
"""

from __future__ import annotations

import anomalib.data
import anomalib.models

from anomalib_classaware import data as _data
from anomalib_classaware import models as _models

MODEL_CLASSES = tuple(getattr(_models, name) for name in _models.__all__)
DATAMODULE_CLASSES = tuple(getattr(_data, name) for name in _data.DATAMODULES)


def register() -> None:
    """Expose our classes on anomalib's namespaces and allow-list our model modules (idempotent)."""
    for cls in MODEL_CLASSES:
        if not hasattr(anomalib.models, cls.__name__):
            setattr(anomalib.models, cls.__name__, cls)
        module = cls.__module__
        while module:  # allow the class's module and each parent package: a.b.c, a.b, a
            anomalib.models.ALLOWED_MODULES.add(module)
            module = module.rpartition(".")[0]
    for cls in DATAMODULE_CLASSES:
        if not hasattr(anomalib.data, cls.__name__):
            setattr(anomalib.data, cls.__name__, cls)
