"""How a trained model holds up off its training distribution: rotated images and other image sizes."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from cnnlab.core.errors import ConfigError, DataError
from cnnlab.data.augment import Augmentation
from cnnlab.train.inputs import nchw
from cnnlab.train.model import Model

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


def resize_images(images: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """NHWC images resized bilinearly to size (or (height, width)), antialiased when shrinking. uint8 images
    stay uint8 (rounded), so the model scales them as it scales every uint8 batch; floats come back float32."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise DataError(f"images must be (N, height, width, channels), got shape {images.shape}")
    height, width = (size, size) if isinstance(size, int) else size
    if height < 1 or width < 1:
        raise ConfigError(f"image size must be positive, got {size}")
    batch = nchw(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)))
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
