"""Residual calibration: the statistics, the identity before fitting, and ClassAwareRecon's fit/refit/checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from anomalib.engine import Engine

from anomalib_classaware.data import MultiClassDemo
from anomalib_classaware.models import ClassAwareRecon
from anomalib_classaware.models.components.networks.residual_calibration import ResidualCalibration, ResidualMoments
from tests.tiny_models import tiny_demo_datamodule

CATEGORIES = ["brick", "coins"]


def random_level_maps(count: int, generator: torch.Generator) -> list[torch.Tensor]:
    return [torch.rand(count, 1, 4, 4, generator=generator), torch.rand(count, 1, 2, 2, generator=generator) * 3]


def test_calibrated_maps_are_standardised_per_category_and_position() -> None:
    generator = torch.Generator().manual_seed(0)
    maps = random_level_maps(40, generator)
    categories = torch.tensor([0, 1] * 20)
    maps[0][categories == 1] += 5.0  # category 1 has another residual level
    moments = ResidualMoments(2)
    for start in range(0, 40, 16):  # in batches, as the fit pass adds them
        moments.update([level[start : start + 16] for level in maps], categories[start : start + 16])
    calibration = ResidualCalibration(shrinkage=0.5)
    calibration.fit(moments)
    assert calibration.fitted and calibration.mean.shape == (2, 16 + 4)

    calibrated = calibration(maps, categories)
    for category in (0, 1):
        chosen = categories == category
        for level, raw in zip(calibrated, maps, strict=True):
            # reference: the same formula from torch's own moments of that category's maps
            position_std = raw[chosen].std(dim=0, unbiased=False)
            level_std = raw[chosen].std(unbiased=False)
            expected = (raw[chosen] - raw[chosen].mean(dim=0)) / (position_std + 0.5 * level_std + 1e-6)
            assert torch.allclose(level[chosen], expected, atol=1e-4)
            assert level[chosen].mean(dim=0).abs().max() < 1e-4  # centred at every position


def test_identity_before_fitting_and_after_reset() -> None:
    generator = torch.Generator().manual_seed(1)
    maps = random_level_maps(3, generator)
    calibration = ResidualCalibration()
    categories = torch.zeros(3, dtype=torch.long)
    assert all(torch.equal(a, b) for a, b in zip(calibration(maps, categories), maps, strict=True))
    moments = ResidualMoments(1)
    moments.update(maps, categories)
    calibration.fit(moments)
    assert not torch.equal(calibration(maps, categories)[0], maps[0])
    calibration.reset()
    assert not calibration.fitted
    assert torch.equal(calibration(maps, categories)[0], maps[0])


def test_category_without_images_gets_the_statistics_of_all_images() -> None:
    generator = torch.Generator().manual_seed(2)
    maps = random_level_maps(6, generator)
    moments = ResidualMoments(3)
    moments.update(maps, torch.tensor([0, 0, 0, 2, 2, 2]))
    mean, _ = moments.mean_and_scale(0.5)
    everything = torch.cat([level.flatten(1) for level in maps], dim=1).mean(dim=0)
    assert torch.allclose(mean[1], everything, atol=1e-6)


def test_bad_inputs_are_refused_with_the_reason() -> None:
    generator = torch.Generator().manual_seed(3)
    maps = random_level_maps(2, generator)
    moments = ResidualMoments(2)
    with pytest.raises(ValueError, match=r"Category ids \[0, 5\] outside range\(2\)"):
        moments.update(maps, torch.tensor([0, 5]))
    with pytest.raises(RuntimeError, match="no training image was seen"):
        moments.mean_and_scale(0.5)
    moments.update(maps, torch.tensor([0, 1]))
    calibration = ResidualCalibration()
    calibration.fit(moments)
    with pytest.raises(ValueError, match="the input size changed since training"):
        calibration([torch.rand(2, 1, 8, 8)], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="shrinkage"):
        ResidualCalibration(shrinkage=-1.0)


def small_model(**kwargs: object) -> ClassAwareRecon:
    torch.manual_seed(0)
    return ClassAwareRecon(
        backbone="resnet18", pre_trained=False, input_size=(32, 32), evaluator=False, visualizer=False, **kwargs
    )


def demo_datamodule(root: Path) -> MultiClassDemo:
    return tiny_demo_datamodule(root, CATEGORIES)


def reference_statistics(model: ClassAwareRecon, datamodule: MultiClassDemo) -> tuple[torch.Tensor, torch.Tensor]:
    """The statistics recomputed from scratch: every training image through the network in eval mode."""
    model.model.eval()
    moments = ResidualMoments(max(1, model.model.category_prototypes.num_categories))
    with torch.no_grad():
        for batch in datamodule.train_dataloader():
            maps, categories = model.model.inference_level_maps(model.pre_processor.transform(batch.image))
            moments.update(maps, categories)
    return moments.mean_and_scale(model.model.residual_calibration.shrinkage)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[ClassAwareRecon, Engine, MultiClassDemo, Path]:
    root = tmp_path_factory.mktemp("calibration")
    datamodule = demo_datamodule(root / "demo")
    model = small_model()
    engine = Engine(max_steps=4, default_root_dir=root, logger=False, enable_progress_bar=False, devices=1)
    engine.fit(model, datamodule=datamodule)  # 3 steps an epoch: validation at step 3, then one more step
    checkpoint = root / "model.ckpt"
    engine.trainer.save_checkpoint(checkpoint)
    return model, engine, datamodule, checkpoint


def test_fit_describes_the_trained_network_per_predicted_category(fitted) -> None:
    model, _, datamodule, checkpoint = fitted
    calibration = model.model.residual_calibration
    assert calibration.fitted and calibration.num_categories == len(CATEGORIES)
    assert not model._calibration_stale
    # refitted after the 4th step (the checkpoint's save), so it matches the final network
    mean, scale = reference_statistics(model, datamodule)
    assert torch.allclose(calibration.mean, mean, atol=1e-5)
    assert torch.allclose(calibration.scale, scale, atol=1e-5)
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    assert torch.equal(saved["model.residual_calibration.mean"], calibration.mean)


def test_inference_uses_the_calibrated_maps_and_the_checkpoint_restores_them(fitted) -> None:
    model, _, _, checkpoint = fitted
    images = torch.randn(3, 3, 32, 32)
    model.model.eval()
    with torch.no_grad():
        output = model.model(images)
        maps, categories = model.model.inference_level_maps(images)
        calibration = model.model.residual_calibration
        flat = torch.cat([level.flatten(1) for level in maps], dim=1)
        expected_flat = (flat - calibration.mean[categories]) / calibration.scale[categories]
        expected_maps = [
            part.reshape(level.shape)
            for part, level in zip(expected_flat.split([level[0].numel() for level in maps], 1), maps, strict=True)
        ]
        expected_map, expected_score = model.model.anomaly_map_generator.from_level_maps(expected_maps)
    assert torch.allclose(output.anomaly_map, expected_map, atol=1e-5)
    assert torch.allclose(output.pred_score, expected_score, atol=1e-5)
    assert torch.equal(output.pred_category, categories)

    restored = ClassAwareRecon.load_from_checkpoint(checkpoint)
    restored.model.eval()
    with torch.no_grad():
        assert torch.allclose(restored.model(images).pred_score, output.pred_score, atol=1e-6)
    assert torch.equal(restored.model.residual_calibration.scale, calibration.scale)
    assert not restored._calibration_stale


def test_training_marks_the_statistics_stale_and_test_refits_them(fitted) -> None:
    model, engine, datamodule, _ = fitted
    with torch.no_grad():
        for parameter in model.model.decoder.parameters():
            parameter.add_(0.05)  # the network changed since the fit ...
    model._calibration_stale = True  # ... as after a training step (on_train_batch_end)
    engine.test(model, datamodule=datamodule, verbose=False)
    assert not model._calibration_stale
    mean, _ = reference_statistics(model, datamodule)
    assert torch.allclose(model.model.residual_calibration.mean, mean, atol=1e-5)


def test_unfitted_calibration_without_training_data_is_an_error() -> None:
    model = small_model()
    with pytest.raises(RuntimeError, match="residual_calibration is on but not fitted, and no training data"):
        model._refresh_residual_calibration()


def test_off_means_no_module_and_the_uncalibrated_map() -> None:
    model = small_model(residual_calibration=False)
    assert model.model.residual_calibration is None
    images = torch.randn(2, 3, 32, 32)
    model.model.eval()
    with torch.no_grad():
        maps, _ = model.model.inference_level_maps(images)
        expected, _ = model.model.anomaly_map_generator.from_level_maps(maps)
        assert torch.allclose(model.model(images).anomaly_map, expected)
    with pytest.raises(RuntimeError, match="residual_calibration off"):
        model.fit_residual_calibration([])


def test_checkpoint_written_before_the_calibration_loads_unfitted_and_test_fits_it(fitted, tmp_path: Path) -> None:
    _, _, datamodule, checkpoint = fitted
    old = torch.load(checkpoint, map_location="cpu", weights_only=False)
    saved_mean = old["state_dict"].pop("model.residual_calibration.mean")
    del old["state_dict"]["model.residual_calibration.scale"]
    old_path = tmp_path / "old.ckpt"
    torch.save(old, old_path)
    restored = ClassAwareRecon.load_from_checkpoint(old_path)
    assert not restored.model.residual_calibration.fitted
    engine = Engine(default_root_dir=tmp_path, logger=False, enable_progress_bar=False, devices=1)
    engine.test(restored, datamodule=datamodule, verbose=False)
    assert restored.model.residual_calibration.fitted
    # the same network and training images as at the save: the fit at test reproduces the saved statistics
    assert torch.allclose(restored.model.residual_calibration.mean, saved_mean, atol=1e-5)
