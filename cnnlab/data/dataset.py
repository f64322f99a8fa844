"""``ImageDataset``: a labelled image set as one object (uint8 arrays, class names, size, origin), and the
memory limit that decides whether a set may be held in memory.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

from cnnlab.core.errors import ConfigError, DataError

MEMORY_ENV = "CNNLAB_MEMORY_LIMIT"
MAX_CLASSES = 100_000  # above any real data set's (ImageNet-21k has 21,841): a larger label is damage


@dataclass
class ImageDataset:
    """A labelled image set: uint8 NHWC images, int64 labels, class names and where it came from.

    ``class_names`` left empty become "0", "1", ...; ``origin`` holds kind (cifar10, cifar100, folder, npz),
    path, checksum, official (True/False/None) and a note (e.g. a lossy copy, images skipped); ``source``
    repeats the path for older reports.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    class_names: tuple[str, ...] = ()
    origin: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.class_names:  # unnamed classes are called by their numbers
            labels = [y for y in (self.y_train, self.y_test) if y is not None and len(y)]
            self.class_names = range(max(int(np.max(y)) for y in labels) + 1) if labels else ()
        self.class_names = tuple(str(name) for name in self.class_names)
        if len(self.class_names) < 2:
            raise DataError(
                f"{self.origin.get('path', 'data set')}: needs at least two classes, got {self.class_names}"
            )
        arrays = {"x_train": self.x_train, "y_train": self.y_train, "x_test": self.x_test, "y_test": self.y_test}
        validate_arrays(arrays, str(self.origin.get("path", "data set")), len(self.class_names), image_shape=None)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def memory_limit() -> int:
    """Bytes a decoded data set may take: $CNNLAB_MEMORY_LIMIT (bytes, or e.g. "8GB"), else half the memory."""
    text = os.environ.get(MEMORY_ENV, "").strip().upper().replace(" ", "")
    if text:
        number, scale = (
            (text[:-2], 1e9) if text.endswith("GB") else (text[:-1], 1e9) if text.endswith("G") else (text, 1)
        )
        try:
            limit = float(number) * scale
        except ValueError:
            raise ConfigError(f"{MEMORY_ENV}={text!r} is neither bytes nor GB; e.g. {MEMORY_ENV}=8GB") from None
        return int(limit)
    try:
        import psutil

        total = psutil.virtual_memory().total
    except ImportError:  # psutil is optional; POSIX reports physical pages too
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return total // 2


def memory_need(count: int, size: tuple[int, int], channels: int) -> tuple[int, int]:
    """(bytes the uint8 arrays of ``count`` images take, bytes allowed): over the limit, a folder is streamed
    or refused."""
    return count * size[0] * size[1] * channels, memory_limit()


def check_memory(count: int, size: tuple[int, int], channels: int, where: str) -> None:
    """Refuse, before decoding, a data set whose uint8 arrays would not fit the memory limit."""
    height, width = size
    needed, limit = memory_need(count, size, channels)
    if needed <= limit:
        return
    side = math.isqrt(limit // max(1, count * channels))
    fix = f"use --image-size {side} or smaller" if side else "use fewer images"
    raise DataError(
        f"{where}: {count:,} images at {height}x{width}x{channels} need {needed / 1e9:.2f} GB, over the limit of "
        f"{limit / 1e9:.2f} GB; {fix}, or raise {MEMORY_ENV}"
    )


def validate_arrays(
    arrays: dict[str, np.ndarray | None],
    origin: str,
    num_classes: int,
    image_shape: tuple[int, int, int] | None,
) -> None:
    """Check shapes, dtypes and label range; raise DataError naming the array at fault.

    ``image_shape=None`` accepts any (h, w, 1 or 3) shared by train and test.
    A missing or None test split is allowed (not every data set has one).
    """
    shapes = set()
    for split in ("train", "test"):
        x, y = arrays.get(f"x_{split}"), arrays.get(f"y_{split}")
        if x is None and split == "test":
            continue
        expected = "(N, {}, {}, {})".format(*image_shape) if image_shape else "(N, height, width, 1 or 3)"
        if x.dtype != np.uint8 or x.ndim != 4 or (image_shape and x.shape[1:] != tuple(image_shape)):
            raise DataError(f"{origin}: x_{split} must be uint8 of shape {expected}, got {x.dtype} {x.shape}")
        if x.shape[-1] not in (1, 3):
            raise DataError(f"{origin}: x_{split} must have 1 or 3 channels last, got shape {x.shape}")
        shapes.add(x.shape[1:])
        if y is None or y.ndim != 1 or len(y) != len(x):
            shape = None if y is None else y.shape
            raise DataError(f"{origin}: y_{split} must have one label per image, got {shape} for {len(x)} images")
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise DataError(
                f"{origin}: y_{split} has labels outside 0..{num_classes - 1} (min {y.min()}, max {y.max()}); "
                "labels must count classes from 0"
            )
    if len(shapes) > 1:
        raise DataError(f"{origin}: train and test images differ in shape {sorted(shapes)}; resize them to one size")


SPEC_HELP = (
    "--data takes cifar10, cifar100, a folder of class subfolders (optionally inside train/ and test/), "
    "an .npz with x_train and y_train, or a CIFAR archive"
)
