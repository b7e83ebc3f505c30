"""Deployment test helpers: every model of the package, trained a few steps by anomalib's Engine, then exported.

Models come from ``anomalib_classaware.models.__all__``, so a new model is covered as soon as it is
registered. :data:`TINY_INIT_ARGS` may give a model cheaper init arguments; a model missing from it
is built with the defaults ``backbone="resnet18", pre_trained=False, input_size=(S, S)`` (those its
``__init__`` accepts).

One :class:`Deployment` per (model, input size) is built lazily and shared by the whole session:
fit (2 steps + the validation pass that fits the post-processor's threshold and normalisation),
checkpoint, ``Engine.predict`` on the checkpoint, ``Engine.export`` to torch and to OpenVINO FP32,
and the predictions of ``TorchInferencer`` and ``OpenVINOInferencer`` on fresh demo images (another
generator seed: none of them is a validation image, so no score sits exactly on the threshold).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from anomalib.data import ImageBatch, ImageItem
from anomalib.data.utils import read_image
from anomalib.engine import Engine
from anomalib.models.components import AnomalibModule
from lightning.pytorch import seed_everything
from torch.utils.data import DataLoader, Dataset

import anomalib_classaware.models as package_models
from anomalib_classaware.data import MultiClassDemo
from anomalib_classaware.data.demo_builder import build_demo_dataset
from tests.tiny_models import TINY_INIT_ARGS as TINY_MODEL_ARGS
from tests.tiny_models import tiny_demo_datamodule

MODEL_NAMES: list[str] = list(package_models.__all__)
"""Every model of the package, discovered at collection time."""

SIZES: tuple[int, ...] = (64, 96)
"""Export sizes: two, to catch shapes baked into the graph (models are built for each size)."""

CATEGORIES = ["brick", "coffee"]
TRAIN_STEPS = 2

TINY_INIT_ARGS: dict[str, dict[str, Any]] = TINY_MODEL_ARGS
"""Per-model init arguments for the deployment tests (on top of the defaults); keep models tiny."""

DEFAULT_INIT_ARGS: dict[str, Any] = {"backbone": "resnet18", "pre_trained": False, "visualizer": False}

SCORE_TOLERANCE = 1e-4
MAP_TOLERANCE = 1e-3


def tiny_model(name: str, size: int, **overrides: Any) -> AnomalibModule:
    """Build model ``name`` of the package for ``size`` x ``size`` inputs with tiny, offline settings.

    The defaults (and ``input_size``) are passed only where the model's ``__init__`` takes them;
    the entries of :data:`TINY_INIT_ARGS` and ``overrides`` always are.
    """
    cls = getattr(package_models, name)
    parameters = inspect.signature(cls.__init__).parameters
    defaults = {**DEFAULT_INIT_ARGS, "input_size": (size, size)}
    kwargs = {key: value for key, value in defaults.items() if key in parameters}
    kwargs.update(TINY_INIT_ARGS.get(name, {}))
    kwargs.update(overrides)
    torch.manual_seed(0)
    return cls(**kwargs)


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    """``OpenVINOInferencer`` writes an ``openvino_cache`` folder into the working directory: keep it in tmp."""
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


class _Images(Dataset):
    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> ImageItem:
        return ImageItem(image=read_image(self.paths[index], as_tensor=True), image_path=str(self.paths[index]))


@dataclass
class Predictions:
    """Per-image outputs of one backend, stacked: ``(N,)`` scores and labels, ``(N, H, W)`` maps and masks."""

    score: np.ndarray
    label: np.ndarray
    anomaly_map: np.ndarray
    pred_mask: np.ndarray
    category: np.ndarray  # (N,) predicted category id

    @classmethod
    def stack(cls, outputs: list[dict[str, Any]]) -> Predictions:
        def plane(value: Any) -> np.ndarray:
            array = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value)
            return np.squeeze(array)

        return cls(
            score=np.array([float(np.asarray(o["pred_score"]).reshape(-1)[0]) for o in outputs]),
            label=np.array([bool(np.asarray(o["pred_label"]).reshape(-1)[0]) for o in outputs]),
            anomaly_map=np.stack([plane(o["anomaly_map"]).astype(np.float32) for o in outputs]),
            pred_mask=np.stack([plane(o["pred_mask"]).astype(bool) for o in outputs]),
            category=np.array([int(np.asarray(o["pred_category"]).reshape(-1)[0]) for o in outputs]),
        )


@dataclass
class Deployment:
    """A trained model of one size, its checkpoint and exports, and each backend's predictions."""

    name: str
    size: int
    root: Path
    datamodule: MultiClassDemo
    checkpoint: Path
    paths: list[Path]
    torch_path: Path
    openvino_path: Path
    checkpoint_predictions: Predictions
    torch_predictions: Predictions
    openvino_predictions: Predictions
    timings: dict[str, float] = field(default_factory=dict)


def demo_datamodule(root: Path, size: int) -> MultiClassDemo:
    """Two demo categories at ``size`` px (the images have the model's input size)."""
    return tiny_demo_datamodule(root / f"demo{size}", CATEGORIES, size=size, num_train=4, eval_batch_size=8, seed=0)


def fresh_images(root: Path, size: int, good: int = 2, defective: int = 2) -> list[Path]:
    """Demo test images from another generator seed (normal and defective, both categories)."""
    folder = build_demo_dataset(
        root / f"fresh{size}-{good}-{defective}",
        categories=CATEGORIES,
        image_size=size,
        num_train=1,
        num_test_good=good,
        num_test_defective=defective,
        seed=1,
    )
    return sorted(folder.glob("*/test/*/*.png"))


def engine(root: Path, **kwargs: Any) -> Engine:
    return Engine(
        default_root_dir=root,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        devices=1,
        **kwargs,
    )


def train(name: str, size: int, root: Path, datamodule: MultiClassDemo) -> Path:
    """Fit ``TRAIN_STEPS`` steps (validation once, at the end) and save the checkpoint."""
    seed_everything(0, verbose=False)
    model = tiny_model(name, size)
    trainer = engine(root / "fit", max_steps=TRAIN_STEPS, check_val_every_n_epoch=None, val_check_interval=TRAIN_STEPS)
    trainer.fit(model, datamodule=datamodule)
    checkpoint = root / "model.ckpt"
    trainer.trainer.save_checkpoint(checkpoint)
    return checkpoint


def predict_with_engine(name: str, size: int, root: Path, checkpoint: Path, paths: list[Path]) -> Predictions:
    """``Engine.predict`` with the checkpoint (pre-processor, model and post-processor as Lightning callbacks)."""
    loader = DataLoader(_Images(paths), batch_size=4, collate_fn=ImageBatch.collate)
    batches = engine(root / "predict").predict(
        model=tiny_model(name, size), dataloaders=[loader], ckpt_path=checkpoint, return_predictions=True
    )
    outputs = [
        {key: value[index] for key, value in _outputs(batch).items()}
        for batch in batches
        for index in range(len(batch.image_path))
    ]
    assert [Path(p) for batch in batches for p in batch.image_path] == paths
    return Predictions.stack(outputs)


OUTPUTS = ("pred_score", "pred_label", "anomaly_map", "pred_mask", "pred_category")


def _outputs(batch: Any) -> dict[str, Any]:
    return {key: getattr(batch, key) for key in OUTPUTS}


def run_torch_inferencer(path: Path, paths: list[Path]) -> Predictions:
    from anomalib_classaware.deploy import TorchInferencer

    previous = os.environ.get("TRUST_REMOTE_CODE")
    os.environ["TRUST_REMOTE_CODE"] = "1"  # our own file, just written
    try:
        inferencer = TorchInferencer(path, device="cpu")
    finally:
        if previous is None:
            del os.environ["TRUST_REMOTE_CODE"]
        else:
            os.environ["TRUST_REMOTE_CODE"] = previous
    with torch.no_grad():
        return Predictions.stack([_outputs(inferencer.predict(p)) for p in paths])


def run_openvino_inferencer(path: Path, paths: list[Path], workdir: Path) -> Predictions:
    """Our ``OpenVINOInferencer`` (anomalib's plus ``pred_category``) as a user builds it: no precision config.

    It passes the precision the IR records (f32), which OpenVINO's CPU plugin ignores by itself
    (tests/deploy/test_precision.py); anomalib's own inferencer needs ``config=inference_config(path)``.
    """
    from anomalib_classaware.deploy import OpenVINOInferencer

    with working_directory(workdir):
        inferencer = OpenVINOInferencer(path, device="CPU", config={"INFERENCE_NUM_THREADS": 1})
        assert inferencer.config["INFERENCE_PRECISION_HINT"] == "f32"
        return Predictions.stack([_outputs(inferencer.predict(p)) for p in paths])


def build_deployment(name: str, size: int, root: Path) -> Deployment:
    timings: dict[str, float] = {}
    clock, cpu = time.perf_counter(), time.process_time()

    def lap(what: str) -> None:  # wall and CPU seconds of each phase (CPU: what an idle machine would take)
        nonlocal clock, cpu
        now, now_cpu = time.perf_counter(), time.process_time()
        timings[what] = now - clock
        timings[f"{what}_cpu"] = now_cpu - cpu
        clock, cpu = now, now_cpu

    datamodule = demo_datamodule(root.parent, size)
    checkpoint = train(name, size, root, datamodule)
    lap("fit")
    paths = fresh_images(root.parent, size)
    checkpoint_predictions = predict_with_engine(name, size, root, checkpoint, paths)
    lap("engine_predict")
    exporter = engine(root / "export")
    model = tiny_model(name, size)
    torch_path = exporter.export(model, "torch", export_root=root / "export", ckpt_path=checkpoint)
    lap("export_torch")
    openvino_path = exporter.export(
        model,
        "openvino",
        export_root=root / "export",
        input_size=(size, size),
        ckpt_path=checkpoint,
        onnx_kwargs={"opset_version": 18},
    )
    lap("export_openvino")
    torch_predictions = run_torch_inferencer(torch_path, paths)
    lap("torch_inferencer")
    openvino_predictions = run_openvino_inferencer(openvino_path, paths, root)
    lap("openvino_inferencer")
    return Deployment(
        name=name,
        size=size,
        root=root,
        datamodule=datamodule,
        checkpoint=checkpoint,
        paths=paths,
        torch_path=torch_path,
        openvino_path=openvino_path,
        checkpoint_predictions=checkpoint_predictions,
        torch_predictions=torch_predictions,
        openvino_predictions=openvino_predictions,
        timings=timings,
    )


class Deployments:
    """Lazily built, session-wide :class:`Deployment` per (model, size); a failed build fails every user."""

    def __init__(self, factory: pytest.TempPathFactory) -> None:
        self.factory = factory
        self._built: dict[tuple[str, int], Deployment | BaseException] = {}

    def get(self, name: str, size: int) -> Deployment:
        key = (name, size)
        if key not in self._built:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # two OpenMP threads on a busy 2-core machine run up to ~10x slower
            try:
                self._built[key] = build_deployment(name, size, self.factory.mktemp(f"{name}-{size}"))
            except Exception as error:
                self._built[key] = error
            finally:
                torch.set_num_threads(threads)
        built = self._built[key]
        if isinstance(built, BaseException):
            msg = f"Deployment of {name} at {size} px failed: {type(built).__name__}: {built}"
            raise RuntimeError(msg) from built
        return built
