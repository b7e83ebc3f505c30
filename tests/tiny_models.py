"""Init arguments and a demo datamodule that keep the models of the package tiny in tests (shared by the folders)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anomalib_classaware.data import MultiClassDemo

TINY_INIT_ARGS: dict[str, dict[str, Any]] = {
    "Rlr": {"hidden_dims": (32, 64), "num_layers": 1, "num_heads": 4},
    "MintAd": {
        "hidden_dim": 32,
        "num_heads": 4,
        "feedforward_dim": 64,
        "num_encoder_layers": 1,
        "num_decoder_layers": 1,
        "neighbour_window": 3,
        "embedding_dim": 8,
        "inr_hidden_dim": 32,
    },
}
"""Per-model arguments on top of ``backbone="resnet18", pre_trained=False``; a model missing here uses its defaults."""


def tiny_demo_datamodule(
    root: Path,
    categories: Sequence[str] = ("brick", "coins"),
    *,
    size: int = 32,
    num_train: int = 6,
    eval_batch_size: int = 4,
    **kwargs: Any,
) -> MultiClassDemo:
    """A demo datamodule small enough for unit tests: 2 + 2 test images per category, batches of 4, no workers."""
    return MultiClassDemo(
        root=root,
        categories=list(categories),
        image_size=size,
        num_train=num_train,
        num_test_good=2,
        num_test_defective=2,
        train_batch_size=4,
        eval_batch_size=eval_batch_size,
        num_workers=0,
        **kwargs,
    )
