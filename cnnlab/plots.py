"""Figures people would rather look at than read: training curves and image grids.

Every function returns the matplotlib Figure and, given ``path``, also writes a PNG atomically.
The Agg backend is used so figures render on servers and in CI without a display.

"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from cnnlab.core.files import atomic_write


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Write a PNG through a temp file and rename it, then close the figure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png"))
    finally:
        plt.close(fig)
    return path


def finish_figure(fig: Figure, path) -> Figure:
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_results(history, path: str | os.PathLike | None = None, title: str | None = None) -> Figure:
    """Loss and accuracy per epoch, training against validation (accepts a History or its dict)."""
    logs = getattr(history, "history", history)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        epochs = np.arange(1, len(logs.get(metric, [])) + 1)
        ax.plot(epochs, logs.get(metric, []), "o-", label="training", markersize=3)
        if f"val_{metric}" in logs:
            ax.plot(epochs, logs[f"val_{metric}"], "s-", label="validation", markersize=3)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return finish_figure(fig, path)


def to_display(images: np.ndarray) -> np.ndarray:
    """Images in [-1, 1] floats or uint8 -> floats in [0, 1] for imshow."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255
    return np.clip((images + 1) / 2, 0, 1)


def _names(class_names: Sequence[str] | None, labels) -> Sequence[str]:
    """Names to title images with: the given ones, else the class numbers the labels use."""
    from cnnlab.data.arrays import class_labels

    if class_names is not None:
        return class_names
    return class_labels(None, int(np.max(np.asarray(labels), initial=0)) + 1)


def image_grid(
    images: np.ndarray,
    titles: Sequence[str] | None = None,
    columns: int = 6,
    path: str | os.PathLike | None = None,
    suptitle: str | None = None,
    cell: float = 1.9,
) -> Figure:
    """A grid of NHWC images with an optional title above each."""
    images = to_display(images)
    rows = max(1, int(np.ceil(len(images) / columns)))
    title_lines = max((str(title).count("\n") + 1 for title in titles), default=0) if titles is not None else 0
    row_height = cell + 0.15 + 0.17 * title_lines  # room for each title's lines, so rows never overlap
    fig, axes = plt.subplots(rows, columns, figsize=(columns * cell, rows * row_height), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < len(images):
            ax.imshow(images[i], interpolation="nearest")
            if titles is not None:
                ax.set_title(titles[i], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return finish_figure(fig, path)


def sample_grid(
    images: np.ndarray,
    labels: np.ndarray,
    count: int = 18,
    seed: int = 0,
    path: str | os.PathLike | None = None,
    class_names: Sequence[str] | None = None,
) -> Figure:
    """Random training examples titled with class number and name, as the lab shows them."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(images), size=min(count, len(images)), replace=False)
    names = _names(class_names, labels)
    titles = [f"{int(labels[i])} ({names[int(labels[i])]})" for i in pick]
    return image_grid(np.asarray(images)[pick], titles, path=path)


def rotation_preview(
    images: np.ndarray,
    rotated: np.ndarray,
    count: int = 10,
    seed: int = 0,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Random test images (top row) above the same images rotated (bottom row), as in lab part 5."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(images), size=min(count, len(images)), replace=False)
    pair = np.concatenate([np.asarray(images)[pick], np.asarray(rotated)[pick]])
    titles = ["original"] * len(pick) + ["rotated"] * len(pick)
    return image_grid(pair, titles, columns=len(pick), path=path, cell=1.5)


def augmentation_preview(
    images: np.ndarray,
    augment,
    labels: np.ndarray | None = None,
    count: int = 4,
    variants: int = 5,
    path: str | os.PathLike | None = None,
    class_names: Sequence[str] | None = None,
) -> Figure:
    """One row per image: the original, then ``variants`` augmented versions of it (each drawn anew).
    ``images`` are uint8 or floats in [-1, 1]; the augmentation works on the lab's [-1, 1] scale."""
    from cnnlab.data.arrays import scale_images
    from cnnlab.data.augment import augment_array

    originals = np.asarray(images)[:count]
    originals = scale_images(originals) if originals.dtype == np.uint8 else originals.astype(np.float32)
    augmented = augment_array(augment, np.repeat(originals, variants, axis=0))
    rows = np.concatenate([originals[:, None], augmented.reshape(len(originals), variants, *originals.shape[1:])], 1)
    titles = []
    names = _names(class_names, labels) if labels is not None else None
    for i in range(len(originals)):
        name = f" ({names[int(labels[i])]})" if names is not None else ""
        titles += [f"original{name}"] + [f"augmented {v + 1}" for v in range(variants)]
    return image_grid(rows.reshape(-1, *originals.shape[1:]), titles, columns=variants + 1, path=path, cell=1.6)


def misclassified_gallery(
    images: np.ndarray,
    mistakes,
    count: int = 18,
    path: str | os.PathLike | None = None,
    class_names: Sequence[str] | None = None,
) -> Figure:
    """The model's most confident mistakes (an ``evaluation.Misclassified``), titled true/predicted/confidence."""
    shown = range(min(count, len(mistakes)))
    names = _names(class_names, np.concatenate([mistakes.true, mistakes.predicted]))
    titles = [
        f"true: {names[mistakes.true[i]]}\npred: {names[mistakes.predicted[i]]} ({mistakes.confidence[i]:.1%})"
        for i in shown
    ]
    return image_grid(np.asarray(images)[mistakes.indices[: len(shown)]], titles, path=path, cell=2.0)


def confusion_matrix_figure(
    matrix: np.ndarray,
    class_names: Sequence[str] | None = None,
    path: str | os.PathLike | None = None,
    title: str | None = None,
) -> Figure:
    """Counts of (true, predicted) classes as a heat map (scikit-learn's display). The numbers are written
    in up to 20 classes; beyond that the figure grows with the class count and shows colours only."""
    from sklearn.metrics import ConfusionMatrixDisplay

    from cnnlab.data.arrays import class_labels

    matrix = np.asarray(matrix)
    count = len(matrix)
    side = max(8.0, 0.3 * count)
    fig, ax = plt.subplots(figsize=(side, side * 7 / 8))
    ConfusionMatrixDisplay(matrix, display_labels=list(class_labels(class_names, count))).plot(
        ax=ax, cmap="Blues", xticks_rotation=45 if count <= 20 else 90, values_format="d", colorbar=True,
        include_values=count <= 20,
    )  # fmt: skip
    if count > 30:
        ax.tick_params(labelsize=6)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return finish_figure(fig, path)
