"""Image sets stored as .npz arrays (Keras' ``x_train``/``y_train``/``x_test``/``y_test`` names, or ``x``/``y``)."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np

from cnnlab.core.errors import ConfigError, DataError
from cnnlab.data.arrays import stratified_split
from cnnlab.data.dataset import MAX_CLASSES, ImageDataset


def load_npz(path: Path) -> ImageDataset:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    # A damaged zip header can name an unknown compression method (zipfile: NotImplementedError) or set the
    # encryption flag (zipfile: RuntimeError, a password is required); both are a damaged file, not a bug.
    except (OSError, ValueError, EOFError, NotImplementedError, RuntimeError, zipfile.BadZipFile) as error:
        raise DataError(f"{path}: not a readable .npz ({error}); save it with numpy.savez") from error
    if "x_train" not in arrays or "y_train" not in arrays:
        raise DataError(f"{path}: needs arrays x_train and y_train (found {sorted(arrays)}); see numpy.savez")
    for split in ("train", "test"):
        x, y = arrays.get(f"x_{split}"), arrays.get(f"y_{split}")
        if (x is None) != (y is None):
            raise DataError(f"{path}: x_{split} and y_{split} come together; save both or neither")
        if x is None:
            continue
        if x.dtype != np.uint8:
            raise DataError(f"{path}: x_{split} must be uint8 images 0-255, got {x.dtype}; save them unscaled")
        arrays[f"x_{split}"] = x[..., None] if x.ndim == 3 else x  # grey (N, h, w) gets a channel axis
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{path}: y_{split} must hold integer class numbers, got {y.dtype}")
        arrays[f"y_{split}"] = y.reshape(-1).astype(np.int64) if y.ndim == 2 and y.shape[1] == 1 else y.astype(np.int64)
    labels = np.concatenate([arrays[k].reshape(-1) for k in ("y_train", "y_test") if k in arrays])
    names = arrays.get("class_names")
    if names is None and labels.max(initial=0) >= MAX_CLASSES:  # the classes would be named "0", "1", ... up to it
        raise DataError(f"{path}: a label of {labels.max()} is over {MAX_CLASSES - 1:,}; labels count classes from 0")
    names = [str(n) for n in names] if names is not None else [str(i) for i in range(int(labels.max(initial=0)) + 1)]
    checksum = hashlib.sha256(path.read_bytes()).hexdigest()
    origin = {
        "kind": "npz",
        "path": str(path),
        "source": str(path),
        "checksum": checksum,
        "official": None,
        "note": None,
    }
    return ImageDataset(
        arrays["x_train"], arrays["y_train"], arrays.get("x_test"), arrays.get("y_test"), tuple(names), origin
    )


def split_npz(dataset: ImageDataset, validation_split: float | None, seed: int) -> ImageDataset:
    """An .npz without test arrays gets a stratified test share when ``validation_split`` asks for one."""
    if validation_split is None:
        return dataset
    if dataset.x_test is not None:
        raise ConfigError(f"{dataset.origin['path']} has x_test and y_test; leave out --validation-split")
    x, x_test, y, y_test = stratified_split(dataset.x_train, dataset.y_train, validation_split, seed)
    origin = {**dataset.origin, "load": {"validation_split": validation_split, "seed": seed}}
    return ImageDataset(x, y, x_test, y_test, dataset.class_names, origin)
