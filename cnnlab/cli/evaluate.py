"""`cnnlab evaluate`: a trained model on a labelled test set: loss, accuracy, per class, confusion, mistakes."""

from __future__ import annotations

import argparse
from pathlib import Path

from cnnlab.cli._data import DATA_HELP

GALLERY_SIZE = 18


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a trained model on a labelled test set",
        description="Evaluate a run folder or model file on labelled images: loss (cross-entropy), accuracy, "
        "accuracy per class, a confusion-matrix figure and a gallery of the most confident mistakes. The data's "
        "class names must be the model's. Writes evaluation.json and the figures to --out.",
    )
    parser.add_argument("model", type=Path, metavar="MODEL", help="run folder or model file (.safetensors)")
    parser.add_argument(
        "--data",
        metavar="SPEC",
        help=f"{DATA_HELP}; its test split is used (all of it when it has none; on the data the model was trained "
        "on, the images training held out), decoded at the model's input size",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("runs/evaluate"), help="folder for the figures (default: %(default)s)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: %(default)s)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cnnlab.core.files import write_json
    from cnnlab.evaluate.held_out import evaluation_set, training_source
    from cnnlab.evaluate.predict import check_class_names, evaluate_model
    from cnnlab.models.registry import load_model
    from cnnlab.plots import confusion_matrix_figure, misclassified_gallery

    model = load_model(args.model, device=args.device)
    chosen = evaluation_set(model, args.data, training_source(args.model))
    check_class_names(model.class_names, chosen.class_names)
    evaluation, images = evaluate_model(model, chosen.images, chosen.labels), chosen.images
    mistakes = evaluation.mistakes
    if getattr(images, "streamed", False):  # a streamed folder: decode only the mistakes the gallery shows
        images, mistakes = _shown_mistakes(images, mistakes)
    if chosen.note:
        print(f"Note: {chosen.note}")
    total = int(evaluation.confusion.sum())
    print(f"{total} images: loss {evaluation.loss:.4f}, accuracy {evaluation.accuracy:.4f}")
    width = max(len(name) for name in evaluation.class_names)
    for name, accuracy in evaluation.per_class.items():
        print(f"  {name:<{width}}  {accuracy:.4f}")
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"model": str(args.model), "data": args.data, "note": chosen.note, **evaluation.to_dict()}
    write_json(args.out / "evaluation.json", record)
    confusion = args.out / "confusion_matrix.png"
    gallery = args.out / "mistakes.png"
    confusion_matrix_figure(
        evaluation.confusion, evaluation.class_names, confusion, title=f"accuracy {evaluation.accuracy:.1%}"
    )
    misclassified_gallery(images, mistakes, GALLERY_SIZE, gallery, evaluation.class_names)
    print(f"Figures: {confusion}, {gallery} ({min(GALLERY_SIZE, len(evaluation.mistakes))} most confident mistakes)")
    print(f"Results: {args.out / 'evaluation.json'}")
    return 0


def _shown_mistakes(feed, mistakes):
    """The gallery's images decoded from a streamed split, and its mistakes renumbered to them (the mistakes
    count the images that decoded, so files skipped in the pass are left out of the positions)."""
    import numpy as np

    from cnnlab.evaluate.metrics import Misclassified

    skipped = {path for path, _ in feed.skipped}
    kept = [position for position, path in enumerate(feed.files) if path not in skipped]
    shown = slice(0, GALLERY_SIZE)
    images = feed.load([kept[i] for i in mistakes.indices[shown]])[0]
    return images, Misclassified(np.arange(len(images)), mistakes.true[shown], mistakes.predicted[shown],
                                 mistakes.confidence[shown])  # fmt: skip
