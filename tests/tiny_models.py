"""Init arguments that keep each model of the package tiny in tests (shared by the test folders)."""

from __future__ import annotations

from typing import Any

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
