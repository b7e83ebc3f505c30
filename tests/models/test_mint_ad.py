"""Tests of MintAd: contract, INR queries, class conditioning, losses, class counts, checkpoints, export."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from anomalib import LearningType
from anomalib.data import MVTecAD
from anomalib.data.utils import read_image
from anomalib.engine import Engine
from anomalib.models.components import AnomalibModule

from anomalib_classaware.data import MultiClassFolder
from anomalib_classaware.data.dataclasses import ClassAwareInferenceBatch
from anomalib_classaware.data.demo_builder import build_demo_dataset
from anomalib_classaware.models import MintAd
from anomalib_classaware.models.components import RunningStandardizer, fourier_features, grid_coordinates
from anomalib_classaware.models.mint_ad import MintAdLoss, MintAdModel, MintAdOutput, prior_kl

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

# small transformer for tests: 64 px -> 4 x 4 tokens (stride 16), 3 x 3 neighbour mask
SMALL = {
    "hidden_dim": 32,
    "num_heads": 4,
    "feedforward_dim": 64,
    "num_encoder_layers": 1,
    "num_decoder_layers": 2,
    "neighbour_window": 3,
    "embedding_dim": 8,
    "inr_hidden_dim": 32,
}


def small_model(size: int = 64, **kwargs) -> MintAd:
    torch.manual_seed(0)
    arguments = {**SMALL, **kwargs}
    return MintAd(
        backbone=arguments.pop("backbone", "resnet18"),
        pre_trained=False,
        input_size=(size, size),
        evaluator=False,
        visualizer=False,
        **arguments,
    )


def small_torch_model(size: int = 64, **kwargs) -> MintAdModel:
    torch.manual_seed(0)
    return MintAdModel(**{"backbone": "resnet18", "pre_trained": False, "input_size": (size, size), **SMALL, **kwargs})


def test_is_a_direct_anomalib_module_with_safe_trainer_arguments() -> None:
    assert AnomalibModule in MintAd.__bases__
    model = small_model()
    assert model.learning_type == LearningType.ONE_CLASS
    assert not {"max_epochs", "max_steps"} & set(model.trainer_arguments)
    assert model.trainer_arguments["gradient_clip_val"] == 0.1  # UniAD
    assert tuple(model.input_size) == (64, 64)
    assert model.model.num_classes == 1


def test_output_contract_in_train_and_eval_mode() -> None:
    model = small_torch_model(num_classes=3)
    images = torch.randn(2, 3, 64, 64)
    model.train()
    assert not model.backbone.training  # frozen backbone: BatchNorm statistics stay fixed
    output = model(images, category_ids=torch.tensor([0, 2]))
    assert isinstance(output, MintAdOutput)
    assert output.features.shape == output.reconstruction.shape == (2, 64 + 64 + 128 + 256, 4, 4)
    assert output.class_logits.shape == (2, 3)
    assert output.embedding_mean.shape == output.embedding_log_var.shape == (3, 8)
    assert not any(parameter.requires_grad for parameter in model.backbone.parameters())

    model.eval()
    with torch.no_grad():
        prediction = model(images)
    assert isinstance(prediction, ClassAwareInferenceBatch)
    assert prediction.pred_score.shape == (2,)
    assert prediction.anomaly_map.shape == (2, 1, 64, 64)
    assert torch.isfinite(prediction.anomaly_map).all()


def test_map_is_the_blurred_l2_reconstruction_distance() -> None:
    model = small_torch_model().eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        output = model.reconstruct(images)
        prediction = model(images)
    distance = (output.features - output.reconstruction).pow(2).sum(1, keepdim=True).sqrt()
    upsampled = torch.nn.functional.interpolate(distance, size=(64, 64), mode="bilinear", align_corners=True)
    torch.testing.assert_close(prediction.anomaly_map, model.anomaly_map_generator.blur(upsampled))
    torch.testing.assert_close(prediction.pred_score, prediction.anomaly_map.flatten(1).amax(1))


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_lite0"])
def test_any_timm_cnn_trains_with_its_default_levels(backbone: str) -> None:
    model = small_torch_model(backbone=backbone, num_classes=2).train()
    loss_fn = MintAdLoss()
    ids = torch.tensor([0, 1])
    terms = loss_fn(model(torch.randn(2, 3, 64, 64), category_ids=ids), ids)
    assert torch.isfinite(terms.total)
    terms.total.backward()
    for name in ("input_proj", "encoder", "decoder", "output_proj", "class_head", "embeddings", "inr"):
        gradients = [p.grad for p in getattr(model, name).parameters() if p.grad is not None]
        assert gradients, name
        assert any(gradient.abs().sum() > 0 for gradient in gradients), name
    assert all(parameter.grad is None for parameter in model.backbone.parameters())


def test_too_small_token_grid_for_the_window_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="smaller window or a larger input size"):
        small_torch_model(neighbour_window=7)  # 4 x 4 tokens, 7 x 7 mask: nothing left to attend to
    assert small_torch_model(neighbour_window=0).attention_mask is None


def test_non_square_input_size() -> None:
    model = MintAd(
        backbone="resnet18", pre_trained=False, input_size=(64, 96), evaluator=False, visualizer=False, **SMALL
    )
    assert model.model.grid_size == (4, 6)
    model.eval()
    with torch.no_grad():
        prediction = model(torch.rand(1, 3, 50, 70))  # the pre-processor resizes
    assert prediction.anomaly_map.shape == (1, 1, 64, 96)


def test_feature_standardizer_uses_exact_training_statistics_and_is_fixed_in_eval() -> None:
    standardizer = RunningStandardizer(3)
    batches = [torch.randn(4, 3, 2, 2) * torch.tensor([1.0, 5.0, 10.0]).view(1, 3, 1, 1) + 7 for _ in range(3)]
    torch.testing.assert_close(standardizer.eval()(batches[0]), batches[0])  # nothing seen: identity
    standardizer.train()
    for batch in batches:
        standardizer(batch)
    everything = torch.cat(batches).transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(standardizer.mean, everything.mean(1))
    torch.testing.assert_close(standardizer.std, everything.std(1, unbiased=False), rtol=1e-4, atol=1e-5)
    standardizer.eval()
    before = standardizer.mean.clone()
    out = standardizer(torch.cat(batches))
    torch.testing.assert_close(standardizer.mean, before)  # no update in eval
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
    assert {"mean", "std", "count", "sum", "sum_sq"} <= set(standardizer.state_dict())  # checkpoints keep them


def test_raw_features_are_reconstructed_without_the_standardizer() -> None:
    model = small_torch_model(standardize_features=False).eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        raw = torch.cat(
            [
                torch.nn.functional.avg_pool2d(level, level.shape[-1] // 4) if level.shape[-1] > 4 else level
                for level in model.backbone(images)
            ],
            dim=1,
        )
        torch.testing.assert_close(model.extract(images), raw)


# ---------------------------------------------------------------- INR queries and class conditioning


def test_queries_differ_between_classes_and_vary_smoothly_with_position() -> None:
    model = small_torch_model(size=128, feature_stride=16, num_classes=3, neighbour_window=3).eval()
    queries = model.queries(model.embeddings.mean)  # (layers, classes, tokens, dim)
    assert queries.shape == (2, 3, 64, 32)
    # different classes give different queries at every position and in every layer
    between = (queries[:, 0] - queries[:, 1]).norm(dim=-1)
    assert between.min() > 0.05 * queries.norm(dim=-1).mean()
    # smooth in position: neighbouring cells are closer than cells four or more apart
    coordinates = grid_coordinates(8, 8)
    cell_distance = torch.cdist(coordinates, coordinates, p=float("inf")) * 4  # in cells
    query_distance = torch.cdist(queries[0, 0], queries[0, 0])
    near = query_distance[(cell_distance > 0.5) & (cell_distance < 1.5)].mean()
    far = query_distance[cell_distance > 3.5].mean()
    assert near < 0.75 * far
    # continuous in the coordinates: a tiny shift of (x, y) changes the query only a little
    mlp, embedding = model.inr.mlp, model.embeddings.mean[:1].expand(64, -1)
    shifted = coordinates + 1e-3

    def inr_at(points: torch.Tensor) -> torch.Tensor:
        return mlp(torch.cat([embedding, fourier_features(points, 2)], dim=1))

    with torch.no_grad():
        change = (inr_at(shifted) - inr_at(coordinates)).norm(dim=1)
        spread = (inr_at(coordinates) - inr_at(coordinates).mean(0)).norm(dim=1).mean()
    assert change.max() < 0.02 * spread


def test_eval_weights_the_class_embeddings_by_the_predicted_class() -> None:
    model = small_torch_model(num_classes=3).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        model.class_head.weight.zero_()
        model.class_head.bias.copy_(torch.tensor([0.0, 50.0, 0.0]))  # the classifier is sure: class 1
        predicted = model(images)
        given = model.predict(images, category_ids=torch.tensor([1, 1]))[0]
        other = model.predict(images, category_ids=torch.tensor([2, 2]))[0]
        model.class_head.bias.zero_()  # uniform: the mean of the three class means
        uniform = model.reconstruct(images)
        memory = model.encode(model.project(model.extract(images)))
        manual = model.decode(memory, model.queries(model.embeddings.mean.mean(0).expand(2, -1)))
    torch.testing.assert_close(predicted.anomaly_map, given.anomaly_map)
    assert not torch.allclose(predicted.anomaly_map, other.anomaly_map)  # the class changes the reconstruction
    torch.testing.assert_close(uniform.reconstruction, manual)


def test_training_samples_the_true_class_by_reparameterisation() -> None:
    model = small_torch_model(num_classes=2).train()
    with torch.no_grad():
        model.embeddings.log_var.fill_(-30.0)  # sigma ~ 3e-7: samples equal the means
        sample = model.class_embedding(torch.zeros(3, 2), torch.tensor([1, 0, 1]))
    torch.testing.assert_close(sample, model.embeddings.mean[[1, 0, 1]].detach())
    model.embeddings.log_var.data.zero_()
    first = model.class_embedding(torch.zeros(1, 2), torch.tensor([0]))
    second = model.class_embedding(torch.zeros(1, 2), torch.tensor([0]))
    assert not torch.equal(first, second)  # random in training
    first.sum().backward()
    assert model.embeddings.log_var.grad[0].abs().sum() > 0  # the variance is learned through the sample
    with pytest.raises(ValueError, match="needs `category_ids`"):
        model.class_embedding(torch.zeros(1, 2))


def test_shared_embedding_ablation_ignores_the_class() -> None:
    model = small_torch_model(num_classes=3, class_aware=False)
    assert model.embeddings.mean.shape == (1, 8)
    assert model.class_head.out_features == 3  # the classifier (and L_CE) stay
    model.eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        predicted = model(images)
        given = model.predict(images, category_ids=torch.tensor([2, 0]))[0]
    torch.testing.assert_close(predicted.anomaly_map, given.anomaly_map)
    model.set_num_classes(5)
    assert model.embeddings.mean.shape == (1, 8)
    assert model.class_head.out_features == 5


# ---------------------------------------------------------------- losses


def test_prior_loss_is_zero_exactly_at_the_prior() -> None:
    mean = torch.zeros(4, 8, requires_grad=True)
    log_var = torch.zeros(4, 8, requires_grad=True)
    loss = prior_kl(mean, log_var)
    assert loss.item() == 0.0
    loss.backward()
    assert not mean.grad.any()
    assert not log_var.grad.any()  # a minimum: zero gradient
    mean, log_var = torch.randn(4, 8), torch.randn(4, 8)
    posterior = torch.distributions.Normal(mean, (0.5 * log_var).exp())
    prior = torch.distributions.Normal(torch.zeros(4, 8), torch.ones(4, 8))
    torch.testing.assert_close(prior_kl(mean, log_var), torch.distributions.kl_divergence(posterior, prior).mean())
    assert prior_kl(mean, log_var) > 0


def test_loss_weights_combine_the_three_terms() -> None:
    output = MintAdOutput(
        features=torch.ones(2, 3, 2, 2),
        reconstruction=torch.zeros(2, 3, 2, 2),
        class_logits=torch.tensor([[0.0, 0.0], [0.0, 0.0]]),
        embedding_mean=torch.ones(2, 4),
        embedding_log_var=torch.zeros(2, 4),
    )
    terms = MintAdLoss(reconstruction_weight=2.0, classification_weight=3.0, prior_weight=0.5)(
        output, torch.tensor([0, 1])
    )
    assert terms.reconstruction.item() == pytest.approx(1.0)
    assert terms.classification.item() == pytest.approx(torch.log(torch.tensor(2.0)).item())
    assert terms.prior.item() == pytest.approx(0.5)
    assert terms.total.item() == pytest.approx(2.0 + 3.0 * terms.classification.item() + 0.25)
    with pytest.raises(ValueError, match="prior loss weight"):
        MintAdLoss(prior_weight=-1)


def test_classification_head_learns_the_demo_categories(tmp_path: Path) -> None:
    """A short run on real demo photographs of three categories: held-out test images are classified right."""
    categories = ["brick", "coffee", "coins"]
    root = build_demo_dataset(
        tmp_path / "demo", categories=categories, image_size=64, num_train=8, num_test_good=3, num_test_defective=3
    )

    def load(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for label, category in enumerate(categories):
            for path in sorted((root / category / split).glob("*/*.png")):
                images.append(read_image(path, as_tensor=True))
                labels.append(label)
        return (torch.stack(images) - MEAN) / STD, torch.tensor(labels)

    train_images, train_labels = load("train")
    test_images, test_labels = load("test")
    model = small_torch_model(num_classes=3)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loss_fn, generator = MintAdLoss(), torch.Generator().manual_seed(0)
    model.train()
    for _ in range(15):
        chosen = torch.randperm(len(train_images), generator=generator)[:12]
        terms = loss_fn(model(train_images[chosen], category_ids=train_labels[chosen]), train_labels[chosen])
        optimizer.zero_grad()
        terms.total.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        _, logits = model.predict(test_images)
    accuracy = (logits.argmax(1) == test_labels).float().mean().item()
    assert accuracy >= 0.9, accuracy  # 18 held-out images incl. defective ones
    assert terms.classification.item() < 0.5


# ---------------------------------------------------------------- Lightning: classes, checkpoints


def test_category_names_and_num_classes_arguments() -> None:
    model = small_model(category_names=["b", "a", "c"])
    assert model.model.num_classes == 3
    assert model.hparams["num_classes"] == 3
    assert small_model(num_classes=40).model.num_classes == 40
    with pytest.raises(ValueError, match="differs from the number of `category_names`"):
        small_model(num_classes=2, category_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="class_conditioning"):
        small_model(class_conditioning="oracle")


def test_training_step_rejects_ids_outside_the_class_table() -> None:
    model = small_model(num_classes=2)
    model.train()
    batch = SimpleNamespace(image=torch.randn(2, 3, 64, 64), category_id=torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="2 classes but the batch holds category ids"):
        model.training_step(batch, 0)


def test_true_label_conditioning_maps_ids_by_name_and_falls_back_without_ids(caplog) -> None:
    model = small_model(category_names=["a", "b", "c"], class_conditioning="true_label").eval()
    model._trainer = SimpleNamespace(datamodule=SimpleNamespace(category_names=["c", "a"]))
    model.log = lambda *args, **kwargs: None
    model._build_category_lookup()
    batch = SimpleNamespace(image=torch.randn(2, 3, 64, 64), category_id=torch.tensor([0, 1]))
    assert model._model_category_ids(batch).tolist() == [2, 0]
    with torch.no_grad():
        expected = model.model.predict(batch.image, category_ids=torch.tensor([2, 0]))[0]
        updated = model.validation_step(_Batch(batch.image, torch.tensor([0, 1])), 0)
    torch.testing.assert_close(updated.anomaly_map, expected.anomaly_map)
    with caplog.at_level(logging.WARNING), torch.no_grad():
        plain = model.validation_step(_Batch(batch.image, None), 0)
        model.validation_step(_Batch(batch.image, None), 0)
    with torch.no_grad():
        predicted = model.model(batch.image)
    torch.testing.assert_close(plain.anomaly_map, predicted.anomaly_map)
    assert sum("true_label" in record.getMessage() for record in caplog.records) == 1  # said once


class _Batch(SimpleNamespace):
    """A batch with an optional ``category_id`` whose ``update`` returns the predictions."""

    def __init__(self, image: torch.Tensor, category_id: torch.Tensor | None) -> None:
        super().__init__(image=image, category_id=category_id)

    def update(self, **predictions: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(**predictions)


def test_one_category_from_a_plain_anomalib_datamodule(mvtec_tree, tmp_path: Path, caplog) -> None:
    root = mvtec_tree(["bottle"], size=64)
    datamodule = MVTecAD(root=root, category="bottle", num_workers=0, train_batch_size=4)
    model = small_model(num_classes=5)
    engine = Engine(default_root_dir=tmp_path / "results", max_steps=2, logger=False, enable_progress_bar=False)
    with caplog.at_level(logging.INFO, logger="anomalib_classaware"):
        engine.fit(model, datamodule=datamodule)
    assert model.category_names == ["bottle"]
    assert model.model.num_classes == 1  # resized from 5 before the optimiser was built
    optimizer_ids = {id(p) for group in engine.trainer.optimizers[0].param_groups for p in group["params"]}
    assert id(model.model.class_head.weight) in optimizer_ids
    messages = [record.getMessage() for record in caplog.records if "no category ids" in record.getMessage()]
    assert len(messages) == 1


@pytest.fixture(scope="module")
def fitted_forty(tmp_path_factory: pytest.TempPathFactory) -> tuple[MintAd, Path]:
    """MintAd fitted for 2 steps on 40 tiny categories (32 px, 4 x 4 tokens at stride 8), and its checkpoint."""
    from tests.conftest import write_mvtec_category

    root = tmp_path_factory.mktemp("mint_forty")
    for index in range(40):
        write_mvtec_category(root / "data", f"cat{index:02d}", num_train=2, num_good=1, num_per_defect=1, seed=index)
    datamodule = MultiClassFolder(root / "data", num_workers=0, train_batch_size=16)
    model = small_model(size=32, feature_stride=8)
    engine = Engine(default_root_dir=root / "results", max_steps=2, logger=False, enable_progress_bar=False)
    engine.fit(model, datamodule=datamodule)
    checkpoint = root / "mint_ad.ckpt"
    engine.trainer.save_checkpoint(checkpoint)
    return model, checkpoint


def test_forty_categories_resize_the_class_table_before_the_optimiser(fitted_forty) -> None:
    model, _ = fitted_forty
    assert model.global_step == 2
    assert model.model.num_classes == 40
    assert model.model.embeddings.mean.shape == (40, 8)
    assert model.category_names == [f"cat{index:02d}" for index in range(40)]
    assert model.hparams["num_classes"] == 40
    optimizer_ids = {id(p) for group in model.trainer.optimizers[0].param_groups for p in group["params"]}
    assert {id(model.model.embeddings.mean), id(model.model.class_head.weight)} <= optimizer_ids


def test_checkpoint_round_trip_restores_the_class_count(fitted_forty) -> None:
    model, checkpoint = fitted_forty
    loaded = MintAd.load_from_checkpoint(checkpoint, evaluator=False, visualizer=False)  # weights_only=True
    assert loaded.model.num_classes == 40
    assert loaded.category_names == model.category_names
    # a model built from the CLI config (no class count) and restored through the Lightning hook
    fresh = small_model(size=32, feature_stride=8)
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    fresh.on_load_checkpoint(state)
    fresh.load_state_dict(state["state_dict"])
    assert fresh.model.num_classes == 40
    assert fresh.category_names == model.category_names
    images = torch.rand(2, 3, 32, 32)
    for restored in (loaded, fresh):
        model.eval()
        restored.eval()
        with torch.no_grad():
            expected, got = model(images), restored(images)
        torch.testing.assert_close(got.anomaly_map, expected.anomaly_map, rtol=0, atol=0)
        torch.testing.assert_close(got.pred_score, expected.pred_score, rtol=0, atol=0)


@pytest.fixture(scope="module")
def fitted_two(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """MintAd fitted 1 step on categories brick/coins (32 px); returns the data root and the checkpoint."""
    from tests.conftest import write_mvtec_category

    root = tmp_path_factory.mktemp("mint_two")
    for index, name in enumerate(["brick", "coins", "grass"]):
        write_mvtec_category(root / "data", name, num_train=2, num_good=1, num_per_defect=1, seed=index)
    model = small_model(size=32, feature_stride=8)
    engine = Engine(default_root_dir=root / "results", max_steps=1, logger=False, enable_progress_bar=False)
    engine.fit(model, datamodule=MultiClassFolder(root / "data", categories=["brick", "coins"], num_workers=0))
    checkpoint = root / "mint_two.ckpt"
    engine.trainer.save_checkpoint(checkpoint)
    return root, checkpoint


@pytest.mark.parametrize(
    ("categories", "shown"),
    [
        (["brick", "coins", "grass"], "3 categories ['brick', 'coins', 'grass']"),
        (["brick", "grass"], "['brick', 'grass']"),
    ],
)
def test_resuming_with_other_categories_is_a_clear_error(fitted_two, categories, shown) -> None:
    root, checkpoint = fitted_two
    model = small_model(size=32, feature_stride=8)
    engine = Engine(default_root_dir=root / "resume", max_steps=2, logger=False, enable_progress_bar=False)
    datamodule = MultiClassFolder(root / "data", categories=categories, num_workers=0)
    with pytest.raises(ValueError, match="trained on 2 categories") as error:
        engine.fit(model, datamodule=datamodule, ckpt_path=checkpoint)
    assert "['brick', 'coins']" in str(error.value)
    assert shown in str(error.value)
    assert "load_from_checkpoint" in str(error.value)


def test_resuming_with_the_same_categories_optimises_the_restored_table(fitted_two) -> None:
    root, checkpoint = fitted_two
    model = small_model(size=32, feature_stride=8)
    engine = Engine(default_root_dir=root / "resume_same", max_steps=2, logger=False, enable_progress_bar=False)
    engine.fit(
        model,
        datamodule=MultiClassFolder(root / "data", categories=["brick", "coins"], num_workers=0),
        ckpt_path=checkpoint,
    )
    assert model.global_step == 2
    assert model.category_names == ["brick", "coins"]
    optimizer_ids = {id(p) for group in engine.trainer.optimizers[0].param_groups for p in group["params"]}
    assert {id(model.model.embeddings.mean), id(model.model.class_head.weight)} <= optimizer_ids


def test_fine_tuning_on_other_categories_remaps_the_class_table_by_name(fitted_two) -> None:
    _, checkpoint = fitted_two
    loaded = MintAd.load_from_checkpoint(checkpoint, evaluator=False, visualizer=False)
    coins_mean = loaded.model.embeddings.mean[1].detach().clone()
    coins_head = loaded.model.class_head.weight[1].detach().clone()
    loaded._trainer = SimpleNamespace(datamodule=SimpleNamespace(category_names=["coins", "grass", "zinc"]))
    loaded.setup("fit")
    assert loaded.category_names == ["coins", "grass", "zinc"]
    assert loaded.model.num_classes == 3
    torch.testing.assert_close(loaded.model.embeddings.mean[0], coins_mean)  # coins keeps its embedding
    torch.testing.assert_close(loaded.model.class_head.weight[0], coins_head)
    assert not torch.equal(loaded.model.embeddings.mean[1], coins_mean)


# ---------------------------------------------------------------- export


def test_torch_model_exports_with_torch_export() -> None:
    model = small_torch_model(num_classes=3).eval()
    images = torch.randn(2, 3, 64, 64)
    exported = torch.export.export(model, (images,))
    with torch.no_grad():
        expected = model(images)
        got = exported.module()(images)
    torch.testing.assert_close(got.pred_score, expected.pred_score)
    torch.testing.assert_close(got.anomaly_map, expected.anomaly_map)


@pytest.mark.slow
def test_openvino_export_matches_torch_on_demo_images(tmp_path: Path) -> None:
    openvino = pytest.importorskip("openvino")
    model = small_model(num_classes=2).eval()
    xml_path = model.to_openvino(tmp_path / "export", input_size=(64, 64), onnx_kwargs={"opset_version": 18})
    build_demo_dataset(
        tmp_path / "demo",
        categories=["brick", "coffee"],
        image_size=64,
        num_train=1,
        num_test_good=1,
        num_test_defective=2,
    )
    images = torch.stack(
        [read_image(path, as_tensor=True) for path in sorted((tmp_path / "demo").glob("*/test/*/*.png"))]
    )
    with torch.no_grad():
        expected = model(images)
    from anomalib_classaware.deploy import inference_config

    compiled = openvino.Core().compile_model(str(xml_path), "CPU", inference_config(xml_path))  # f32 on any CPU
    assert len(compiled.inputs) == 1  # the image only: the class is predicted inside the graph
    results = compiled(images.numpy())
    outputs = {port.get_any_name(): torch.from_numpy(results[port]) for port in compiled.outputs}
    assert (outputs["pred_score"] - expected.pred_score).abs().max() <= 1e-4
    assert (outputs["anomaly_map"] - expected.anomaly_map).abs().max() <= 1e-4
