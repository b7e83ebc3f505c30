"""Every model: seeded runs repeat exactly, resuming continues the schedules, a NaN loss stops training cleanly,
and an image of a category never trained on gets a finite score.

Per model one reference fit (3 optimizer steps, 2 per epoch, checkpoint at the end of epoch 0) is shared by
the reproducibility, resume and unseen-category tests.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from anomalib_classaware.callbacks import FiniteLossGuard, NonFiniteLossError, RandomStateCheckpoint
from anomalib_classaware.data.multiclass import attach_training_guards

from .helpers import (
    MODEL_NAMES,
    TRAINED_CATEGORIES,
    UNSEEN_CATEGORY,
    fit,
    float_state,
    make_model,
    max_abs_difference,
    tiny_datamodule,
)

MAX_STEPS = 3  # epoch 0: steps 0-1 (checkpoint after it), epoch 1: step 2
RESUME_TOLERANCE = 1e-6


def seeded_model(name: str) -> Any:
    seed_everything(0, workers=True)
    return make_model(name)


def _checkpointing(directory: Path) -> ModelCheckpoint:
    return ModelCheckpoint(dirpath=directory, filename="{step}", every_n_train_steps=2, save_top_k=-1)


@pytest.fixture(scope="module", params=MODEL_NAMES)
def reference(request: pytest.FixtureRequest, tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One uninterrupted seeded fit of the model: weights, per-step record, checkpoint after epoch 0, engine."""
    name = request.param
    workdir = tmp_path_factory.mktemp(f"reference_{name}")
    model = seeded_model(name)
    engine, recorder = fit(
        model,
        tiny_datamodule(tiny_root),
        workdir,
        MAX_STEPS,
        callbacks=[_checkpointing(workdir / "checkpoints")],
    )
    return {
        "name": name,
        "model": model,
        "engine": engine,
        "state": float_state(model.model),
        "steps": recorder.steps,
        "checkpoint": workdir / "checkpoints" / "step=2.ckpt",
    }


def _test_predictions(model: Any, root: Path) -> torch.Tensor:
    datamodule = tiny_datamodule(root)
    datamodule.setup()
    model.eval()
    with torch.no_grad():
        batches = datamodule.test_dataloader()
        scores = [model.model(model.pre_processor.transform(batch.image)).pred_score for batch in batches]
    return torch.cat(scores)


def test_two_seeded_runs_are_identical(reference: dict, tiny_root: Path, tmp_path: Path) -> None:
    model = seeded_model(reference["name"])
    _, recorder = fit(
        model, tiny_datamodule(tiny_root), tmp_path, MAX_STEPS, callbacks=[_checkpointing(tmp_path / "ckpt")]
    )
    assert len(recorder.steps) == MAX_STEPS
    assert recorder.steps == reference["steps"]  # losses, learning rates, logged schedules, images of each batch
    assert max_abs_difference(float_state(model.model), reference["state"]) == 0.0
    torch.testing.assert_close(
        _test_predictions(model, tiny_root), _test_predictions(reference["model"], tiny_root), rtol=0, atol=0
    )


def test_resume_continues_schedules_and_matches_the_uninterrupted_run(
    reference: dict, tiny_root: Path, tmp_path: Path
) -> None:
    assert reference["checkpoint"].is_file()
    model = seeded_model(reference["name"])
    _, recorder = fit(
        model,
        tiny_datamodule(tiny_root),
        tmp_path,
        MAX_STEPS,
        ckpt_path=reference["checkpoint"],
        callbacks=[_checkpointing(tmp_path / "ckpt")],
    )
    resumed, uninterrupted = recorder.steps, reference["steps"][2:]
    assert [step["step"] for step in resumed] == [step["step"] for step in uninterrupted] == [3]
    for got, expected in zip(resumed, uninterrupted, strict=True):
        assert got["images"] == expected["images"]  # same data order: the random states were restored
        assert got["lr"] == pytest.approx(expected["lr"], rel=1e-12)
        assert got["logged"] == pytest.approx(expected["logged"], rel=1e-5, abs=1e-6)
        assert got["loss"] == pytest.approx(expected["loss"], rel=1e-5, abs=1e-6)
    assert max_abs_difference(float_state(model.model), reference["state"]) <= RESUME_TOLERANCE


def test_unseen_category_gets_a_finite_score(reference: dict, tiny_root: Path) -> None:
    """Test and predict with a datamodule that adds a category the model never saw (its id too)."""
    model, engine = reference["model"], reference["engine"]
    datamodule = tiny_datamodule(tiny_root, categories=(*TRAINED_CATEGORIES, UNSEEN_CATEGORY))
    batches = engine.predict(model, datamodule=datamodule)
    unseen = [
        (score, anomaly_map)
        for batch in batches
        for score, anomaly_map, category in zip(batch.pred_score, batch.anomaly_map, batch.category, strict=True)
        if category == UNSEEN_CATEGORY
    ]
    assert len(unseen) == 2 + 2  # good + defective test images of the unseen category
    for score, anomaly_map in unseen:
        assert math.isfinite(float(score))
        assert torch.isfinite(anomaly_map).all()
    results = engine.test(model, datamodule=datamodule)
    assert results  # per-category metrics were computed, the unseen category included
    assert any(key.startswith(f"{UNSEEN_CATEGORY}/") for key in results[0])


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(name: str, tiny_root: Path, tmp_path: Path) -> None:
    model = seeded_model(name)
    original_training_step = model.training_step

    def poisoned_training_step(batch: Any, *args: Any, **kwargs: Any) -> Any:
        output = original_training_step(batch, *args, **kwargs)
        if model.global_step == 1:  # the second step: one good step (and checkpoint) before it
            if isinstance(output, dict):
                return {**output, "loss": output["loss"] * math.nan}
            return output * math.nan
        return output

    model.training_step = poisoned_training_step
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True)
    with pytest.raises(NonFiniteLossError) as error:
        fit(model, tiny_datamodule(tiny_root), tmp_path, 3, callbacks=[checkpoints], limit_val_batches=0)
    message = str(error.value)
    assert message.startswith(f"{type(model).__name__}: the training loss is not finite at global step 1 ")
    assert "loss = nan" in message
    assert "Training stopped before this step changed the weights" in message
    assert re.search(r"Images of this batch: \['.*\.png'", message)
    last = tmp_path / "ckpt" / "last.ckpt"
    assert f"Last good checkpoint: {last}" in message
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 1
    state = checkpoint["state_dict"]
    weights = {key.removeprefix("model."): value for key, value in state.items() if key.startswith("model.")}
    assert all(torch.isfinite(value).all() for value in weights.values() if value.is_floating_point())
    # No optimizer step was taken: the parameters are those of the checkpoint (the forward pass of the bad
    # batch may have updated BatchNorm running statistics in memory; the checkpoint on disk is untouched).
    parameters = {key: value.detach() for key, value in model.model.named_parameters()}
    assert max_abs_difference(parameters, {key: weights[key] for key in parameters}) == 0.0


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_installs_the_training_guards(name: str) -> None:
    """Through ``TrainingGuardsMixin``: our datamodules add the guards, anomalib's own datamodules do not."""
    callbacks = make_model(name, evaluator=False).configure_callbacks()
    types = {type(callback) for callback in callbacks}
    assert {FiniteLossGuard, RandomStateCheckpoint} <= types, (
        f"{name} lacks the training guards: add TrainingGuardsMixin "
        "(anomalib_classaware.models.components.lightning.mixins) before AnomalibModule in its bases."
    )


def test_datamodule_adds_each_guard_once_before_the_checkpoint_callbacks(tiny_root: Path) -> None:
    trainer = Trainer(callbacks=[FiniteLossGuard(max_paths=2), ModelCheckpoint()], logger=False)
    attach_training_guards(trainer)
    attach_training_guards(trainer)
    kinds = [type(callback) for callback in trainer.callbacks]
    assert kinds.count(FiniteLossGuard) == kinds.count(RandomStateCheckpoint) == 1
    assert next(c for c in trainer.callbacks if isinstance(c, FiniteLossGuard)).max_paths == 2  # the user's kept
    assert kinds.index(RandomStateCheckpoint) < kinds.index(ModelCheckpoint)
    datamodule = tiny_datamodule(tiny_root, training_guards=False)
    plain = Trainer(logger=False, enable_checkpointing=False)
    datamodule.trainer = plain
    datamodule.setup()
    assert not any(isinstance(c, (FiniteLossGuard, RandomStateCheckpoint)) for c in plain.callbacks)
