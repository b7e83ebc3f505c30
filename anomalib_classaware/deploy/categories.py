"""Category names of an exported model: written into the OpenVINO IR's ``rt_info``, read back at deployment.

The graph outputs ``pred_category``, an integer id; its names are the model's
``predicted_category_names`` (the datamodule's categories, or ``pseudo_<k>`` for pseudo-class
clusters), stored under ``rt_info["anomalib_classaware"]["category_names"]`` as a JSON list.
Importing this module imports neither torch nor OpenVINO.
"""

from __future__ import annotations

import json
from typing import Any

RT_INFO_SECTION = "anomalib_classaware"
RT_INFO_KEY = "category_names"


def model_category_names(model: Any) -> list[str] | None:
    """Names of the ids a model predicts as ``pred_category`` (``None`` if it predicts no category)."""
    names = getattr(model, "predicted_category_names", None) or getattr(model, "category_names", None)
    return [str(name) for name in names] if names else None


def set_category_names(ov_model: Any, names: list[str] | None) -> None:
    """Record ``names`` in an ``openvino.Model``'s ``rt_info`` (nothing for ``None``)."""
    if names:
        ov_model.set_rt_info(json.dumps(names), [RT_INFO_SECTION, RT_INFO_KEY])


def read_category_names(ov_model: Any) -> list[str] | None:
    """The category names recorded in an ``openvino.Model`` (``None`` if there are none)."""
    if not ov_model.has_rt_info([RT_INFO_SECTION, RT_INFO_KEY]):
        return None
    return [str(name) for name in json.loads(ov_model.get_rt_info([RT_INFO_SECTION, RT_INFO_KEY]).astype(str))]
