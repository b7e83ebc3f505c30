"""Inspection line with an exported OpenVINO model: score every image of a folder or of a stream of paths.

Export a trained model first (the graph holds pre-processing, the model, and the post-processor's
normalisation and threshold), e.g.::

    anomalib export --model ReContrast --ckpt_path model.ckpt --export_type openvino --input_size "[256,256]"

then::

    python examples/deploy_openvino.py results/weights/openvino/model.xml images/ --output inspection/
    find /line/camera1 -name '*.png' | python examples/deploy_openvino.py model.xml - --output inspection/

For each image it writes a row to ``<output>/predictions.csv`` (path, score, label, category,
latency_ms, error) as soon as the image is done (``category``: the category the model predicts
from the image, whose own threshold decided the label; empty for models without that output),
and an overlay ``<output>/overlays/<path>.png`` (heat map of the
normalised anomaly map, predicted defect outlined, label and score written on it). Unreadable
files (corrupt, truncated, not an image) are skipped, listed in the CSV with their error and again
at the end. Images are resized to the model's input size; maps are resized back to the image.

``latency_ms`` is pre-processing and inference of one image (the time until the accept/reject
decision); the throughput printed at the end counts everything (reading, inference, overlays,
CSV). ``--precision`` (default ``auto``: what the IR records, ``f32`` for the package's FP32 and INT8
exports) keeps OpenVINO from running an FP32 graph in bfloat16 on CPUs with BF16. Exit status: 0 if
every image was scored, 1 if some files were skipped, 2 on a usage error (missing model or source,
``--precision bf16`` on a CPU without BF16, or an earlier run's ``predictions.csv`` in ``--output``
without ``--overwrite``).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

from anomalib_classaware.deploy import (
    PRECISIONS,
    ImageReadError,
    OpenVINODetector,
    iter_image_paths,
    overlay,
    read_rgb,
)

CSV_COLUMNS = ("path", "score", "label", "category", "latency_ms", "error")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deploy_openvino.py",
        description=__doc__.split("\n\n")[0],
        epilog="Exit status: 0 every image scored, 1 some files skipped (see the CSV), 2 usage error.",
    )
    parser.add_argument("model", type=Path, help="exported model: model.xml (with model.bin beside it) or model.onnx")
    parser.add_argument(
        "source",
        help="folder (searched recursively for .png/.jpg/.jpeg/.bmp/.tif/.tiff/.webp/.ppm/.pgm), an image file, "
        "or '-' to read one path per line from stdin",
    )
    parser.add_argument("--output", type=Path, default=Path("inspection"), help="output folder (default: inspection)")
    parser.add_argument("--device", default="CPU", help="OpenVINO device (default: CPU)")
    parser.add_argument("--threads", type=int, default=None, help="CPU inference threads (default: all cores)")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="floating-point precision: auto = the one the IR records (f32 for FP32 and INT8 exports, bf16 for the "
        "bf16 variants; f32 if none), f32, or bf16 (CPUs with AVX-512 BF16 or AMX only) (default: auto)",
    )
    parser.add_argument("--no-overlays", action="store_true", help="write the CSV only")
    parser.add_argument("--alpha", type=float, default=0.4, help="heat-map opacity in the overlays (default: 0.4)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the predictions.csv of an earlier run in --output"
    )
    return parser


def overlay_path(image: Path, source: str, root: Path) -> Path:
    """Where the overlay of ``image`` goes: its path relative to a source folder, else its full path, as .png."""
    folder = Path(source)
    if source != "-" and folder.is_dir() and image.resolve().is_relative_to(folder.resolve()):
        relative = image.resolve().relative_to(folder.resolve())
    else:
        resolved = image.resolve()
        relative = resolved.relative_to(resolved.anchor)
    return (root / relative).with_suffix(".png")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.model.is_file():
        parser.error(f"model file not found: {args.model}")
    if args.source != "-" and not Path(args.source).exists():
        parser.error(f"image source not found: {args.source}")
    try:
        detector = OpenVINODetector(args.model, device=args.device, threads=args.threads, precision=args.precision)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    predictions = args.output / "predictions.csv"
    if predictions.exists() and not args.overwrite:
        parser.error(f"{predictions} exists (an earlier run): choose another --output or pass --overwrite")
    args.output.mkdir(parents=True, exist_ok=True)
    overlays = args.output / "overlays"

    latencies: list[float] = []
    skipped: list[tuple[Path, str]] = []
    anomalous = 0
    per_category: dict[str, list[int]] = {}  # predicted category -> [anomalous, scored]
    start = time.perf_counter()
    with predictions.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for path in iter_image_paths(args.source):
            try:
                image = read_rgb(path)
            except ImageReadError as error:
                skipped.append((path, str(error)))
                writer.writerow({"path": str(path), "error": str(error)})
                handle.flush()
                print(f"skipped: {error}", file=sys.stderr)
                continue
            detection = detector.predict(image)
            latencies.append(detection.latency_ms)
            anomalous += detection.label
            counts = per_category.setdefault(detection.category or "", [0, 0])
            counts[0] += detection.label
            counts[1] += 1
            writer.writerow(
                {
                    "path": str(path),
                    "score": f"{detection.score:.6f}",
                    "label": "anomalous" if detection.label else "normal",
                    "category": detection.category or "",
                    "latency_ms": f"{detection.latency_ms:.3f}",
                    "error": "",
                }
            )
            handle.flush()
            if not args.no_overlays:
                target = overlay_path(path, args.source, overlays)
                target.parent.mkdir(parents=True, exist_ok=True)
                overlay(image, detection, alpha=args.alpha).save(target)
    elapsed = time.perf_counter() - start

    scored = len(latencies)
    print(f"Inference precision: {detector.precision} ({args.device})")
    print(f"Scored {scored} image(s) in {elapsed:.2f} s: {scored / elapsed if elapsed > 0 else 0:.1f} images/s overall")
    if latencies:
        ordered = sorted(latencies)
        p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
        print(
            f"Latency per image (pre-processing + inference): median {statistics.median(latencies):.1f} ms, "
            f"p95 {p95:.1f} ms; anomalous: {anomalous} of {scored}"
        )
    if any(per_category):
        print("Anomalous images per predicted category:")
        for category, (flagged, count) in sorted(per_category.items()):
            print(f"  {category or '(none)'}: {flagged} of {count}")
    print(f"Predictions: {predictions}" + ("" if args.no_overlays else f"; overlays: {overlays}"))
    if skipped:
        print(f"Skipped {len(skipped)} unreadable file(s):")
        for _, error in skipped:
            print(f"  {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
