"""Scores of predictions: confusion matrices, per-class accuracy and the misclassified images."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import sklearn.metrics

from cnnlab.core.errors import DataError
from cnnlab.data.arrays import class_count, class_indices, class_labels


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
