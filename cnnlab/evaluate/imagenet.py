"""ImageNet predictions with ResNet50: Keras' preprocessing, top-k class names, and the photos' figures."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cnnlab.core.errors import ConfigError, DataError
from cnnlab.data.images import MAX_IMAGE_PIXELS, load_image
from cnnlab.models.imagenet_classes import IMAGENET_CLASSES
from cnnlab.models.resnet50 import INPUT_SIZE, ResNet50, preprocess_input
from cnnlab.train.inputs import device_images, nchw


def imagenet_batch(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8/float RGB NHWC -> preprocessed BGR NCHW tensor on the device."""
    return nchw(device_images(preprocess_input(images), device)).contiguous()


def predict(model: ResNet50, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Class probabilities (N, 1000) for RGB images (N, 224, 224, 3) with values 0-255, like Keras' predict."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise DataError(f"predict expects a batch (N, H, W, 3), got shape {images.shape}; add a batch axis")
    device = next(model.parameters()).device
    model.eval()
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            logits = model(imagenet_batch(images[start : start + batch_size], device))
            outputs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0, len(IMAGENET_CLASSES)), np.float32)


def decode_predictions(probs: np.ndarray, top: int = 5) -> list[list[tuple[str, str, float]]]:
    """Keras' decode_predictions: per image, the ``top`` (WordNet id, class name, probability), best first."""
    probs = np.asarray(probs)
    if probs.ndim != 2 or probs.shape[1] != len(IMAGENET_CLASSES):
        raise DataError(
            f"decode_predictions expects shape (N, {len(IMAGENET_CLASSES)}), got {probs.shape}; "
            "for one image pass probs[None]"
        )
    if not 1 <= top <= len(IMAGENET_CLASSES):
        raise ConfigError(f"top must be 1..{len(IMAGENET_CLASSES)}, got {top}")
    decoded = []
    for row in probs:
        best = np.argsort(-row, kind="stable")[:top]
        decoded.append([(*IMAGENET_CLASSES[i], float(row[i])) for i in best])
    return decoded


@dataclass
class PhotoResult:
    """One photo's top classes, all 1000 probabilities, the 224 x 224 image the network saw, conversion notes."""

    path: Path
    image: np.ndarray
    probabilities: np.ndarray
    top: list[tuple[str, str, float]]
    notes: list[str] = field(default_factory=list)


def classify_photos(
    model: ResNet50,
    paths: Sequence[str | os.PathLike],
    top: int = 5,
    resize: str = "crop",
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> tuple[list[PhotoResult], list[tuple[Path, str]]]:
    """Classify photos; a bad file becomes a (path, reason) failure and the others still run."""
    prepared, failures = [], []
    for path in map(Path, paths):
        try:
            image, notes = load_image(path, (INPUT_SIZE, INPUT_SIZE), resize, max_pixels=max_pixels)
            prepared.append((path, image, notes))
        except DataError as error:
            failures.append((path, str(error)))
    if not prepared:
        return [], failures
    probs = predict(model, np.stack([image for _, image, _ in prepared]))
    results = [
        PhotoResult(path, image, row, best, notes)
        for (path, image, notes), row, best in zip(prepared, probs, decode_predictions(probs, top), strict=True)
    ]
    return results, failures


def format_predictions(result: PhotoResult) -> str:
    """A small table of one photo's top classes, as the CLI prints it."""
    lines = [f"{result.path.name}", f"  {'#':>2}  {'WordNet id':<10}  {'class':<28}  {'probability':>11}"]
    for rank, (wnid, name, probability) in enumerate(result.top, 1):
        lines.append(f"  {rank:>2}  {wnid:<10}  {name:<28}  {probability:>11.4f}")
    return "\n".join(lines)


def plot_predictions(results: Sequence[PhotoResult], path: str | os.PathLike) -> Path:
    """One row per photo: the image the network saw beside bars of its top classes; saved as PNG."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 2.6 * len(results)), layout="constrained")
    axes = fig.subplots(len(results), 2, squeeze=False, width_ratios=(1, 1.6))
    for (image_ax, bar_ax), result in zip(axes, results, strict=True):
        gray = result.image.ndim == 3 and result.image.shape[-1] == 1  # a 1-channel model's input
        image_ax.imshow(result.image[..., 0] if gray else result.image, cmap="gray")
        image_ax.set_title(result.path.name, fontsize=10)
        image_ax.axis("off")
        names = [name.replace("_", " ") for _, name, _ in result.top][::-1]
        probabilities = [probability for _, _, probability in result.top][::-1]
        bars = bar_ax.barh(names, probabilities, color="tab:blue")
        bar_ax.bar_label(bars, fmt="%.3f", padding=3, fontsize=8)
        bar_ax.set_xlim(0, 1.15)
        bar_ax.set_xlabel("probability")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
