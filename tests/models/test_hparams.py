"""Every ``__init__`` argument of every model lands in ``hparams``, in signature order, and survives a checkpoint.

Lightning's ``save_hyperparameters`` collects the arguments by walking the ``__init__`` frames of the class
hierarchy; code that moves the ``__init__`` head into a helper function stops that walk and loses the model's
arguments (``load_from_checkpoint``, resume and ``anomalib test --ckpt_path`` then rebuild another model).
``test_the_check_catches_a_broken_frame_chain`` shows that the check below fails on such code.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import lightning
import pytest
import torch
from anomalib.models.components import AnomalibModule

from anomalib_classaware import ClassAwareRecon, ReContrast, Rlr
from anomalib_classaware.benchmark.baselines import ComponentReverseDistillation
from anomalib_classaware.models import MintAd
from anomalib_classaware.models.components.lightning.mixins import FeatureReconstructionMixin

COMPONENTS = {"pre_processor", "post_processor", "evaluator", "visualizer"}
TINY = {"backbone": "resnet18", "layers": (1, 2), "pre_trained": False, "weights_path": None, "input_size": (64, 64)}

# A value other than the default for every argument (weights_path: a real file would be needed).
NON_DEFAULT_ARGS: dict[type[AnomalibModule], dict[str, Any]] = {
    ClassAwareRecon: {
        **TINY,
        "class_labels": "pseudo",
        "num_pseudo_classes": 3,
        "max_pseudo_classes": 5,
        "temperature": 0.1,
        "global_weight": 0.5,
        "local_weight": 0.25,
        "local_negatives": "one",
        "noise_std": 0.5,
        "noise_fraction": 0.25,
        "noise_probability": 0.75,
        "lr": 1e-3,
        "projection_lr": 2e-4,
        "betas": (0.9, 0.99),
        "lr_decay_fraction": 0.5,
        "lr_decay_factor": 0.5,
        "gradient_clip_val": 1.0,
        "map_reduction": "sum",
        "score_reduction": "topk_mean",
        "topk_ratio": 0.05,
        "blur_sigma": 2.0,
        "residual_calibration": False,
        "category_names": ["a", "b"],
    },
    ReContrast: {
        **TINY,
        "score_reduction": "max",
        "topk_ratio": 0.05,
        "hard_mining_factor": 0.1,
        "alpha_start": -2.0,
        "alpha_end": 0.5,
        "alpha_warmup_fraction": 0.2,
        "lr": 1e-3,
        "encoder_lr": 1e-6,
        "weight_decay": 0.0,
        "lr_decay_fraction": 0.5,
        "lr_decay_factor": 0.5,
        "blur_sigma": 2.0,
        "blur_kernel_size": None,
        "decoder_activation": "relu",
        "class_aware": True,
        "class_labels": "pseudo",
        "num_pseudo_classes": 3,
        "max_pseudo_classes": 5,
        "contrastive_temperature": 0.1,
        "contrastive_global_weight": 0.5,
        "contrastive_local_weight": 0.25,
        "local_negatives": "one",
        "category_names": ["a", "b"],
    },
    Rlr: {
        **TINY,
        "hidden_dims": (32, 64),
        "num_layers": 1,
        "num_heads": 4,
        "ffn_ratio": 2.0,
        "window_sizes": (5, 3),
        "reference_weight": 1.0,
        "pool_size": 1,
        "jitter_scale": 2.0,
        "jitter_probability": 0.5,
        "score_reduction": "topk_mean",
        "topk_ratio": 0.05,
        "blur_sigma": 2.0,
        "blur_kernel_size": 9,
        "lr": 1e-3,
        "weight_decay": 1e-5,
        "category_names": ["a", "b"],
    },
    MintAd: {
        **TINY,
        "num_classes": 2,
        "class_aware": False,
        "class_conditioning": "true_label",
        "hidden_dim": 32,
        "num_encoder_layers": 1,
        "num_decoder_layers": 1,
        "num_heads": 4,
        "feedforward_dim": 64,
        "dropout": 0.0,
        "neighbour_window": 3,
        "feature_stride": 8,
        "jitter_scale": 5.0,
        "jitter_probability": 0.5,
        "embedding_dim": 8,
        "inr_hidden_dim": 32,
        "inr_layers": 2,
        "fourier_frequencies": 1,
        "standardize_features": False,
        "reconstruction_weight": 2.0,
        "classification_weight": 0.5,
        "prior_weight": 0.1,
        "lr": 1e-3,
        "weight_decay": 0.0,
        "lr_decay_fraction": 0.5,
        "lr_decay_factor": 0.5,
        "gradient_clip_val": 1.0,
        "blur_sigma": 2.0,
        "score_reduction": "topk_mean",
        "topk_ratio": 0.05,
        "category_names": ["a", "b"],
    },
    ComponentReverseDistillation: {
        **TINY,
        "map_reduction": "mean",
        "score_reduction": "topk_mean",
        "lr": 1e-3,
        "betas": (0.9, 0.99),
    },
}


def hparams_problems(model: AnomalibModule, cls: type, kwargs: dict[str, Any]) -> list[str]:
    """What differs between ``model.hparams`` and the ``__init__`` arguments it was built with (empty: nothing)."""
    names = [name for name in inspect.signature(cls.__init__).parameters if name != "self" and name not in COMPONENTS]
    problems = []
    if list(model.hparams) != names:
        problems.append(f"keys {list(model.hparams)} != signature {names}")
    problems += [
        f"{name}: {model.hparams.get(name, '<missing>')!r} != {kwargs[name]!r}"
        for name in names
        if name in kwargs and model.hparams.get(name, object()) != kwargs[name]
    ]
    return problems


@pytest.fixture(params=list(NON_DEFAULT_ARGS), ids=lambda cls: cls.__name__)
def built(request: pytest.FixtureRequest) -> tuple[type, dict[str, Any], AnomalibModule]:
    cls = request.param
    kwargs = NON_DEFAULT_ARGS[cls]
    torch.manual_seed(0)
    return cls, kwargs, cls(**kwargs, evaluator=False, visualizer=False)


def test_the_arguments_cover_the_signature(built) -> None:
    cls, kwargs, _ = built
    assert set(kwargs) | COMPONENTS == set(inspect.signature(cls.__init__).parameters) - {"self"}


def test_hparams_hold_every_init_argument_in_signature_order(built) -> None:
    cls, kwargs, model = built
    assert hparams_problems(model, cls, kwargs) == []
    assert model._hparams_name == "kwargs"


def test_hparams_survive_a_checkpoint(built, tmp_path: Path) -> None:
    cls, kwargs, model = built
    checkpoint = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "hparams_name": model._hparams_name,
        "pytorch-lightning_version": lightning.__version__,
    }
    model.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "model.ckpt")
    loaded = cls.load_from_checkpoint(tmp_path / "model.ckpt", evaluator=False, visualizer=False)
    assert hparams_problems(loaded, cls, kwargs) == []


def _init_head(model: AnomalibModule, pre_processor: bool, post_processor: bool) -> None:
    """The kind of helper that breaks ``save_hyperparameters``: it stands between the two ``__init__`` frames."""
    AnomalibModule.__init__(model, pre_processor=pre_processor, post_processor=post_processor, evaluator=False)


class _HelperHead(FeatureReconstructionMixin, AnomalibModule):
    def __init__(self, lr: float = 1e-3, pre_processor: bool = True, post_processor: bool = True) -> None:
        _init_head(self, pre_processor, post_processor)
        self.lr = lr

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        return {}


def test_the_check_catches_a_broken_frame_chain() -> None:
    model = _HelperHead(lr=0.5)
    assert hparams_problems(model, _HelperHead, {"lr": 0.5}) != []
    assert "lr" not in model.hparams
