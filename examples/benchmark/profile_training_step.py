"""Where ClassAwareRecon's training step spends its time, against its contrastive-off baseline.

Times (median of repeats, one torch thread, random images) the parts of one training step: the
frozen teacher's pass, the augmented view (kornia), the view's encoding (teacher, projections,
bottleneck), the losses, and whole steps (forward, losses and backward) with both contrastive terms,
with one of them, and with none (the reconstruction model the contrastive terms are added to)::

    python examples/benchmark/profile_training_step.py                  # efficientnet_lite0, 128 px, batch 8
    python examples/benchmark/profile_training_step.py --backbone resnet18 --size 64 --batch 16

Weights are random (timing does not depend on them), so it runs offline in about a minute.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from anomalib_classaware import ClassAwareRecon


def median_ms(function: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``function()`` in milliseconds."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def build(backbone: str, size: int, **kwargs: float) -> ClassAwareRecon:
    """A ClassAwareRecon in training mode (random weights, no evaluator or visualizer)."""
    model = ClassAwareRecon(
        backbone=backbone, pre_trained=False, input_size=(size, size), evaluator=False, visualizer=False, **kwargs
    )
    model.model.train()
    return model


def step(model: ClassAwareRecon, images: torch.Tensor, labels: torch.Tensor) -> Callable[[], None]:
    """One training step as ``ClassAwareRecon.training_step`` runs it: forward, view, losses, backward."""
    parameters = [parameter for parameter in model.model.parameters() if parameter.requires_grad]

    def run() -> None:
        output = model.model(images, clean_embedding=model.loss.contrastive.global_weight > 0)
        view = None
        if model.loss.contrastive.enabled:
            view = model.model.encode_view(model.view_augmentation(images))
        losses = model.loss(output, view, labels)
        for parameter in parameters:
            parameter.grad = None
        losses.total.backward()

    return run


def main() -> None:
    """Print the timings of the parts and of whole steps."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--categories", type=int, default=4, help="categories in the batch (class-balanced)")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = torch.rand(args.batch, 3, args.size, args.size)
    labels = torch.arange(args.batch) % args.categories

    model = build(args.backbone, args.size)
    augmented = model.view_augmentation(images)
    output = model.model(images)
    view = model.model.encode_view(augmented)

    def losses() -> None:
        with torch.no_grad():
            model.loss(output, view, labels)

    parts = {
        "teacher pass (one view)": lambda: model.model.teacher_features(images),
        "view augmentation (kornia)": lambda: model.view_augmentation(images),
        "encode the view (teacher, projections, bottleneck)": lambda: model.model.encode_view(augmented),
        "losses, forward only": losses,
    }
    steps = {
        "step, both contrastive terms (default)": step(model, images, labels),
        "step, global term only": step(build(args.backbone, args.size, local_weight=0.0), images, labels),
        "step, local term only": step(build(args.backbone, args.size, global_weight=0.0), images, labels),
        "step, contrastive off": step(
            build(args.backbone, args.size, global_weight=0.0, local_weight=0.0), images, labels
        ),
    }
    print(f"ClassAwareRecon, {args.backbone}, {args.size} px, batch {args.batch}, {args.threads} thread(s)")
    for name, function in parts.items():
        print(f"{name:55s} {median_ms(function, args.repeats):8.1f} ms")
    baseline = None
    for name, function in reversed(steps.items()):
        milliseconds = median_ms(function, args.repeats)
        baseline = baseline or milliseconds
        print(f"{name:55s} {milliseconds:8.1f} ms  ({milliseconds / baseline:.2f}x contrastive off)")


if __name__ == "__main__":
    main()
