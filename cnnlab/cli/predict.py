"""`cnnlab predict`: classify your own images with a model you trained: a table, a figure, or JSON."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

FIGURE_ROWS = 16  # one row per image: more would make a figure nobody can read


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="classify image files with a model you trained",
        description="Classify images with a trained model (a run folder or a model file cnnlab wrote). Each image "
        "is decoded, converted to the model's colours, resized to its input size as its training images were, "
        "and scaled as in training; all images are predicted in batches. Prints the top classes per image and "
        "saves a figure of each image beside its bars. An unreadable file is reported and skipped (exit status 1).",
    )
    parser.add_argument("model", type=Path, metavar="MODEL", help="run folder or model file (.safetensors)")
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files or folders of images")
    parser.add_argument(
        "--top", type=int, help="classes shown per image (default: 5, or every class of a model with fewer)"
    )
    parser.add_argument(
        "--resize",
        choices=("stretch", "crop"),
        help="stretch: squash to the input size; crop: short side to size, then the centre "
        "(default: how the model's training images were resized, stretch for CIFAR-10 models)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    parser.add_argument(
        "--out", type=Path, default=Path("runs/predict"), help="folder for the figure (default: %(default)s)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: %(default)s)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cnnlab.evaluate.imagenet import plot_predictions
    from cnnlab.evaluate.predict import format_prediction, predict_images, predictions_json
    from cnnlab.models.registry import load_model

    model = load_model(args.model, device=args.device)
    top = args.top if args.top is not None else min(5, model.num_classes)
    result = predict_images(model, args.images, top=top, resize=args.resize)
    figure = None
    if result.predictions:
        shown = result.predictions[:FIGURE_ROWS]
        figure = plot_predictions(shown, args.out / "predictions.png")
    for path, reason in result.skipped:
        print(f"cnnlab predict: skipped {path}: {reason}", file=sys.stderr)
    if args.json:
        print(predictions_json(result, model=str(args.model), figure=str(figure) if figure else None))
    else:
        for prediction in result.predictions:
            print(format_prediction(prediction))
        for note, count in result.notes.items():
            print(f"note: {note} ({count} image{'s' * (count > 1)})")
        if figure:
            more = len(result.predictions) - FIGURE_ROWS
            print(
                f"Figure: {figure}"
                + (f" (the first {FIGURE_ROWS} images; {more} more in the table)" if more > 0 else "")
            )
    return 1 if result.skipped else 0
