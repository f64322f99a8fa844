"""The lab's protocol: 7,500 training, 2,500 validation and 2,000 test images, and the same split for any data set.

CIFAR-10 gets exactly the lab's split (the first 10,000 training images, the first 2,000 test images);
other sets are split stratified with a seed, so every class keeps its share.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import train_test_split

from cnnlab.core.errors import DataError
from cnnlab.data.arrays import scale_images, stratified_split
from cnnlab.data.cifar import CLASS_NAMES, IMAGE_SHAPE, NUM_CLASSES, split_summary

HELD_OUT_TEST = 0.2  # share of a data set without a test split that becomes its test set


@dataclass
class LabData:
    """The lab's protocol: 7,500 train / 2,500 validation images from the first 10,000, 2,000 test.

    Images are float32 NHWC in [-1, 1] (or uint8 with ``dtype="uint8"``); labels are integers (use
    ``to_categorical`` for one-hot). ``class_names`` and ``input_shape`` come from the data set; when an
    older caller leaves them out they are filled in: CIFAR-10's names for 32x32x3 images with labels 0..9,
    else the class numbers as text.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: dict
    class_names: tuple[str, ...] | None = None
    input_shape: tuple[int, int, int] | None = None

    def __post_init__(self):
        self.input_shape = tuple(self.input_shape or self.x_train.shape[1:])
        if self.class_names is None:
            top = max(int(np.max(y)) for y in (self.y_train, self.y_val, self.y_test) if len(y)) + 1
            cifar10 = self.input_shape == IMAGE_SHAPE and top <= NUM_CLASSES
            self.class_names = CLASS_NAMES if cifar10 else tuple(str(i) for i in range(top))
        self.class_names = tuple(self.class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def summary(self) -> str:
        counts = f"train {self.x_train.shape}, validation {self.x_val.shape}, test {self.x_test.shape}"
        return split_summary(counts, self.input_shape, self.num_classes, self.source)


def load_lab_data(
    source=None,
    n_train_val: int | None = 10_000,
    n_test: int | None = 2_000,
    val_fraction: float = 0.25,
    seed: int = 0,
    dtype: str = "float32",
    **dataset_options,
) -> LabData:
    """Load a data set and apply the lab's subset, split and scaling.

    ``source``: an ``ImageDataset`` or anything ``load_dataset`` takes (None: CIFAR-10), with
    ``dataset_options`` passed on to it. CIFAR-10 gets exactly the lab's split (the first ``n_train_val``
    training images, an unstratified ``train_test_split``, the first ``n_test`` test images), so published
    figures stay valid; other data sets get stratified subsets, and one without a test split gives up a
    stratified 20% as its test set (said in ``source["note"]``). Sizes of None, or larger than the data
    set, mean all of it. ``dtype="uint8"`` keeps the images as they are (4x less memory: the trainer
    scales each batch); ``"float32"`` scales them to [-1, 1] as the lab does. A streamed data set (a folder
    over the memory limit, or ``stream=True``) gives a ``StreamedLabData`` of feeds, always uint8.
    """
    from cnnlab.data.dataset import ImageDataset
    from cnnlab.data.load import load_dataset

    if dtype not in ("float32", "uint8"):
        raise DataError(f"dtype must be 'float32' or 'uint8', got {dtype!r}")
    loaded = isinstance(source, ImageDataset) or getattr(source, "streamed", False)
    dataset = source if loaded else load_dataset(source, **dataset_options)
    for name, size in (("n_train_val", n_train_val), ("n_test", n_test)):
        if size is not None and size < 1:
            raise DataError(f"{name} must be at least 1 (or None for all images), got {size}")
    if getattr(dataset, "streamed", False):  # a StreamedDataset: its files are split, nothing is decoded
        return _lab_split_streamed(dataset, n_train_val, n_test, val_fraction, seed)
    if dataset.origin.get("kind") == "cifar10":
        splits = _lab_split_cifar10(dataset, n_train_val, n_test, val_fraction, seed)
    else:
        splits = lab_split_arrays(dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test, n_train_val,
                                  n_test, val_fraction, seed)  # fmt: skip
    (x_train, y_train), (x_val, y_val), (x_test, y_test), note = splits
    convert = scale_images if dtype == "float32" else np.asarray
    sizes = {"n_train_val": n_train_val, "n_test": n_test, "val_fraction": val_fraction}
    origin = lab_origin(dataset.origin, note, seed, sizes, dataset.x_test is None, len(y_test))
    return LabData(
        convert(x_train),
        y_train,
        convert(x_val),
        y_val,
        convert(x_test),
        y_test,
        origin,
        dataset.class_names,
        dataset.image_shape,
    )


def _lab_split_cifar10(dataset, n_train_val, n_test, val_fraction, seed):
    """The lab's own split, kept bit for bit: first n_train_val, unstratified split, first n_test."""
    n_train_val = min(n_train_val or len(dataset.x_train), len(dataset.x_train))
    n_test = min(n_test or len(dataset.x_test), len(dataset.x_test))
    x_train, x_val, y_train, y_val = train_test_split(
        np.asarray(dataset.x_train[:n_train_val]),
        np.asarray(dataset.y_train[:n_train_val]),
        test_size=val_fraction,
        random_state=seed,
    )
    test = np.asarray(dataset.x_test[:n_test]), np.asarray(dataset.y_test[:n_test])
    return (x_train, y_train), (x_val, y_val), test, None


def _subset(x: np.ndarray, y: np.ndarray, size: int | None, seed: int):
    if size is None or size >= len(x):
        return np.asarray(x), np.asarray(y)
    kept, _, kept_labels, _ = stratified_split(np.asarray(x), np.asarray(y), len(x) - size, seed)
    return kept, kept_labels


def lab_split_arrays(x, y, x_test, y_test, n_train_val, n_test, val_fraction, seed):
    """The stratified lab split of any arrays: images, or a streamed set's file positions (so a streamed
    set is split exactly as its decoded arrays would be). Returns the three (x, y) pairs and a note."""
    note = None
    if x_test is None:
        x, x_test, y, y_test = stratified_split(np.asarray(x), np.asarray(y), HELD_OUT_TEST, seed)
        note = f"no test split: a stratified {HELD_OUT_TEST:.0%} ({len(x_test)} images) held out as the test set"
    x, y = _subset(x, y, n_train_val, seed)
    x_test, y_test = _subset(x_test, y_test, n_test, seed)
    x_train, x_val, y_train, y_val = stratified_split(x, y, val_fraction, seed)
    return (x_train, y_train), (x_val, y_val), (x_test, y_test), note


def lab_origin(origin: dict, note: str | None, seed: int, sizes: dict, held_out: bool, test_images: int) -> dict:
    """The data set's origin plus the split, recorded so that `cnnlab evaluate` can find the test images again."""
    origin = dict(origin)
    if note:
        origin["note"] = "; ".join(filter(None, (origin.get("note"), note)))
    origin["split"] = {"seed": seed, **sizes, "held_out_test": HELD_OUT_TEST if held_out else None,
                       "test_images": test_images}  # fmt: skip
    return origin


def _lab_split_streamed(dataset, n_train_val, n_test, val_fraction, seed):
    """The lab split of a StreamedDataset's files, made as ``lab_split_arrays`` makes it of decoded arrays (their
    positions stand in for the images), so streamed and in-memory training see the same images in one order."""
    from cnnlab.data.stream import StreamedLabData

    train, test = dataset.train, dataset.test if dataset.test is not None else dataset.train
    held_out = dataset.test is None
    (kept, _), (val, _), (tested, y_test), note = lab_split_arrays(
        np.arange(train.samples), train.labels, None if held_out else np.arange(test.samples),
        None if held_out else test.labels, n_train_val, n_test, val_fraction, seed,
    )  # fmt: skip
    sizes = {"n_train_val": n_train_val, "n_test": n_test, "val_fraction": val_fraction}
    origin = lab_origin(dataset.origin, note, seed, sizes, held_out, len(y_test))
    return StreamedLabData(train.subset(kept), train.subset(val), test.subset(tested), origin, dataset.class_names,
                           dataset.image_shape)  # fmt: skip
