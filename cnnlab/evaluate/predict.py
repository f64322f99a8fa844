"""Use a trained model: classify new image files, evaluate on a labelled test set.

A model carries how its training images were prepared (class names, input size, resize mode,
scaling); ``predict_images`` and ``evaluate_model`` read it from the model, so a photo is resized
and scaled exactly as the training images were. Images are decoded by cnnlab.data.images (the one image-loading
path, batched in a process pool) and test sets loaded by cnnlab.data.load.

"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnlab.core.errors import ConfigError, DataError
from cnnlab.data.arrays import class_indices
from cnnlab.data.images import IMAGE_SUFFIXES, RESIZE_MODES, find_images, load_images
from cnnlab.evaluate.held_out import evaluation_set
from cnnlab.evaluate.metrics import Misclassified, confusion_matrix, misclassified, per_class_accuracy
from cnnlab.train.feed import is_feed
from cnnlab.train.model import Model


def image_files(sources: Sequence[str | os.PathLike]) -> list[Path]:
    """Files named directly, plus the images inside named folders (recursively, sorted)."""
    files = []
    for source in map(Path, sources):
        if not source.is_dir():
            files.append(source)
            continue
        found = sorted(find_images(source))
        if not found:
            raise DataError(
                f"{source} holds no images ({', '.join(IMAGE_SUFFIXES)}); pass image files or another folder"
            )
        files += found
    return files


@dataclass
class Prediction:
    """One image's top classes as (class index, name, probability), all probabilities, the image the
    network saw (uint8 HWC). ``top`` has the shape pretrained.plot_predictions draws."""

    path: Path
    image: np.ndarray
    probabilities: np.ndarray
    top: list[tuple[int, str, float]]

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "top": [{"index": i, "class": name, "probability": p} for i, name, p in self.top],
        }


@dataclass
class PredictResult:
    """What ``predict_images`` returns: predictions, skipped files with the reason, conversion notes."""

    predictions: list[Prediction]
    skipped: list[tuple[Path, str]]
    notes: Counter


def predict_images(
    model: Model,
    paths: Sequence[str | os.PathLike],
    top: int = 5,
    resize: str | None = None,
    batch_size: int = 256,
) -> PredictResult:
    """Classify image files (or folders of them) with a trained model, preparing each as its training data was.

    ``resize`` defaults to the model's own mode (stretch for models that do not store one). Unreadable
    files are skipped with the reason; the others are decoded into one batch and predicted together.
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    class_names = model.class_names
    if not 1 <= top <= len(class_names):
        raise ConfigError(f"top must be 1..{len(class_names)} (the model's classes), got {top}")
    resize = resize or model.preprocessing.resize
    if resize not in RESIZE_MODES:
        raise ConfigError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    height, width, channels = model.input_shape
    color_mode = "grayscale" if channels == 1 else "rgb"
    images, kept, skipped, notes = load_images(image_files(paths), (height, width), resize, color_mode)
    probabilities = model.predict(images, batch_size=batch_size) if len(images) else np.zeros((0, len(class_names)))
    predictions = []
    for path, image, row in zip(kept, images, probabilities, strict=True):
        best = np.argsort(-row, kind="stable")[:top]
        predictions.append(Prediction(path, image, row, [(int(i), class_names[i], float(row[i])) for i in best]))
    return PredictResult(predictions, skipped, notes)


def format_prediction(prediction: Prediction) -> str:
    """One image's top classes as the CLI prints them."""
    width = max(12, *(len(name) for _, name, _ in prediction.top))
    lines = [str(prediction.path), f"  {'#':>2}  {'class':<{width}}  {'probability':>11}"]
    lines += [f"  {rank:>2}  {name:<{width}}  {p:>11.4f}" for rank, (_, name, p) in enumerate(prediction.top, 1)]
    return "\n".join(lines)


def predictions_json(result: PredictResult, **extra) -> str:
    return json.dumps(
        {
            **extra,
            "predictions": [p.to_dict() for p in result.predictions],
            "skipped": [{"path": str(path), "reason": reason} for path, reason in result.skipped],
            "notes": dict(result.notes),
        },
        indent=2,
    )


def check_class_names(model_names: Sequence[str], data_names: Sequence[str]) -> None:
    """Refuse data whose classes are not the model's, in the model's order (accuracy would be meaningless)."""
    if tuple(model_names) != tuple(data_names):
        raise DataError(
            f"the data's classes ({', '.join(data_names)}) are not the model's ({', '.join(model_names)}); "
            "evaluate on data labelled with the model's classes"
        )


@dataclass
class Evaluation:
    """Loss (cross-entropy), accuracy, accuracy per class, the confusion matrix and the mistakes."""

    loss: float
    accuracy: float
    per_class: dict[str, float]
    confusion: np.ndarray
    mistakes: Misclassified  # most confident first
    class_names: tuple[str, ...]

    @classmethod
    def from_probabilities(cls, probabilities: np.ndarray, labels, class_names: Sequence[str]) -> Evaluation:
        """Every figure of merit from one set of class probabilities (a plain pass, or TTA's average)."""
        import sklearn.metrics

        labels = class_indices(labels)
        names = tuple(class_names)
        return cls(
            loss=float(sklearn.metrics.log_loss(labels, probabilities, labels=np.arange(len(names)))),
            accuracy=float((probabilities.argmax(1) == labels).mean()),
            per_class=per_class_accuracy(labels, probabilities, names),
            confusion=confusion_matrix(labels, probabilities, len(names)),
            mistakes=misclassified(labels, probabilities),
            class_names=names,
        )

    def to_dict(self) -> dict:
        return {
            "loss": self.loss,
            "accuracy": self.accuracy,
            "images": int(self.confusion.sum()),
            "per_class_accuracy": self.per_class,
            "confusion_matrix": self.confusion.tolist(),
            "class_names": list(self.class_names),
        }


def evaluate_model(model: Model, images, labels=None) -> Evaluation:
    """One prediction pass over uint8 images, or over a feed (a streamed split, which brings its labels: a file
    unreadable while streaming drops out of both), serves every figure of merit."""
    if is_feed(images):
        probabilities, labels = model.predict_feed(images)
    else:
        probabilities = model.predict(images) if len(images) else ()
    if len(probabilities) == 0:
        raise DataError("no images to evaluate on; pass a data set with a test split")
    return Evaluation.from_probabilities(probabilities, labels, model.class_names)


def evaluate_on(model: Model, spec: str | os.PathLike | None) -> tuple[Evaluation, np.ndarray]:
    """Evaluate on a data set spec after checking its classes are the model's; returns the images too."""
    chosen = evaluation_set(model, spec)
    check_class_names(model.class_names, chosen.class_names)
    return evaluate_model(model, chosen.images, chosen.labels), chosen.images
