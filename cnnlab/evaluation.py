"""How well a trained model generalizes (lab part 5): rotated test images, its mistakes, the confusion
matrix, accuracy per class, other input sizes and training that makes it robust to rotation.

Functions that need predictions take labels and probabilities (what ``Model.predict`` returns), so
one prediction pass serves the gallery, the confusion matrix and the per-class table alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import sklearn.metrics
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from cnnlab.augment import Augmentation
from cnnlab.errors import ConfigError, DataError
from cnnlab.training import Model

LAB_SIZES = (24, 32, 48, 64)


def myrotate(images: np.ndarray, k: int = 1) -> np.ndarray:
    """Rotate NHWC images by k * 90 degrees counter-clockwise, as the lab's utilities do
    (``np.rot90`` over the height and width axes). Returns a contiguous copy (torch needs one)."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise DataError(f"myrotate takes a batch of images (N, height, width, channels), got {images.shape}")
    return np.ascontiguousarray(np.rot90(images, k, axes=(1, 2)))


def evaluate_rotated(model: Model, x, y, k: int = 1, batch_size: int = 512) -> dict[str, float]:
    """Test accuracy on the images as they are and rotated by k * 90 degrees, and the drop between them."""
    original = model.evaluate(x, y, batch_size=batch_size)[1]
    rotated = model.evaluate(myrotate(x, k), y, batch_size=batch_size)[1]
    return {"original": original, "rotated": rotated, "drop": original - rotated}


def class_indices(labels: np.ndarray) -> np.ndarray:
    """Integer labels from integer (N,) / (N, 1) labels, one-hot rows or probabilities (argmax)."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] > 1:
        return labels.argmax(1)
    if labels.ndim == 2:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(f"labels must be (N,), (N, 1) or one-hot (N, classes); got shape {labels.shape}")
    return labels.astype(np.int64)


@dataclass(frozen=True)
class Misclassified:
    """The wrongly classified images, most confident mistakes first."""

    indices: np.ndarray  # positions in the evaluated set
    true: np.ndarray
    predicted: np.ndarray
    confidence: np.ndarray  # probability the model gave its (wrong) prediction

    def __len__(self) -> int:
        return len(self.indices)


def misclassified(y_true, probabilities: np.ndarray) -> Misclassified:
    """The images whose most probable class is not their label, sorted by the model's confidence."""
    probabilities = np.asarray(probabilities)
    true = class_indices(y_true)
    if probabilities.ndim != 2 or len(probabilities) != len(true):
        raise DataError(
            f"probabilities must be (N, classes) for the {len(true)} labels, got shape {probabilities.shape}"
        )
    predicted = probabilities.argmax(1)
    wrong = np.flatnonzero(predicted != true)
    confidence = probabilities[wrong, predicted[wrong]]
    order = np.argsort(-confidence, kind="stable")
    wrong, confidence = wrong[order], confidence[order]
    return Misclassified(wrong, true[wrong], predicted[wrong], confidence)


def class_count(y_true, y_pred) -> int:
    """How many classes labels and predictions speak of: the width of probabilities, else the largest label."""
    y_pred = np.asarray(y_pred)
    if y_pred.ndim == 2 and y_pred.shape[1] > 1:
        return y_pred.shape[1]
    return int(max(class_indices(y_true).max(initial=0), class_indices(y_pred).max(initial=0))) + 1


def class_labels(class_names: Sequence[str] | None, num_classes: int) -> tuple[str, ...]:
    """The names to show for each class: the given ones (checked against the count), else the numbers."""
    if class_names is None:
        return tuple(str(i) for i in range(num_classes))
    if len(class_names) != num_classes:
        raise DataError(f"{len(class_names)} class names given for {num_classes} classes; give one name per class")
    return tuple(class_names)


def confusion_matrix(y_true, y_pred, num_classes: int | None = None) -> np.ndarray:
    """Counts (true class, predicted class); y_pred may be labels or probabilities. Without
    ``num_classes`` the count comes from the probabilities' width, else from the largest label."""
    num_classes = num_classes or class_count(y_true, y_pred)
    return sklearn.metrics.confusion_matrix(class_indices(y_true), class_indices(y_pred), labels=np.arange(num_classes))


def per_class_accuracy(y_true, y_pred, class_names: Sequence[str] | None = None) -> dict[str, float]:
    """The share of each class's images classified correctly (NaN for a class with no images), by class name
    (by class number when no names are given)."""
    class_names = class_labels(class_names, max(class_count(y_true, y_pred), len(class_names or ())))
    matrix = confusion_matrix(y_true, y_pred, len(class_names))
    totals = matrix.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.diag(matrix) / totals
    return {name: float(value) for name, value in zip(class_names, accuracy, strict=True)}


def resize_images(images: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """NHWC images resized bilinearly to size (or (height, width)), antialiased when shrinking. uint8 images
    stay uint8 (rounded), so the model scales them as it scales every uint8 batch; floats come back float32."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise DataError(f"images must be (N, height, width, channels), got shape {images.shape}")
    height, width = (size, size) if isinstance(size, int) else size
    if height < 1 or width < 1:
        raise ConfigError(f"image size must be positive, got {size}")
    batch = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).permute(0, 3, 1, 2)
    shrinking = height < images.shape[1] or width < images.shape[2]
    resized = F.interpolate(batch, size=(height, width), mode="bilinear", align_corners=False, antialias=shrinking)
    resized = resized.permute(0, 2, 3, 1).contiguous()
    if images.dtype == np.uint8:  # bilinear overshoots a little at edges when antialiasing: clamp, then round
        return resized.clamp_(0, 255).round_().to(torch.uint8).numpy()
    return resized.numpy()


def evaluate_sizes(model: Model, x, y, sizes: Sequence[int] = LAB_SIZES, batch_size: int = 512) -> dict[int, float]:
    """Test accuracy with the images resized to each size. A model built with head='flatten' accepts only
    its own size and raises DataError (with the fix) for any other."""
    return {
        size: model.evaluate(resize_images(x, size), y, batch_size=batch_size)[1]
        for size in tqdm(sizes, desc="sizes", leave=False, disable=None)
    }


def rotation_robustness_table(
    build_model: Callable[[], Model],
    x_train,
    y_train,
    x_test,
    y_test,
    *,
    augmentations: Mapping[str, Callable | None] | None = None,
    epochs: int = 12,
    batch_size: int = 128,
    validation_data: tuple | None = None,
    seed: int = 0,
    verbose: int = 0,
) -> list[dict]:
    """Train one fresh model per augmentation (default: none, and quarter turns) and measure each on the
    test images as they are, turned 90 degrees, and averaged over 90/180/270 degrees.

    Rotation-augmented training should lift the rotated accuracy towards the original one.
    """
    if augmentations is None:
        augmentations = {"plain": None, "rot90": Augmentation(rot90=True, seed=seed)}
    rows = []
    for name, augment in augmentations.items():
        model = build_model()
        model.fit(
            x_train,
            y_train,
            batch_size=batch_size,
            epochs=epochs,
            validation_data=validation_data,
            seed=seed,
            augment=augment,
            verbose=verbose,
        )
        turned = [model.evaluate(myrotate(x_test, k), y_test)[1] for k in (1, 2, 3)]
        original = model.evaluate(x_test, y_test)[1]
        rows.append(
            {
                "training": name,
                "test accuracy": original,
                "rotated 90°": turned[0],
                "rotated 90/180/270° (mean)": float(np.mean(turned)),
                "drop (90°)": original - turned[0],
            }
        )
    return rows


def markdown_table(rows: Sequence[Mapping], digits: int = 4) -> str:
    """Rows of equal keys as a Markdown table; floats rounded to ``digits``."""
    if not rows:
        return ""
    columns = list(rows[0])

    def cell(value) -> str:
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
