"""Tests of the RLR model: masks, the no-identity-shortcut property, shapes, recipe, training signal, checkpoints."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from anomalib import LearningType
from anomalib.data import ImageBatch, ImageItem
from anomalib.engine import Engine
from anomalib.models.components import AnomalibModule
from scipy.ndimage import gaussian_filter
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from anomalib_classaware.data.dataclasses import ClassAwareInferenceBatch
from anomalib_classaware.models import Rlr
from anomalib_classaware.models.components import neighbourhood_mask
from anomalib_classaware.models.rlr import RlrLoss, RlrModel, RlrOutput
from anomalib_classaware.models.rlr.torch_model import RlrTransformer, default_window, largest_masked_window

MEAN, STD = 0.45, 0.225
SMALL = {"hidden_dims": (32, 64), "num_layers": 2, "num_heads": 4}  # fast transformers for tests


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


def small_model(size: int = 32, **kwargs) -> Rlr:
    torch.manual_seed(0)
    return Rlr(
        backbone="resnet18",
        pre_trained=False,
        input_size=(size, size),
        evaluator=False,
        visualizer=False,
        **{**SMALL, **kwargs},
    )


# --- windows and masks ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grid", "window"),
    [((64, 64), 11), ((32, 32), 7), ((16, 16), 5), ((8, 8), 5), ((4, 4), 3), ((2, 2), 1), ((8, 32), 5), ((24, 24), 7)],
)
def test_default_window_reproduces_the_official_sizes_and_extends_them(grid: tuple[int, int], window: int) -> None:
    assert default_window(*grid) == window  # official: 5 at 16x16, 7 at 32x32, 11 at 64x64


@pytest.mark.parametrize("side", range(2, 12))
def test_largest_masked_window_keeps_a_key_for_every_query(side: int) -> None:
    window = largest_masked_window(side, side)
    assert (~neighbourhood_mask(side, side, window)).any(dim=1).all()
    assert not (~neighbourhood_mask(side, side, window + 2)).any(dim=1).all()  # and it is the largest


def test_too_small_grid_or_too_large_window_is_refused() -> None:
    with pytest.raises(ValueError, match="too small for RLR's masked attention"):
        largest_masked_window(1, 1)
    with pytest.raises(ValueError, match="use a window of at most 3"):
        RlrTransformer(channels=8, grid_size=(4, 4), dim=16, num_heads=2, window=5)


def test_each_level_uses_its_window_and_the_masked_branch_its_complement() -> None:
    """A_lc sees the reference inside the clipped window; A_mlk never sees a query's own neighbourhood."""
    model = RlrModel("resnet18", pre_trained=False, input_size=(64, 64), **SMALL).eval()
    assert model.grid_sizes == [(8, 8), (4, 4)]
    masks_seen: list[tuple[str, torch.Tensor]] = []

    def record(name: str):
        def hook(_module, args) -> None:
            masks_seen.append((name, args[3]))

        return hook

    for transformer in model.transformers:
        for layer in transformer.layers:
            layer.reference_attention.register_forward_pre_hook(record("reference"))
            layer.masked_attention.register_forward_pre_hook(record("masked"))
    with torch.no_grad():
        model(torch.rand(1, 3, 64, 64))
    expected = {0: neighbourhood_mask(8, 8, 5), 1: neighbourhood_mask(4, 4, 3)}
    assert len(masks_seen) == 2 * 2 * 2  # levels x layers x branches
    for index, (name, mask) in enumerate(masks_seen):
        level = index // 4
        assert torch.equal(mask, expected[level] if name == "reference" else ~expected[level])
    corner = expected[0].reshape(8, 8, 8, 8)[0, 0]  # the window is clipped at the border: 3 x 3 at a corner
    assert corner.nonzero().tolist() == [[r, c] for r in range(3) for c in range(3)]
    assert not any(key.endswith(("window_mask", "positions")) for key in model.state_dict())  # rebuilt, not saved


# --- no identity shortcut ------------------------------------------------------------------------------------------

HEIGHT, WIDTH, WINDOW = 6, 6, 3


def frozen_reference_transformer(num_layers: int) -> RlrTransformer:
    torch.manual_seed(0)
    transformer = RlrTransformer(
        channels=8, grid_size=(HEIGHT, WIDTH), dim=16, num_layers=num_layers, num_heads=2, window=WINDOW
    ).eval()
    transformer.reference.requires_grad_(False).zero_()  # reference frozen to zeros; no jitter in the transformer
    return transformer


def changed_positions(before: torch.Tensor, after: torch.Tensor) -> set[int]:
    """Token positions whose output moved (by > 1e-5); asserts that the others are unchanged (to 1e-7)."""
    difference = (after - before).abs().amax(dim=(0, 2))
    assert ((difference < 1e-7) | (difference > 1e-5)).all(), f"ambiguous change: {difference}"
    return set((difference > 1e-5).nonzero().flatten().tolist())


def outside_window(position: int) -> set[int]:
    return set((~neighbourhood_mask(HEIGHT, WIDTH, WINDOW)[position]).nonzero().flatten().tolist())


def run(transformer: RlrTransformer, tokens: torch.Tensor, values: list[torch.Tensor] | None = None):
    """Output, and each layer's masked-attention value input; ``values`` replaces those inputs when given."""
    seen: list[torch.Tensor] = []
    handles = []
    for index, layer in enumerate(transformer.layers):

        def hook(_module, args, index=index):
            seen.append(args[2])
            if values is not None:
                return (*args[:2], values[index], *args[3:])
            return None

        handles.append(layer.masked_attention.register_forward_pre_hook(hook))
    with torch.no_grad():
        output = transformer(tokens)
    for handle in handles:
        handle.remove()
    return output, seen


@pytest.mark.parametrize("token", [0, 14, 35])  # corner, interior, opposite corner
def test_one_layer_reaches_other_positions_only_through_masked_values(token: int) -> None:
    transformer = frozen_reference_transformer(num_layers=1)
    tokens = torch.randn(1, HEIGHT * WIDTH, 8)
    perturbed = tokens.clone()
    perturbed[:, token] += 5 * torch.randn(8)
    clean, clean_values = run(transformer, tokens)
    _, perturbed_values = run(transformer, perturbed)

    # the perturbation moves the token itself (its queries) and the positions that see it as a masked value,
    # never its neighbours: nothing reaches a position from inside its own window
    assert changed_positions(clean, run(transformer, perturbed)[0]) == {token} | outside_window(token)
    # the masked attention's values are the only path to other positions ...
    assert changed_positions(clean, run(transformer, perturbed, values=clean_values)[0]) == {token}
    # ... and they never reach the token's own output (no copy of the input to the output)
    assert changed_positions(clean, run(transformer, tokens, values=perturbed_values)[0]) == outside_window(token)


def test_three_layers_mix_positions_only_through_masked_values() -> None:
    transformer = frozen_reference_transformer(num_layers=3)
    tokens = torch.randn(2, HEIGHT * WIDTH, 8)
    perturbed = tokens.clone()
    perturbed[:, 14] += 5 * torch.randn(8)
    clean, clean_values = run(transformer, tokens)
    assert changed_positions(clean, run(transformer, perturbed)[0]) == set(range(HEIGHT * WIDTH))  # mixed by depth
    # with every layer's masked-attention values held at their clean inputs, only the token itself moves
    assert changed_positions(clean, run(transformer, perturbed, values=clean_values)[0]) == {14}


# --- shapes, contract ----------------------------------------------------------------------------------------------


def test_is_a_direct_anomalib_module_with_safe_trainer_arguments() -> None:
    assert AnomalibModule in Rlr.__bases__
    model = small_model()
    assert model.learning_type == LearningType.ONE_CLASS
    assert not {"max_epochs", "max_steps"} & set(model.trainer_arguments)
    assert tuple(model.input_size) == (32, 32)


def test_defaults_follow_the_official_code() -> None:
    model = Rlr(pre_trained=False, evaluator=False, visualizer=False).model  # tf_efficientnet_b6, levels 2-3, 256 px
    assert model.grid_sizes == [(32, 32), (16, 16)]
    assert [t.window for t in model.transformers] == [7, 5]
    assert [t.embedding.out_features for t in model.transformers] == [256, 512]
    assert [t.projection.out_features for t in model.transformers] == [72, 200]
    assert [len(t.layers) for t in model.transformers] == [3, 3]
    assert model.transformers[0].layers[0].masked_attention.num_heads == 8
    assert model.transformers[0].layers[0].ffn[0].out_features == 4 * 256
    assert model.transformers[1].reference.shape == (1, 16 * 16, 200)
    assert isinstance(model.pool, torch.nn.AvgPool2d)
    assert model.jitter_scale == 4.0
    assert model.jitter_probability == 1.0


@pytest.mark.parametrize(
    ("backbone", "channels"),
    [("resnet18", (128, 256)), ("efficientnet_lite0", (40, 112)), ("mobilenetv3_large_100", (40, 112))],
)
def test_shapes_for_two_levels_and_three_backbone_families(backbone: str, channels: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = RlrModel(backbone, pre_trained=False, input_size=(64, 64), **SMALL)
    images = torch.rand(2, 3, 64, 64)
    output = model.train()(images)
    assert isinstance(output, RlrOutput)
    assert [tuple(f.shape) for f in output.features] == [(2, channels[0], 8, 8), (2, channels[1], 4, 4)]
    assert [r.shape for r in output.reconstructions] == [f.shape for f in output.features]
    assert not model.feature_extractor.training
    assert all(not p.requires_grad for p in model.feature_extractor.parameters())
    RlrLoss()(output).backward()
    assert all(p.grad is not None for p in model.transformers.parameters())
    model.eval()
    with torch.no_grad():
        prediction = model(images)
    assert isinstance(prediction, ClassAwareInferenceBatch)
    assert prediction.pred_score.shape == (2,)
    assert prediction.anomaly_map.shape == (2, 1, 64, 64)
    assert torch.isfinite(prediction.anomaly_map).all()


def test_other_input_size_fails_with_a_clear_error() -> None:
    model = small_model(size=64).model.eval()
    with pytest.raises(ValueError, match=r"built for input_size \(64, 64\).*got images of size \(32, 32\)"):
        model(torch.rand(1, 3, 32, 32))
    lightning = small_model(size=64).eval()
    with torch.no_grad():  # through the Lightning module the pre-processor resizes first
        assert lightning(torch.rand(1, 3, 50, 70)).anomaly_map.shape == (1, 1, 64, 64)


def test_jitter_in_training_only_and_targets_are_clean() -> None:
    model = small_model(size=32).model
    images = normalise(textures(2, 32, torch.Generator().manual_seed(0)))
    model.train()
    first, second = model(images), model(images)
    model.eval()
    with torch.no_grad():
        clean = model.reconstruct(model.extract_features(images))
    for a, b, c in zip(first.reconstructions, second.reconstructions, clean, strict=True):
        assert not torch.allclose(a, b)  # a new jitter each call
        assert not torch.allclose(a, c)
    for target, clean_target in zip(first.features, model.extract_features(images), strict=True):
        torch.testing.assert_close(target, clean_target)  # the targets are never jittered
    unjittered = small_model(size=32, jitter_scale=0.0).model.train()
    one, two = unjittered(images), unjittered(images)
    for a, b in zip(one.reconstructions, two.reconstructions, strict=True):
        torch.testing.assert_close(a, b)


# --- loss, anomaly map, recipe -------------------------------------------------------------------------------------


def test_loss_is_mse_plus_cosine_per_level_summed() -> None:
    generator = torch.Generator().manual_seed(0)
    features = [torch.randn(2, 4, 3, 3, generator=generator), torch.randn(2, 6, 2, 2, generator=generator)]
    reconstructions = [torch.randn(f.shape, generator=generator, requires_grad=True) for f in features]
    expected = sum(
        ((r - f) ** 2).mean() + (1 - (r * f).sum(1) / (r.norm(dim=1) * f.norm(dim=1))).mean()
        for f, r in zip(features, reconstructions, strict=True)
    )
    loss = RlrLoss()(RlrOutput(features, reconstructions))
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert all(r.grad is not None for r in reconstructions)


def test_anomaly_map_and_score_follow_the_official_formula() -> None:
    model = small_model(size=32).model.eval()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        prediction = model(images)
        features = model.extract_features(images)
        reconstructions = model.reconstruct(features)
    levels = []
    for f, r in zip(features, reconstructions, strict=True):
        score = ((f - r) ** 2).mean(1) + 1 - F.cosine_similarity(f, r, dim=1)
        levels.append(F.interpolate(score[:, None], size=(32, 32), mode="bilinear", align_corners=True)[:, 0])
    summed = (sum(levels) / len(levels)).numpy()
    # scipy's gaussian_filter (official code) with sigma 4; "mirror" is torch's reflect padding
    blurred = np.stack([gaussian_filter(image, sigma=4, mode="mirror") for image in summed])
    np.testing.assert_allclose(prediction.anomaly_map[:, 0].numpy(), blurred, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(prediction.pred_score.numpy(), blurred.max(axis=(1, 2)), rtol=1e-5, atol=1e-6)


def test_optimizer_is_adam_on_the_transformers_only() -> None:
    model = small_model()
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam)
    assert [group["lr"] for group in optimizer.param_groups] == [1e-4]
    assert optimizer.param_groups[0]["weight_decay"] == 0.0
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in model.model.transformers.parameters()}
    assert not optimised & {id(p) for p in model.model.feature_extractor.parameters()}


def test_training_step_ignores_category_ids_and_needs_none() -> None:
    model = small_model(jitter_scale=0.0)
    images = normalise(textures(2, 32, torch.Generator().manual_seed(3)))
    model.train()
    with_ids = model.training_step(SimpleNamespace(image=images, category_id=torch.tensor([0, 3])), 0)
    plain = model.training_step(ImageBatch(image=images), 0)
    assert torch.isfinite(with_ids["loss"])
    torch.testing.assert_close(with_ids["loss"], plain["loss"])


@pytest.mark.slow  # export parity of every model (ONNX, OpenVINO) is also covered by tests/deploy/
def test_torch_model_exports_with_torch_export() -> None:
    model = small_model().model.eval()
    images = torch.rand(2, 3, 32, 32)
    exported = torch.export.export(model, (images,))
    with torch.no_grad():
        expected = model(images)
        got = exported.module()(images)
    torch.testing.assert_close(got.pred_score, expected.pred_score)
    torch.testing.assert_close(got.anomaly_map, expected.anomaly_map)


# --- training ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_on_texture() -> tuple[RlrModel, list[float]]:
    """An RLR torch model (small transformers) trained briefly on one smooth texture (64 px), with its losses."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = RlrModel(backbone="resnet18", pre_trained=False, input_size=(64, 64), **SMALL).train()
    optimizer = torch.optim.Adam(model.transformers.parameters(), lr=1e-3)
    losses = []
    for _ in range(24):
        loss = RlrLoss()(model(normalise(textures(2, 64, generator))))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return model.eval(), losses


def test_loss_falls_without_nan(trained_on_texture) -> None:
    _, losses = trained_on_texture
    assert all(math.isfinite(loss) for loss in losses)
    assert sum(losses[-4:]) / 4 < 0.3 * sum(losses[:2]) / 2


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


class _TextureDataset(Dataset):
    def __init__(self, count: int, size: int) -> None:
        self.images = normalise(textures(count, size, torch.Generator().manual_seed(4)))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> ImageItem:
        return ImageItem(image=self.images[index], gt_label=torch.tensor(0), image_path=f"texture_{index}.png")


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> tuple[Rlr, object]:
    """Rlr fitted for 3 steps by anomalib's Engine, and its checkpoint."""
    root = tmp_path_factory.mktemp("rlr_fit")
    model = small_model()
    reference = [t.reference.detach().clone() for t in model.model.transformers]
    backbone = {k: v.clone() for k, v in model.model.feature_extractor.state_dict().items()}
    loader = DataLoader(_TextureDataset(4, 32), batch_size=2, collate_fn=ImageBatch.collate)
    engine = Engine(max_steps=3, default_root_dir=root, logger=False, enable_progress_bar=False, devices=1)
    engine.fit(model, train_dataloaders=loader)
    checkpoint = root / "rlr.ckpt"
    engine.trainer.save_checkpoint(checkpoint)
    model.initial = (reference, backbone)
    return model, checkpoint


def test_engine_fit_trains_the_reference_and_keeps_the_backbone(fitted) -> None:
    model, _ = fitted
    reference, backbone = model.initial
    assert model.global_step == 3
    for before, transformer in zip(reference, model.model.transformers, strict=True):
        assert not torch.equal(before, transformer.reference.detach())  # the reference is learned
    for key, value in model.model.feature_extractor.state_dict().items():
        torch.testing.assert_close(value, backbone[key], rtol=0, atol=0)  # weights and BatchNorm statistics


def test_checkpoint_round_trip_gives_identical_outputs(fitted) -> None:
    model, checkpoint = fitted
    loaded = Rlr.load_from_checkpoint(checkpoint, evaluator=False, visualizer=False)  # weights_only=True
    assert loaded.hparams["backbone"] == "resnet18"
    assert tuple(loaded.hparams["hidden_dims"]) == (32, 64)
    assert [t.window for t in loaded.model.transformers] == [3, 1]  # 4x4 and 2x2 grids at 32 px
    images = torch.rand(2, 3, 32, 32)
    model.eval()
    loaded.eval()
    with torch.no_grad():
        expected, got = model(images), loaded(images)
    torch.testing.assert_close(got.anomaly_map, expected.anomaly_map, rtol=0, atol=0)
    torch.testing.assert_close(got.pred_score, expected.pred_score, rtol=0, atol=0)
