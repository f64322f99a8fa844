"""Class weights for unbalanced training sets, as Keras' ``fit(class_weight=...)`` takes them.

A folder of one's own photos often holds ten cats for every dog; trained on it, a network learns to say
"cat". Weighing each image's loss by its class's weight makes every class count alike. "balanced" is
inverse class frequency as scikit-learn computes it, n_samples / (n_classes * count_c), so the average
weight over the training images stays 1 and the loss keeps its scale.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from cnnlab.core.errors import ConfigError
from cnnlab.data.arrays import class_counts

BALANCED = "balanced"
UNBALANCED_RATIO = 3.0  # largest class / smallest class above which training deserves a note


def _counts(labels, num_classes: int) -> np.ndarray:
    """Images per class of integer labels 0..num_classes-1, a tensor (fit's) or an array."""
    values = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    return np.array(class_counts(values.astype(np.int64), num_classes))


def balanced_weights(labels, num_classes: int) -> np.ndarray:
    """n / (k * count) per class, k the classes present (scikit-learn's "balanced"); an absent class gets
    1.0, which never weighs anything since no image of it is trained on."""
    counts = _counts(labels, num_classes)
    present = counts > 0
    weights = np.ones(num_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


def resolve_class_weight(class_weight, labels, num_classes: int) -> np.ndarray | None:
    """One weight per class from fit's ``class_weight``: None, "balanced" or {class_index: weight}
    (classes the dict leaves out weigh 1.0, as in Keras). Bad values are a one-line ConfigError."""
    if class_weight is None:
        return None
    if isinstance(class_weight, str):
        if class_weight != BALANCED:
            raise ConfigError(
                f"class_weight {class_weight!r} is not understood; give {BALANCED!r} or a dict {{class_index: weight}}"
            )
        return balanced_weights(labels, num_classes)
    if not isinstance(class_weight, Mapping):
        raise ConfigError(
            f"class_weight must be {BALANCED!r} or a dict {{class_index: weight}}, got {type(class_weight).__name__}"
        )
    weights = np.ones(num_classes)
    for key, value in class_weight.items():
        if isinstance(key, bool) or not isinstance(key, int | np.integer) or not 0 <= key < num_classes:
            raise ConfigError(
                f"class_weight names class {key!r}, but the classes are the indices 0..{num_classes - 1}; "
                "key the dict by class index"
            )
        if isinstance(value, bool) or not isinstance(value, int | float | np.number) or not math.isfinite(value) \
                or value < 0:  # fmt: skip
            raise ConfigError(f"class_weight of class {key} is {value!r}; weights must be finite numbers >= 0")
        weights[int(key)] = float(value)
    if not weights.any():
        raise ConfigError("class_weight gives every class weight 0, so nothing would train; give some weight > 0")
    return weights


def imbalance(labels, class_names) -> tuple[float, tuple[str, int], tuple[str, int]] | None:
    """(largest count / smallest count, (largest class, count), (smallest class, count)) among the classes
    that have images; None for fewer than two such classes."""
    counts = _counts(labels, len(class_names))
    present = np.flatnonzero(counts)
    if len(present) < 2:
        return None
    largest, smallest = present[counts[present].argmax()], present[counts[present].argmin()]
    ratio = float(counts[largest] / counts[smallest])
    return ratio, (class_names[largest], int(counts[largest])), (class_names[smallest], int(counts[smallest]))
