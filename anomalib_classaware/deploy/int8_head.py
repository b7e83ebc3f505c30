"""The anomaly *head* of an exported graph (kept in floating point by the INT8 recipe) and the NNCF model type.

The head is what follows the last parameterised layer: feature distances, anomaly-map interpolation and blur,
score reduction and post-processing (:func:`head_node_names`). Attention models get NNCF's transformer preset
(:func:`nncf_model_type`).
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from torch import nn

if TYPE_CHECKING:
    import nncf
    import openvino as ov
    from anomalib.models.components import AnomalibModule


ModelTypeChoice = Literal["auto", "cnn", "transformer"]


def has_attention(module: nn.Module) -> bool:
    """Whether ``module`` contains an attention block.

    An attention block is a :class:`torch.nn.MultiheadAttention`, a transformer layer of
    ``torch.nn`` or any module whose class name ends with ``Attention`` (e.g. the package's
    :class:`~anomalib_classaware.models.components.networks.attention.MaskedAttention`).
    """
    attention_types = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)
    return any(
        isinstance(child, attention_types) or type(child).__name__.endswith("Attention") for child in module.modules()
    )


def nncf_model_type(module: nn.Module, choice: ModelTypeChoice = "auto") -> nncf.ModelType | None:
    """NNCF ``model_type`` for ``module``: ``TRANSFORMER`` for attention models under ``"auto"``, else ``None``.

    Raises:
        ValueError: on an unknown ``choice``.

    """
    import nncf

    if choice not in {"auto", "cnn", "transformer"}:
        msg = f"Unknown model type {choice!r}; expected 'auto', 'cnn' or 'transformer'."
        raise ValueError(msg)
    if choice == "transformer" or (choice == "auto" and has_attention(module)):
        return nncf.ModelType.TRANSFORMER
    return None


def _scopes(node: Any) -> list[str] | None:
    """The torch module names of an ONNX node (the dynamo exporter's ``pkg.torch.onnx.name_scopes``)."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                names = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            return [str(name) for name in names] if isinstance(names, list | tuple) else None
    return None


def head_node_names(onnx_path: str | Path, module: nn.Module, root: Sequence[str] = ("", "model")) -> set[str]:
    """Names of the ONNX nodes of the "head": everything after the last parameterised layer.

    A node is part of the network if one of the torch modules it was traced in (below the
    Lightning module ``""`` and the torch model ``"model"``) has parameters (convolutions, linear
    layers, norms, attention blocks), or if it feeds such a node (activations and residual
    additions written as functions between layers, pre-processing). The others form the head:
    feature distances, anomaly map, blur, score reduction, post-processing. Nodes without scope
    metadata count as network.
    """
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    parameterised: dict[str, bool] = {}

    def has_parameters(name: str) -> bool:
        if name not in parameterised:
            try:
                submodule = module.get_submodule(name)
            except AttributeError:  # the op's own name, not a module
                parameterised[name] = False
            else:
                parameterised[name] = any(True for _ in submodule.parameters())
        return parameterised[name]

    candidates, network = set(), []
    for node in graph.node:
        scopes = _scopes(node)
        if scopes is not None and not any(has_parameters(name) for name in scopes if name not in root):
            candidates.add(node.name)
        else:
            network.append(node)
    producers = {output: node for node in graph.node for output in node.output if output}
    feeds_network: set[str] = set()
    stack = list(network)
    while stack:  # every ancestor of a network node belongs to the network
        for tensor in stack.pop().input:
            producer = producers.get(tensor)
            if producer is not None and producer.name not in feeds_network:
                feeds_network.add(producer.name)
                stack.append(producer)
    return candidates - feeds_network


def ignored_head_scope(model: ov.Model, head: set[str]) -> nncf.IgnoredScope:
    """NNCF ignored scope of the OpenVINO ops that come from the ONNX head nodes (``name`` or ``name/...``)."""
    import nncf

    names = sorted(op.get_friendly_name() for op in model.get_ops() if op.get_friendly_name().split("/")[0] in head)
    return nncf.IgnoredScope(names=names, validate=False)


def network_recipe(model: AnomalibModule, fp32: ov.Model, head: set[str], model_type: ModelTypeChoice) -> dict:
    """NNCF arguments of the package's network-only INT8: the model type and the head left in floating point."""
    return {"model_type": nncf_model_type(model.model, model_type), "ignored_scope": ignored_head_scope(fp32, head)}
