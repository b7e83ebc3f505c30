"""Tests of the ReContrast model: contract, gradients, recipe, training signal, checkpoints, export."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from anomalib import LearningType
from anomalib.data import ImageBatch, ImageItem
from anomalib.data.utils import read_image
from anomalib.engine import Engine
from anomalib.models.components import AnomalibModule
from torch.utils.data import DataLoader, Dataset

from anomalib_classaware.data.dataclasses import ClassAwareInferenceBatch
from anomalib_classaware.data.demo_builder import build_demo_dataset
from anomalib_classaware.models import ReContrast
from anomalib_classaware.models.components import alpha_schedule
from anomalib_classaware.models.recontrast import ReContrastLoss, ReContrastModel, ReContrastOutput

MEAN, STD = 0.45, 0.225


def textures(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Raw [0, 1] images of one smooth periodic texture with random phase and a little noise."""
    y, x = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    images = []
    for _ in range(count):
        phase = torch.rand(2, generator=generator) * 2 * math.pi
        base = 0.5 + 0.2 * torch.sin(2 * math.pi * x / 8 + phase[0]) * torch.cos(2 * math.pi * y / 8 + phase[1])
        images.append(
            torch.stack([base, 0.9 * base, 0.8 * base]) + 0.02 * torch.randn(3, size, size, generator=generator)
        )
    return torch.stack(images).clamp(0, 1)


def normalise(images: torch.Tensor) -> torch.Tensor:
    return (images - MEAN) / STD


def small_model(size: int = 32, **kwargs) -> ReContrast:
    torch.manual_seed(0)
    return ReContrast(
        backbone="resnet18",
        pre_trained=False,
        input_size=(size, size),
        evaluator=False,
        visualizer=False,
        **kwargs,
    )


def test_is_a_direct_anomalib_module_with_safe_trainer_arguments() -> None:
    assert AnomalibModule in ReContrast.__bases__
    model = small_model()
    assert model.learning_type == LearningType.ONE_CLASS
    assert not {"max_epochs", "max_steps"} & set(model.trainer_arguments)
    assert tuple(model.input_size) == (32, 32)


def test_output_contract_in_train_and_eval_mode() -> None:
    model = small_model().model
    images = normalise(textures(2, 32, torch.Generator().manual_seed(0)))
    model.train()
    assert model.decoder.training
    assert model.bottleneck.training
    assert not model.encoder.training  # trainable encoder: BatchNorm statistics stay the pretrained ones
    assert not model.frozen_encoder.training
    assert not any(m.training for m in model.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d))
    running_mean = model.encoder.bn1.running_mean.clone()
    output = model(images)
    torch.testing.assert_close(model.encoder.bn1.running_mean, running_mean)
    assert isinstance(output, ReContrastOutput)
    assert len(output.targets()) == len(output.reconstructions()) == 6
    for target, reconstruction in zip(output.targets(), output.reconstructions(), strict=True):
        assert target.shape == reconstruction.shape
    assert [t.shape[1] for t in output.frozen_features] == [64, 128, 256]

    model.eval()
    with torch.no_grad():
        prediction = model(images)
    assert isinstance(prediction, ClassAwareInferenceBatch)
    assert prediction.pred_score.shape == (2,)
    assert prediction.anomaly_map.shape == (2, 1, 32, 32)
    assert torch.isfinite(prediction.anomaly_map).all()


def test_non_square_input_size() -> None:
    model = ReContrast(
        backbone="resnet18", pre_trained=False, input_size=(32, 64), evaluator=False, visualizer=False
    ).eval()
    assert tuple(model.input_size) == (32, 64)
    with torch.no_grad():
        prediction = model(torch.rand(1, 3, 50, 70))  # the pre-processor resizes
    assert prediction.anomaly_map.shape == (1, 1, 32, 64)


def test_stop_gradient_into_targets() -> None:
    # Decoder BatchNorm in eval mode: in training mode its batch statistics mix the two halves of the
    # concatenated batch (as in the official code), which is a path into E_a unrelated to the targets.
    model = small_model().model.eval()
    images = normalise(textures(2, 32, torch.Generator().manual_seed(1)))
    loss_fn = ReContrastLoss()

    def encoder_gradient(loss: torch.Tensor) -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        loss.backward()
        return torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in model.encoder.parameters()]
        )

    # D(E_f) reconstructs E_a: E_a is only the (detached) target, so it gets no gradient.
    output = model.cross_reconstruct(images)
    detached = [r.detach() for r in output.frozen_reconstructions]
    assert not encoder_gradient(loss_fn(output._replace(frozen_reconstructions=detached))).any()
    # the check is sensitive: without the stop-gradient the same term would reach E_a
    output = model.cross_reconstruct(images)
    undetached = sum(
        (1 - torch.nn.functional.cosine_similarity(t.flatten(1), r.flatten(1))).mean()
        for t, r in zip(output.trainable_features, output.trainable_reconstructions, strict=True)
    )
    assert encoder_gradient(undetached).any()

    # D(E_a) reconstructs E_f: the gradient reaches E_a through the decoder path only.
    output = model.cross_reconstruct(images)
    detached = [r.detach() for r in output.trainable_reconstructions]
    assert encoder_gradient(loss_fn(output._replace(trainable_reconstructions=detached))).any()
    assert all(p.grad is None for p in model.frozen_encoder.parameters())
    assert not any(p.requires_grad for p in model.frozen_encoder.parameters())


def test_hard_mining_factor_controls_the_gradient() -> None:
    model = small_model().model.train()
    images = normalise(textures(2, 32, torch.Generator().manual_seed(2)))
    gradients = {}
    for factor in (0.0, 1.0):
        model.zero_grad(set_to_none=True)
        # alpha huge: every point is "easy", so factor 0 removes every gradient and factor 1 none
        ReContrastLoss(factor=factor)(model(images), alpha=1e6).backward()
        gradients[factor] = torch.cat([p.grad.flatten() for p in model.decoder.parameters() if p.grad is not None])
    assert not gradients[0.0].any()
    assert gradients[1.0].abs().sum() > 0


def test_training_step_ignores_category_ids_and_needs_none() -> None:
    model = small_model()
    model._planned_steps = 100  # as read from the trainer at fit start
    images = normalise(textures(2, 32, torch.Generator().manual_seed(3)))
    model.train()
    with_ids = model.training_step(SimpleNamespace(image=images, category_id=torch.tensor([0, 3])), 0)
    plain = model.training_step(ImageBatch(image=images), 0)
    assert torch.isfinite(with_ids["loss"])
    torch.testing.assert_close(with_ids["loss"], plain["loss"])


def test_optimizer_recipe_and_schedules() -> None:
    model = small_model()
    model._planned_steps = 50
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, torch.optim.AdamW)
    assert config["lr_scheduler"]["interval"] == "step"
    assert [group["lr"] for group in optimizer.param_groups] == [2e-3, 1e-5]
    assert all(group["amsgrad"] and group["eps"] == 1e-10 for group in optimizer.param_groups)
    assert all(group["weight_decay"] == 1e-5 for group in optimizer.param_groups)
    encoder_ids = {id(p) for p in model.model.encoder.parameters()}
    assert {id(p) for p in optimizer.param_groups[1]["params"]} == encoder_ids
    assert not any(id(p) in encoder_ids for p in optimizer.param_groups[0]["params"])
    frozen_ids = {id(p) for p in model.model.frozen_encoder.parameters()}
    assert not any(id(p) in frozen_ids for group in optimizer.param_groups for p in group["params"])
    learning_rates = []
    for _ in range(50):
        learning_rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert learning_rates[39] == pytest.approx(2e-3)
    assert learning_rates[40] == pytest.approx(2e-3 * 0.2)  # x0.2 at 80 % of the planned steps
    assert alpha_schedule(0, 50) == -3.0
    assert alpha_schedule(5, 50) == 1.0


class _TextureDataset(Dataset):
    def __init__(self, count: int, size: int) -> None:
        self.images = normalise(textures(count, size, torch.Generator().manual_seed(4)))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> ImageItem:
        return ImageItem(image=self.images[index], gt_label=torch.tensor(0), image_path=f"texture_{index}.png")


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> tuple[ReContrast, Engine, object]:
    """ReContrast fitted for 5 steps by anomalib's Engine, and its checkpoint."""
    root = tmp_path_factory.mktemp("recontrast_fit")
    model = small_model()
    model.batchnorm_modes = []

    def record_modes(*args, **kwargs) -> None:
        encoder_bn = [m for m in model.model.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        decoder_bn = [
            m
            for m in (*model.model.bottleneck.modules(), *model.model.decoder.modules())
            if isinstance(m, torch.nn.BatchNorm2d)
        ]
        model.batchnorm_modes.append((any(m.training for m in encoder_bn), all(m.training for m in decoder_bn)))

    model.model.bottleneck.register_forward_pre_hook(record_modes)
    loader = DataLoader(_TextureDataset(4, 32), batch_size=2, collate_fn=ImageBatch.collate)
    engine = Engine(max_steps=5, default_root_dir=root, logger=False, enable_progress_bar=False, devices=1)
    engine.fit(model, train_dataloaders=loader)
    checkpoint = root / "recontrast.ckpt"
    engine.trainer.save_checkpoint(checkpoint)
    return model, engine, checkpoint


def test_engine_fit_follows_the_planned_steps(fitted) -> None:
    model, engine, _ = fitted
    assert model.global_step == 5
    assert model.planned_steps == 5
    assert model.current_alpha() == 1.0
    scheduler = engine.trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.get_last_lr() == pytest.approx([2e-3 * 0.2, 1e-5 * 0.2])  # decayed at step 4 of 5
    # during every training step: encoder BatchNorm frozen, bottleneck and decoder BatchNorm training
    assert model.batchnorm_modes == [(False, True)] * 5


def test_checkpoint_round_trip_gives_identical_outputs(fitted) -> None:
    model, _, checkpoint = fitted
    loaded = ReContrast.load_from_checkpoint(checkpoint, evaluator=False, visualizer=False)  # weights_only=True
    assert loaded.hparams["backbone"] == "resnet18"
    images = torch.rand(2, 3, 32, 32)
    model.eval()
    loaded.eval()
    with torch.no_grad():
        expected, got = model(images), loaded(images)
    torch.testing.assert_close(got.anomaly_map, expected.anomaly_map, rtol=0, atol=0)
    torch.testing.assert_close(got.pred_score, expected.pred_score, rtol=0, atol=0)


def _unified_optimizer(model: ReContrastModel) -> torch.optim.Optimizer:
    """The unified recipe's optimiser (AdamW, amsgrad, two learning rates) without the Lightning module."""
    return torch.optim.AdamW(
        [
            {"params": [*model.bottleneck.parameters(), *model.decoder.parameters()], "lr": 2e-3},
            {"params": list(model.encoder.parameters()), "lr": 1e-5},
        ],
        eps=1e-10,
        weight_decay=1e-5,
        amsgrad=True,
    )


@pytest.fixture(scope="module")
def trained_on_texture() -> tuple[ReContrastModel, list[float]]:
    """A ReContrast torch model trained briefly on one smooth texture (64 px), with its losses."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = ReContrastModel(backbone="resnet18", pre_trained=False, input_size=(64, 64))
    loss_fn = ReContrastLoss()
    optimizer = _unified_optimizer(model)
    steps, losses = 16, []
    model.train()
    for step in range(steps):
        loss = loss_fn(model(normalise(textures(2, 64, generator))), alpha=alpha_schedule(step, steps))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return model.eval(), losses


def test_loss_falls_without_nan(trained_on_texture) -> None:
    _, losses = trained_on_texture
    assert all(math.isfinite(loss) for loss in losses)
    assert sum(losses[-4:]) / 4 < 0.6 * sum(losses[:2]) / 2


def test_anomaly_map_is_high_on_a_planted_defect(trained_on_texture) -> None:
    model, _ = trained_on_texture
    generator = torch.Generator().manual_seed(5)
    normal = textures(2, 64, generator)
    defective = normal.clone()
    defective[:, :, 16:32, 16:32] = 1.0  # bright square
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[16:32, 16:32] = True
    with torch.no_grad():
        on_defect = model(normalise(defective))
        on_normal = model(normalise(normal))
    anomaly_map = on_defect.anomaly_map[:, 0]
    assert (anomaly_map[:, mask].mean(1) > 1.2 * anomaly_map[:, ~mask].mean(1)).all()
    assert mask.flatten()[anomaly_map.flatten(1).argmax(1)].all()  # the peak lies on the defect
    assert (on_defect.pred_score > on_normal.pred_score.max()).all()


def test_torch_model_exports_with_torch_export() -> None:
    model = small_model().model.eval()
    images = torch.rand(2, 3, 32, 32)
    exported = torch.export.export(model, (images,))
    with torch.no_grad():
        expected = model(images)
        got = exported.module()(images)
    torch.testing.assert_close(got.pred_score, expected.pred_score)
    torch.testing.assert_close(got.anomaly_map, expected.anomaly_map)


def test_loss_falls_on_demo_data_without_nan(tmp_path) -> None:
    """A few dozen steps of the unified recipe on real demo photographs of two categories (brick, coffee)."""
    torch.manual_seed(0)
    images = normalise(_demo_train_images(tmp_path / "demo", 64))
    model = ReContrastModel(backbone="resnet18", pre_trained=False, input_size=(64, 64))
    loss_fn = ReContrastLoss()
    optimizer = _unified_optimizer(model)
    steps, losses = 24, []
    generator = torch.Generator().manual_seed(0)
    model.train()
    for step in range(steps):
        batch = images[torch.randperm(len(images), generator=generator)[:4]]
        loss = loss_fn(model(batch), alpha=alpha_schedule(step, steps))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(loss) for loss in losses)
    assert sum(losses[-4:]) / 4 < 0.7 * sum(losses[:2]) / 2


def _demo_train_images(root, size: int) -> torch.Tensor:
    build_demo_dataset(
        root, categories=["brick", "coffee"], image_size=size, num_train=8, num_test_good=1, num_test_defective=1
    )
    return torch.stack([read_image(path, as_tensor=True) for path in sorted(root.glob("*/train/good/*.png"))])
