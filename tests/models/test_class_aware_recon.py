"""Tests of ClassAwareRecon and ReContrast's ``class_aware`` flag: contract, recipe, labels, training, checkpoints."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from anomalib import LearningType
from anomalib.data import ImageBatch
from anomalib.engine import Engine

from anomalib_classaware.data import MultiClassDemo
from anomalib_classaware.data.dataclasses import ClassAwareInferenceBatch
from anomalib_classaware.models import ClassAwareRecon, ReContrast
from anomalib_classaware.models.class_aware_recon import ClassAwareReconOutput
from tests.tiny_models import tiny_demo_datamodule

CATEGORIES = ["brick", "coins"]


def small_model(size: int = 32, **kwargs) -> ClassAwareRecon:
    torch.manual_seed(0)
    return ClassAwareRecon(
        backbone="resnet18", pre_trained=False, input_size=(size, size), evaluator=False, visualizer=False, **kwargs
    )


def demo_datamodule(root: Path, size: int = 32, num_train: int = 6) -> MultiClassDemo:
    return tiny_demo_datamodule(root, CATEGORIES, size=size, num_train=num_train)


def test_output_contract_and_frozen_teacher() -> None:
    model = small_model()
    images = torch.randn(4, 3, 32, 32)
    model.model.train()
    output = model.model(images)
    assert isinstance(output, ClassAwareReconOutput)
    assert [f.shape for f in output.reconstructions] == [f.shape for f in output.view.teacher_features]
    assert [f.shape for f in output.view.projected_features] == [f.shape for f in output.view.teacher_features]
    assert output.view.embedding.ndim == 2
    batch = ImageBatch(image=images)
    batch.category_id = torch.tensor([0, 0, 1, 1])
    labels = model.training_labels(batch, output.view.teacher_features)
    augmented = model.model.encode_view(model.view_augmentation(images))
    losses = model.loss(output, augmented, labels)
    assert torch.isfinite(losses.total)
    assert losses.global_contrastive > 0
    assert losses.local_contrastive > 0
    losses.total.backward()
    assert all(p.grad is None for p in model.model.teacher.parameters())
    assert all(p.grad is not None for p in model.model.projections.parameters())
    assert model.learning_type == LearningType.ONE_CLASS
    assert model.trainer_arguments["gradient_clip_val"] == 5.0


def test_inference_runs_no_contrastive_branch_and_needs_no_label() -> None:
    model = small_model()
    model.model.eval()

    def forbidden(*args, **kwargs):
        raise AssertionError("a training-only branch ran at inference")

    model.model.encode_view = forbidden  # type: ignore[method-assign]
    model.loss.contrastive.forward = forbidden  # type: ignore[method-assign]
    model._view_augmentation = forbidden  # type: ignore[assignment]
    with torch.no_grad():
        first = model.model(torch.randn(2, 3, 32, 32))
    assert isinstance(first, ClassAwareInferenceBatch)
    assert first.pred_score.shape == (2,)
    assert first.anomaly_map.shape == (2, 1, 32, 32)
    # eval mode is deterministic: no noise, no augmentation
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.model(images).pred_score, model.model(images).pred_score)


def test_feature_noise_only_in_training() -> None:
    model = small_model(noise_probability=1.0)
    images = torch.randn(2, 3, 32, 32)
    model.model.train()
    seen = []
    model.model.bottleneck.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0][0].clone()))
    model.model(images)
    projected = model.model.project(model.model.teacher_features(images))
    assert not torch.allclose(seen[0], projected[0])
    model.model.eval()
    model.model(images)
    assert torch.allclose(seen[-1], projected[0])


def test_optimizer_recipe() -> None:
    model = small_model()

    class Trainer:
        estimated_stepping_batches = 50

    model._trainer = Trainer()  # type: ignore[assignment]
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, torch.optim.Adam)
    assert [group["lr"] for group in optimizer.param_groups] == [1e-3, 5e-3]
    assert optimizer.param_groups[0]["betas"] == (0.5, 0.999)
    assert list(scheduler.milestones) == [40]
    assert scheduler.gamma == pytest.approx(0.1)
    trainable = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not trainable & {id(p) for p in model.model.teacher.parameters()}


def test_training_reduces_the_loss_on_demo_images(tmp_path: Path) -> None:
    datamodule = demo_datamodule(tmp_path / "demo", size=32, num_train=8)
    datamodule.setup()
    batch = next(iter(datamodule.train_dataloader()))
    model = small_model()
    images = model.pre_processor.transform(batch.image)
    optimizer = torch.optim.Adam(
        [
            *model.model.projections.parameters(),
            *model.model.bottleneck.parameters(),
            *model.model.decoder.parameters(),
        ],
        lr=5e-3,
        betas=(0.5, 0.999),
    )
    model.model.train()
    totals = []
    for step in range(12):
        torch.manual_seed(step)
        output = model.model(images)
        augmented = model.model.encode_view(model.view_augmentation(images))
        losses = model.loss(output, augmented, model.training_labels(batch, output.view.teacher_features))
        optimizer.zero_grad()
        losses.total.backward()
        optimizer.step()
        totals.append(losses.total.item())
    assert all(torch.isfinite(torch.tensor(totals)))
    assert sum(totals[-3:]) < sum(totals[:3])


@pytest.fixture(scope="module")
def pseudo_fit(tmp_path_factory) -> tuple[ClassAwareRecon, Engine, Path, list[str]]:
    """ClassAwareRecon with two k-means pseudo-classes, fitted for 3 steps on two demo categories."""
    root = tmp_path_factory.mktemp("class_aware_fit")
    model = small_model(class_labels="pseudo", num_pseudo_classes=2)
    engine = Engine(max_steps=3, default_root_dir=root, logger=False, enable_progress_bar=False, devices=1)
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("anomalib_classaware")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        engine.fit(model, datamodule=demo_datamodule(root / "demo"))
    finally:
        logger.removeHandler(handler)
    checkpoint = root / "model.ckpt"
    engine.trainer.save_checkpoint(checkpoint)
    return model, engine, checkpoint, records


def test_pseudo_labels_are_fitted_once_and_reported(pseudo_fit) -> None:
    model, engine, _, records = pseudo_fit
    assert engine.trainer.global_step == 3
    assert model.pseudo_labeler.centroids.shape[0] == 2
    # brick and coins differ in colour statistics even through random weights: the clusters agree with
    # the dataset's categories far better than chance (ARI 0; measured 0.665 with this seed)
    assert model.pseudo_label_ari > 0.3
    messages = [message for message in records if "pseudo-classes by k-means" in message]
    assert len(messages) == 1
    assert "on 12 training images" in messages[0]
    assert f"adjusted Rand index vs the dataset's categories: {model.pseudo_label_ari:.3f}" in messages[0]
    assert model.category_names == CATEGORIES


def test_checkpoint_restores_centroids_and_outputs(pseudo_fit) -> None:
    model, _, checkpoint, _ = pseudo_fit
    restored = ClassAwareRecon.load_from_checkpoint(checkpoint)
    assert restored.class_labels == "pseudo"
    assert torch.equal(restored.pseudo_labeler.centroids, model.pseudo_labeler.centroids)
    images = torch.randn(2, 3, 32, 32)
    model.model.eval()
    restored.model.eval()
    with torch.no_grad():
        assert torch.allclose(restored.model(images).pred_score, model.model(images).pred_score)


def test_recontrast_class_aware_adds_the_contrastive_terms() -> None:
    torch.manual_seed(0)
    plain = ReContrast(backbone="resnet18", pre_trained=False, input_size=(32, 32), evaluator=False, visualizer=False)
    torch.manual_seed(0)
    aware = ReContrast(
        backbone="resnet18",
        pre_trained=False,
        input_size=(32, 32),
        evaluator=False,
        visualizer=False,
        class_aware=True,
    )
    assert plain.contrastive_loss is None
    assert aware.contrastive_loss is not None
    assert set(plain.state_dict()) == set(aware.state_dict())  # no extra weights: nothing new to export
    images = torch.randn(4, 3, 32, 32)
    aware.model.eval()
    plain.model.eval()
    with torch.no_grad():  # identical weights -> identical inference: the flag changes training only
        assert torch.equal(aware.model(images).pred_score, plain.model(images).pred_score)
    aware.model.train()
    output = aware.model(images)
    view = output.view()
    augmented = aware.model.encode_view(aware._view_augmentation(images, aware.pre_processor))
    labels = torch.tensor([0, 1, 0, 1])
    contrastive = aware.contrastive_loss.compare_views(labels, view, augmented)
    assert contrastive.global_loss > 0
    assert contrastive.local_loss > 0
    contrastive.total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in aware.model.encoder.parameters())
    assert all(p.grad is None for p in aware.model.frozen_encoder.parameters())


def _running_statistics(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: buffer.clone()
        for name, buffer in module.named_buffers()
        if name.rsplit(".", 1)[-1] in {"running_mean", "running_var", "num_batches_tracked"}
    }


def _assert_view_leaves_running_statistics(bottleneck: torch.nn.Module, main_pass, view_pass) -> None:
    before = _running_statistics(bottleneck)
    main_pass()
    after_main = _running_statistics(bottleneck)
    assert any(not torch.equal(before[name], after_main[name]) for name in before)  # the main pass does update them
    embedding = view_pass()
    after_view = _running_statistics(bottleneck)
    assert after_view.keys() == after_main.keys()
    for name, value in after_main.items():
        assert torch.equal(after_view[name], value), name
    embedding.sum().backward()  # still a training pass: the view's embedding carries a gradient
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in bottleneck.parameters())


def test_augmented_view_does_not_enter_the_batchnorm_running_statistics() -> None:
    model = small_model(noise_probability=0.0)
    model.model.train()
    images = torch.randn(4, 3, 32, 32)
    view = model.view_augmentation(images)
    _assert_view_leaves_running_statistics(
        model.model.bottleneck, lambda: model.model(images), lambda: model.model.encode_view(view).embedding
    )


def test_recontrast_augmented_view_does_not_enter_the_batchnorm_running_statistics() -> None:
    torch.manual_seed(0)
    model = ReContrast(
        backbone="resnet18",
        pre_trained=False,
        input_size=(32, 32),
        evaluator=False,
        visualizer=False,
        class_aware=True,
    )
    model.model.train()
    images = torch.randn(4, 3, 32, 32)
    view = model._view_augmentation(images, model.pre_processor)
    _assert_view_leaves_running_statistics(
        model.model.bottleneck, lambda: model.model(images), lambda: model.model.encode_view(view).embedding
    )


def test_global_embedding_comes_from_the_clean_projected_features() -> None:
    model = small_model(noise_probability=1.0)  # every training batch is noised
    model.model.train()
    images = torch.randn(4, 3, 32, 32)
    seen: list[torch.Tensor] = []
    model.model.bottleneck.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0][0].clone()))
    torch.manual_seed(1)
    output = model.model(images)
    projected = model.model.project(model.model.teacher_features(images))
    assert not torch.allclose(seen[0], projected[0])  # the reconstruction path is noised
    with torch.no_grad():
        clean = model.model.encode_view(images).embedding  # same images, no noise, batch statistics
    torch.testing.assert_close(output.view.embedding, clean)
    torch.testing.assert_close(output.view.projected_features[0], projected[0])
    seen.clear()
    model.model(images, clean_embedding=False)  # no loss uses the embedding: no extra bottleneck pass
    assert len(seen) == 1


def test_default_noise_probability_noises_about_half_of_the_training_batches() -> None:
    """At the default ``noise_probability`` (0.5) the draw is per batch: some batches clean, some noised."""
    model = small_model()
    assert model.model.noise_probability == 0.5
    model.model.train()
    images = torch.randn(2, 3, 32, 32)
    clean = model.model.project(model.model.teacher_features(images))[0]
    seen: list[torch.Tensor] = []
    model.model.bottleneck.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0][0].clone()))
    torch.manual_seed(0)
    noised = 0
    for _ in range(40):
        seen.clear()
        model.model(images, clean_embedding=False)
        noised += int(not torch.allclose(seen[0], clean))
    assert 10 <= noised <= 30, noised  # Binomial(40, 0.5): outside [10, 30] has probability < 0.2 %
