"""`cnnlab explain`: where a trained model looks: Grad-CAM or saliency maps laid over your images."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cnnlab.core.errors import ConfigError, DataError

RESNET = "resnet50"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="show where a model looks: Grad-CAM or saliency maps over images",
        description="Explain a model's predictions on images: prints each image's top classes and saves a figure "
        "with the attribution map over each image, titled with the predicted class and its probability. "
        "MODEL is a run folder (it holds weights.safetensors), a model file Model.save wrote, or 'resnet50' "
        "(weights from --weights or $CNNLAB_RESNET50_WEIGHTS). Images are resized to the model's input size.",
    )
    parser.add_argument("model", metavar="MODEL", help="run folder, .safetensors model file, or 'resnet50'")
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    parser.add_argument(
        "--method", default="gradcam", help="gradcam (class activation map, default) or saliency (input gradients)"
    )
    parser.add_argument("--layer", help="Grad-CAM's layer (default: the last conv layer or block)")
    parser.add_argument("--top", type=int, default=3, help="classes printed per image (default: %(default)s)")
    parser.add_argument(
        "--out", type=Path, default=Path("runs/explain"), help="folder for the figure (default: %(default)s)"
    )
    parser.add_argument("--weights", type=Path, help="ResNet50 weights (default: $CNNLAB_RESNET50_WEIGHTS)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: %(default)s)")
    parser.set_defaults(func=run)


def load_explained_model(spec: str, weights: Path | None = None, device: str = "auto"):
    """A cnnlab model from a run folder or model file, or the ImageNet ResNet50 for 'resnet50'."""
    from cnnlab.core.runtime import pick_device

    if spec.lower() == RESNET:
        from cnnlab.models.resnet50_weights import load_resnet50

        return load_resnet50(weights).to(pick_device(device))
    from cnnlab.models.registry import load_model

    return load_model(spec, device=device)


def load_model_images(
    model, paths: list[Path]
) -> tuple[list, list[Path], dict[Path, list[str]], list[tuple[Path, str]]]:
    """Decode and resize images to what the model takes: (arrays, kept paths, notes per path, failures)."""
    import numpy as np

    from cnnlab.data.images import open_image, resize_image
    from cnnlab.evaluate.explain import network_of
    from cnnlab.models.resnet50 import INPUT_SIZE, ResNet50

    resnet = isinstance(network_of(model), ResNet50)
    height, width, channels = (INPUT_SIZE, INPUT_SIZE, 3) if resnet else model.input_shape
    resize = "crop" if resnet else model.preprocessing.resize  # as trained
    arrays, kept, notes, failures = [], [], {}, []
    for path in paths:
        try:
            image, image_notes = open_image(path)
        except DataError as error:
            failures.append((path, str(error)))
            continue
        notes[path] = list(image_notes)
        if image.size != (width, height) and not resnet:
            why = "its Flatten layer needs" if not model.variable_input_size else "it was trained on"
            notes[path].append(f"resized from {image.width}x{image.height} to {width}x{height} ({why} it)")
        image = resize_image(image, (height, width), resize)
        array = np.asarray(image.convert("L") if channels == 1 else image, dtype=np.uint8)
        arrays.append(array.reshape(height, width, channels))
        kept.append(path)
    return arrays, kept, notes, failures


def run(args: argparse.Namespace) -> int:
    if args.top < 1:
        raise ConfigError(f"--top must be at least 1, got {args.top}")
    import numpy as np

    from cnnlab.evaluate import explain

    if args.method not in explain.METHODS:  # checked before the model loads: a typo costs nothing
        raise ConfigError(f"unknown method {args.method!r}; choose one of {', '.join(explain.METHODS)}")
    model = load_explained_model(args.model, args.weights, args.device)
    if args.method == "gradcam":
        explain.resolve_layer(model, args.layer)  # an unknown layer fails before any image is decoded
    arrays, kept, notes, failures = load_model_images(model, args.images)
    for path, reason in failures:
        print(f"cnnlab explain: skipped {path}: {reason}", file=sys.stderr)
    if not arrays:
        raise DataError("none of the images could be read; see the messages above")
    result = explain.explain(model, np.stack(arrays), args.method, layer=args.layer)
    for path, probabilities in zip(kept, result.probabilities, strict=True):
        best = np.argsort(-probabilities, kind="stable")[: args.top]
        shown = ", ".join(f"{result.class_names[i]} {probabilities[i]:.3f}" for i in best)
        print(f"{path.name}: {shown}")
        for note in notes[path]:
            print(f"  note: {note}")
    where = f" at layer {result.layer}" if result.layer else ""
    figure = args.out / f"{args.method}.png"
    explain.overlay_figure(result, figure, titles=[path.name for path in kept])
    print(f"Figure ({args.method}{where}): {figure}")
    return 1 if failures else 0
