"""``load_dataset``: one entry point for every data source (CIFAR-10/100, .npz, image folders).

A new data source is a loader that returns an ``ImageDataset`` plus one branch here.
"""

from __future__ import annotations

import os
from pathlib import Path

from cnnlab.core.errors import ConfigError, DataError
from cnnlab.data.cifar import (
    LABEL_MODES,
    cifar_kind,
    load_cifar,
)
from cnnlab.data.dataset import SPEC_HELP, ImageDataset
from cnnlab.data.images import COLOR_MODES, MAX_IMAGE_PIXELS
from cnnlab.data.npz import load_npz, split_npz
from cnnlab.data.shards import ShardDataset, is_shard_set, load_shards
from cnnlab.data.stream import StreamedDataset, open_folder


def load_dataset(
    spec: str | os.PathLike | None = None,
    *,
    image_size: int | tuple[int, int] | None = None,
    color_mode: str = "rgb",
    crop_to_aspect_ratio: bool = False,
    pad_to_aspect_ratio: bool = False,
    class_names: list[str] | tuple[str, ...] | None = None,
    validation_split: float | None = None,
    seed: int = 0,
    label_mode: str = "fine",
    strict: bool = False,
    max_pixels: int = MAX_IMAGE_PIXELS,
    progress: bool = True,
    stream: bool | None = None,
) -> ImageDataset | StreamedDataset | ShardDataset:
    """Load a data set from a spec: None or "cifar10" ($CNNLAB_CIFAR10), "cifar100" ($CNNLAB_CIFAR100),
    a folder of class subfolders, an .npz, or a CIFAR-10/100 archive or folder (recognised by its contents);
    a folder packed by ``cnnlab pack`` gives a ShardDataset, read streamed.

    Folders follow Keras' ``image_dataset_from_directory``: class names are the sorted subfolder names;
    ``train/`` and ``test/`` (or ``val/``) inside give the split, else ``validation_split`` (stratified,
    ``seed``) holds out a test share. ``image_size`` (h, w) or an int for squares; when None it is the most
    common size among up to 200 sampled images, shrunk to 256 on its longer side. ``crop_to_aspect_ratio``
    cuts the centre instead of squashing, ``pad_to_aspect_ratio`` pads with black instead; ``color_mode`` is
    "rgb" or "grayscale". ``class_names`` fixes the classes' order, or picks some of the subfolders. Unreadable
    images are skipped with a warning, or refused with ``strict=True``. ``label_mode`` picks CIFAR-100's 100
    fine or 20 coarse classes. The size, colour, crop, pad and class options apply to folders only.
    A folder whose arrays would pass the memory limit ($CNNLAB_MEMORY_LIMIT) comes as a ``StreamedDataset``,
    decoded batch by batch while training; ``stream=True`` always streams a folder, ``stream=False`` never.
    """
    size = _as_size(image_size)
    if color_mode not in COLOR_MODES:
        raise ConfigError(f"color_mode must be one of {COLOR_MODES}, got {color_mode!r}")
    if label_mode not in LABEL_MODES:
        raise ConfigError(f"label_mode must be one of {LABEL_MODES}, got {label_mode!r}")
    if validation_split is not None and not 0 < validation_split < 1:
        raise ConfigError(f"validation_split must lie between 0 and 1 (e.g. 0.2), got {validation_split}")
    resize = _resize_mode(crop_to_aspect_ratio, pad_to_aspect_ratio)
    class_names = _as_class_names(class_names)
    name = str(spec).lower() if spec is not None else "cifar10"
    if name in ("cifar10", "cifar100"):
        if stream:
            raise ConfigError(f"{name}: --stream (stream=True) streams image folders; {name} is loaded into memory")
        return _check_options(load_cifar(name, None, label_mode), size, color_mode, validation_split, class_names)
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"--data {spec}: no such file or folder; {SPEC_HELP}")
    if is_shard_set(path):
        return _check_options(load_shards(path), size, color_mode, validation_split, class_names)
    kind = cifar_kind(path)
    if stream and (kind or not path.is_dir()):
        raise ConfigError(f"{path}: --stream (stream=True) streams image folders; this data is loaded into memory")
    if kind:
        return _check_options(load_cifar(kind, path, label_mode), size, color_mode, validation_split, class_names)
    if path.suffix.lower() == ".npz":
        return split_npz(_check_options(load_npz(path), size, color_mode, None, class_names), validation_split, seed)
    if not path.is_dir():
        raise DataError(f"{path}: not an image folder, .npz or CIFAR archive; {SPEC_HELP}")
    settings = {
        "image_size": size,
        "color_mode": color_mode,
        "resize": resize,
        "class_names": class_names,
        "validation_split": validation_split,
        "seed": seed,
        "max_pixels": max_pixels,
    }
    return open_folder(path, settings, strict, progress, stream)


def _resize_mode(crop_to_aspect_ratio: bool, pad_to_aspect_ratio: bool) -> str:
    if crop_to_aspect_ratio and pad_to_aspect_ratio:
        raise ConfigError("crop_to_aspect_ratio and pad_to_aspect_ratio exclude each other: cut or pad, choose one")
    return "crop" if crop_to_aspect_ratio else "pad" if pad_to_aspect_ratio else "stretch"


def _as_class_names(class_names) -> list[str] | None:
    if class_names is None:
        return None
    if isinstance(class_names, str) or not all(isinstance(name, str) and name for name in class_names):
        raise ConfigError(f"class_names takes a list of folder names, e.g. ['cat', 'dog'], got {class_names!r}")
    return list(class_names)


def _as_size(image_size) -> tuple[int, int] | None:
    if image_size is None:
        return None
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(side, int) and side >= 1 for side in size):
        raise ConfigError(f"image_size must be an int or (height, width) of positive ints, got {image_size!r}")
    return size


def _check_options(dataset: ImageDataset, size, color_mode: str, validation_split=None, class_names=None):
    """Archives and arrays come at one size, with a test split; say so instead of ignoring a folder option."""
    if class_names is not None:
        raise ConfigError(f"{dataset.origin['path']}: --class-names (class_names) applies to image folders only")
    if validation_split is not None:
        raise ConfigError(f"{dataset.origin['path']} has its own test split; leave out --validation-split")
    height, width, channels = dataset.image_shape
    if size is not None and size != (height, width):
        raise ConfigError(
            f"{dataset.origin['path']} holds {height}x{width} images; --image-size applies to image folders only"
        )
    if color_mode == "grayscale" and channels != 1:
        raise ConfigError(f"{dataset.origin['path']} holds colour images; --color-mode applies to image folders only")
    return dataset
