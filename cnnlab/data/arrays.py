"""Image arrays and label arrays: the one scaling rule (x / 127.5 - 1), one-hot labels, counts and names.

These few functions know nothing about where the images came from (CIFAR-10's class count is only a
default), so every layer above can use them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import train_test_split

from cnnlab.core.errors import DataError
from cnnlab.data.cifar import NUM_CLASSES


def scale_images(images):
    """uint8 [0, 255] -> float32 [-1, 1], as the lab does (x / 127.5 - 1): numpy arrays, or torch tensors
    (the ONNX export traces this same rule into its graph)."""
    if not isinstance(images, np.ndarray) and hasattr(images, "float"):  # a tensor; torch is not imported here
        return images.float() / 127.5 - 1.0
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise DataError(f"scale_images expects uint8 images, got {images.dtype}; they may be scaled already")
    return images.astype(np.float32) / 127.5 - 1.0


def to_categorical(labels: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Integer labels (N,) or (N, 1) -> one-hot float32 (N, num_classes), like Keras."""
    labels = np.asarray(labels).reshape(-1)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"labels must lie in 0..{num_classes - 1}, got min {labels.min()} max {labels.max()}")
    return np.eye(num_classes, dtype=np.float32)[labels.astype(np.int64)]


def class_counts(labels: np.ndarray, num_classes: int = NUM_CLASSES) -> list[int]:
    """How many images each class has, in class order."""
    return np.bincount(np.asarray(labels).reshape(-1), minlength=num_classes).tolist()


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


def stratified_split(x: np.ndarray, y: np.ndarray, test_size: float | int, seed: int):
    """``train_test_split`` stratified by label; unstratified (with a warning) when a class is too small."""
    try:
        return train_test_split(x, y, test_size=test_size, stratify=y, random_state=seed)
    except ValueError as error:
        warnings.warn(f"split not stratified ({error})", stacklevel=3)
        return train_test_split(x, y, test_size=test_size, random_state=seed)
