"""A folder streamed from disk: files, labels, classes and splits are known up front, pixels are decoded per batch.

A folder whose decoded arrays would pass the memory limit trains this way instead of being refused. Its splits
are feeds (cnnlab.train.feed.Feed, by duck typing: the data layer does not import cnnlab.train) that fit,
evaluate and predict take in place of arrays. The files are listed and split exactly as the decoded arrays
would be, and each batch is decoded by the same per-file function, so the same seed trains the same history.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cnnlab.core.errors import DataError
from cnnlab.core.runtime import available_cores
from cnnlab.data.arrays import stratified_split
from cnnlab.data.batches import batch_windows
from cnnlab.data.cifar import split_summary
from cnnlab.data.dataset import MEMORY_ENV, memory_need
from cnnlab.data.folders import FolderListing, load_folder, scan_folder, warn_decoded
from cnnlab.data.images import decode_batch

MAX_WORKERS = 4  # default decoding processes per pass (fewer on a machine with fewer cores); settable per data set
_SAMPLE_BATCH = 256  # files per batch when a few images are decoded outside training (whitening, figures)


def first_images(x, y, count: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The first ``count`` images and labels of arrays (``y`` may be None), or decoded from a streamed split
    (a feed with ``load``, which brings its labels): for sample figures and the recipe's whitening."""
    if getattr(x, "streamed", False):
        return x.load(np.arange(min(count, x.samples)))
    return np.asarray(x[:count]), None if y is None else np.asarray(y[:count])


def open_folder(root: Path, settings: dict, strict: bool, progress: bool, stream: bool | None):
    """A folder as arrays in memory, or streamed: when ``stream`` is True, or None and the arrays would not
    fit the memory limit (one warning says so)."""
    found = scan_folder(root, settings)
    size = found.settings["image_size"]
    needed, limit = memory_need(found.count, size, found.channels)
    note = None
    if stream is None and needed > limit:
        note = (
            f"{found.count:,} images at {size[0]}x{size[1]} need {needed / 1e9:.2f} GB, over the limit of "
            f"{limit / 1e9:.2f} GB ({MEMORY_ENV}): streaming them from disk"
        )
        warnings.warn(f"{root}: {note}", stacklevel=3)
    if stream or note:
        return StreamedDataset(found, strict, note)
    return load_folder(found, strict, progress)


@dataclass
class Decoding:
    """How a streamed set's files become pixels; one object shared by its feeds, so ``num_workers`` set on
    the data set applies to every split."""

    root: Path
    size: tuple[int, int]
    resize: str
    color_mode: str
    max_pixels: int
    strict: bool
    num_workers: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return (*self.size, 1 if self.color_mode == "grayscale" else 3)


class _Files(Dataset):
    """What a DataLoader worker holds: a split's file names and labels. One call decodes one batch through
    images.decode_batch (the in-memory path's function) and drops, but reports, the unreadable files."""

    def __init__(self, names: list[str], labels: np.ndarray, decoding: Decoding):
        self.names, self.labels, self.decoding = names, labels, decoding

    def __len__(self) -> int:
        return len(self.names)

    def __getitems__(self, positions: list[int]):
        d = self.decoding
        images, errors, notes = decode_batch([self.names[i] for i in positions], d.size, d.resize, d.color_mode,
                                             d.max_pixels)  # fmt: skip
        good = [i for i, error in enumerate(errors) if error is None]
        bad = [(self.names[positions[i]], error) for i, error in enumerate(errors) if error is not None]
        labels = self.labels[np.asarray(positions, dtype=np.int64)[good]]
        return torch.from_numpy(images[good]), torch.from_numpy(labels), bad, notes


def _as_is(batch):
    return batch


class FolderFeed:
    """One split of a streamed folder as fit, evaluate and predict take it: ``samples`` files with ``labels``;
    ``batches`` decodes each global batch (this shard's share) in DataLoader worker processes, which torch
    runs with one thread each. Unreadable files are left out of their batch, counted in ``skipped`` and
    warned about once per pass; with strict loading the first one raises."""

    shuffles_itself = False
    streamed = True

    def __init__(self, files: Sequence[Path], labels: np.ndarray, decoding: Decoding):
        self.files, self.labels, self.decoding = list(files), np.asarray(labels, dtype=np.int64), decoding
        self.samples = len(self.files)
        self.skipped: list[tuple[Path, str]] = []  # the unreadable files of the last pass

    def subset(self, positions) -> FolderFeed:
        """The files at ``positions``, in that order, as a feed of their own."""
        positions = np.asarray(positions, dtype=np.int64)
        return FolderFeed([self.files[i] for i in positions], self.labels[positions], self.decoding)

    def batches(self, batch_size, order=None, *, epoch=0, seed=0, shard=None, train=False) -> Iterator[tuple]:
        """(uint8 NHWC images, int64 labels) on the CPU per global step, in ``order`` (fit's permutation) or in
        file order, cut by batch_windows; ``shard.take`` picks this process's share of each batch. ``train``
        changes nothing: fit's order is what makes a training epoch here."""
        positions = torch.arange(self.samples) if order is None else order.cpu()
        world = 1 if shard is None else shard.world
        windows = [positions[window] for window in batch_windows(self.samples, batch_size, world)]
        lists = [(index if shard is None else shard.take(index)).tolist() for index in windows]
        workers = min(self.decoding.num_workers, len(lists))
        loader = DataLoader(_Files(list(map(str, self.files)), self.labels, self.decoding), batch_sampler=lists,
                            collate_fn=_as_is, num_workers=workers, pin_memory=torch.cuda.is_available())  # fmt: skip
        skipped, notes = [], Counter()
        for images, labels, bad, batch_notes in loader:
            if bad and self.decoding.strict:
                raise DataError(f"{bad[0][1]} (strict mode: remove or fix the file, or load without --strict)")
            skipped += [(Path(name), reason) for name, reason in bad]
            notes.update(batch_notes)
            if len(labels):
                yield images, labels
        self.skipped = skipped
        warn_decoded(self.decoding.root, skipped, notes, self.decoding.color_mode, stacklevel=5)

    def load(self, positions) -> tuple[np.ndarray, np.ndarray]:
        """The images at ``positions`` as uint8 arrays with their labels (unreadable ones left out): the few a
        figure or the recipe's whitening needs, decoded by the workers."""
        parts = list(self.subset(positions).batches(_SAMPLE_BATCH))
        if not parts:
            return np.zeros((0, *self.decoding.shape), np.uint8), np.zeros(0, np.int64)
        return torch.cat([x for x, _ in parts]).numpy(), torch.cat([y for _, y in parts]).numpy()


class StreamedDataset:
    """An image folder known by its files: ImageDataset's class_names, num_classes, image_shape and origin,
    with the splits as feeds, ``train`` and ``test`` (None without a test split), instead of arrays.

    ``validation_split`` is taken over the files, stratified by seed, as the decoded arrays are split; so the
    feeds list the images in the order the arrays hold them. ``num_workers`` (default min(4, cores))
    decoding processes serve each pass; 0 decodes in this process.
    """

    streamed = True

    def __init__(self, found: FolderListing, strict: bool = False, note: str | None = None):
        settings = found.settings
        self.decoding = Decoding(found.root, tuple(settings["image_size"]), settings["resize"], settings["color_mode"],
                                 settings["max_pixels"], strict, min(MAX_WORKERS, available_cores()))  # fmt: skip
        self.class_names = found.class_names
        self.train = FolderFeed(*found.split_files("train"), self.decoding)
        self.test = FolderFeed(*found.split_files("test"), self.decoding) if "test" in found.scan.splits else None
        if self.test is None and settings["validation_split"]:
            positions = np.arange(self.train.samples)
            kept, held, _, _ = stratified_split(positions, self.train.labels, settings["validation_split"],
                                                settings["seed"])  # fmt: skip
            self.train, self.test = self.train.subset(kept), self.train.subset(held)
        self.origin = {"kind": "folder", "official": None, "layout": found.layout(), "streamed": True,
                       "image_size": list(self.decoding.size), "ignored_files": len(found.scan.ignored),
                       "note": note, **found.origin(strict)}  # fmt: skip

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.decoding.shape

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_workers(self) -> int:
        return self.decoding.num_workers

    @num_workers.setter
    def num_workers(self, workers: int) -> None:
        self.decoding.num_workers = int(workers)


@dataclass
class StreamedLabData:
    """LabData's streamed twin (``load_lab_data`` of a StreamedDataset), which `cnnlab train` takes in its
    place: the lab split's feeds (train on them with ``fit(data.train, None, validation_data=data.validation)``),
    their labels, class names, input shape and source."""

    train: FolderFeed
    validation: FolderFeed
    test: FolderFeed
    source: dict
    class_names: tuple[str, ...]
    input_shape: tuple[int, int, int]
    streamed = True

    @property
    def y_train(self) -> np.ndarray:
        return self.train.labels

    @property
    def y_val(self) -> np.ndarray:
        return self.validation.labels

    @property
    def y_test(self) -> np.ndarray:
        return self.test.labels

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def summary(self) -> str:
        counts = (f"train {self.train.samples}, validation {self.validation.samples}, test {self.test.samples} "
                  "images, streamed from disk")  # fmt: skip
        return split_summary(counts, self.input_shape, self.num_classes, self.source)
