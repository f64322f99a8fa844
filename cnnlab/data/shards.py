"""Packed shards: a data set written by ``cnnlab pack`` (``cnnlab.data.pack``) as WebDataset tar files plus an
``index.json``, read back streamed: nothing is decoded up front and memory does not grow with the data set.

``load_shards`` reads the index; its splits are feeds (``cnnlab.data.shard_feed``) that ``Model.fit``,
``evaluate`` and ``predict`` take as they are. A range of a split is a feed too: pack wrote each split in a
seeded random order, so the last part of a split is a random sample of it, which is how a validation share is
held out (exact counts, any number of shards, the same samples every time).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnnlab.core.errors import ConfigError, DataError

INDEX_NAME = "index.json"
INDEX_FORMAT = "cnnlab-shards"
INDEX_VERSION = 1
SPLITS = ("train", "test")
DEFAULT_WORKERS = 2
DEFAULT_SHUFFLE_BUFFER = 1000  # samples per worker: 12 MB of 64x64 images, enough to mix neighbouring shards
ARRAY_ATTRIBUTES = ("x_train", "y_train", "x_test", "y_test")


def is_shard_set(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding the index of a packed shard set."""
    return Path(path).is_dir() and (Path(path) / INDEX_NAME).is_file()


def read_index(folder: str | os.PathLike) -> dict:
    """The index pack wrote, checked for its format and version (a newer cnnlab's index is refused)."""
    path = Path(folder) / INDEX_NAME
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(
            f"{folder}: no {INDEX_NAME}, so no complete packed shard set; pack it with cnnlab pack"
        ) from None
    except (OSError, ValueError) as error:
        raise DataError(f"{path} cannot be read ({error}); re-pack with cnnlab pack --overwrite") from None
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
        raise DataError(f"{path} is not a cnnlab shard index; pack the data with cnnlab pack")
    if index.get("version") != INDEX_VERSION:
        raise DataError(
            f"{path} has shard index version {index.get('version')}; this cnnlab reads version {INDEX_VERSION}: "
            "re-pack with this cnnlab's cnnlab pack --overwrite"
        )
    return index


@dataclass
class ShardDataset:
    """A packed shard set: class names, image shape, and its splits as feeds (``train``, ``validation`` when
    a share was held out, ``test`` when the set has one). ``origin`` has kind "shards", the folder and where
    the images came from. ``feed(split, start, stop)`` streams any range of a split in pack order."""

    path: Path
    index: dict
    num_workers: int = DEFAULT_WORKERS  # as StreamedDataset names it, so one setting serves both
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER
    validation_split: float | None = None
    class_names: tuple[str, ...] = field(init=False)
    origin: dict = field(init=False)
    shard_labels: dict[str, np.ndarray] = field(init=False, repr=False)  # per shard, parsed from the index once
    streamed = True  # the splits are feeds: the lab split, cnnlab train and cnnlab evaluate stream them

    def __post_init__(self):
        self.class_names = tuple(self.index["class_names"])
        self.shard_labels = {record["name"]: _labels(record) for record in self.index["shards"]}
        self.origin = {
            "kind": "shards",
            "path": str(self.path),
            "source": str(self.path),
            "official": None,
            "packed_from": self.index["source"],
            "note": None,
            "split_checksums": {split: _digest(self.index, split) for split in SPLITS if self.count(split)},
        }
        if self.held_out and self.count("train") - self.held_out < 1:
            raise DataError(f"{self.path}: validation_split {self.validation_split} leaves no training samples")

    # The splits are made when asked for, so a num_workers set after loading (--data-workers) reaches them.
    @property
    def train(self):
        return self.feed("train", 0, self.count("train") - self.held_out)

    @property
    def validation(self):
        return self.feed("train", self.count("train") - self.held_out) if self.held_out else None

    @property
    def test(self):
        return self.feed("test") if self.count("test") else None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.index["image_shape"])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def held_out(self) -> int:
        """Training samples held out as the validation split: the last ``validation_split`` share."""
        return max(1, round(self.count("train") * self.validation_split)) if self.validation_split else 0

    def count(self, split: str) -> int:
        return int(self.index["counts"].get(split, {}).get("samples", 0))

    def feed(self, split: str, start: int = 0, stop: int | None = None):
        """A feed of samples ``start`` to ``stop`` of ``split`` in the order pack wrote them (a seeded shuffle)."""
        from cnnlab.data.shard_feed import Piece, ShardFeed

        if split not in SPLITS:
            raise ConfigError(f"a shard set's splits are {', '.join(SPLITS)}, not {split!r}")
        stop = self.count(split) if stop is None else min(stop, self.count(split))
        pieces, labels, offset = [], [], 0
        for record in self.index["shards"]:
            if record["split"] != split:
                continue
            first, last = max(start - offset, 0), min(stop - offset, record["samples"])
            if first < last:
                pieces.append(Piece(str(self.path / record["name"]), record["sha256"], range(first, last)))
                labels.append(self.shard_labels[record["name"]][first:last])
            offset += record["samples"]
        if not pieces:
            raise DataError(
                f"{self.path}: no {split} samples in {start}..{stop}; the {split} split holds {self.count(split)}"
            )
        return ShardFeed(pieces, np.concatenate(labels), self.image_shape, self.num_workers, self.shuffle_buffer)

    def __getattr__(self, name: str):
        if name in ARRAY_ATTRIBUTES:  # code written for ImageDataset: say what to do instead of AttributeError
            raise DataError(
                f"{self.path} is a packed shard set, read streamed, not arrays in memory: train on its feeds "
                "(model.fit(data.train, None, validation_data=data.validation)) or with cnnlab train --data"
            )
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


def _digest(index: dict, split: str) -> str:
    """A split's identity, over its shards' checksums: `cnnlab evaluate` knows the shards a model trained on."""
    checksums = "".join(record["sha256"] for record in index["shards"] if record["split"] == split)
    return hashlib.sha256(checksums.encode()).hexdigest()[:32]


def _labels(record: dict) -> np.ndarray:
    """A shard's labels, in sample order, from the index (pack writes them as one space-separated string)."""
    return np.array(record["labels"].split(), dtype=np.int64)


def load_shards(
    folder: str | os.PathLike,
    *,
    validation_split: float | None = None,
    num_workers: int = DEFAULT_WORKERS,
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
) -> ShardDataset:
    """Open the packed shard set in ``folder`` (see ``cnnlab.data.pack``). ``validation_split`` holds out that
    share of the training split (its last part in pack order, a random sample) as ``.validation``;
    ``num_workers`` DataLoader processes read and decode the shards; ``shuffle_buffer`` samples per worker are
    mixed while training. Checksums are checked when a shard is first read."""
    folder = Path(folder).expanduser()
    if validation_split is not None and not 0 < validation_split < 1:
        raise ConfigError(f"validation_split must lie between 0 and 1 (e.g. 0.2), got {validation_split}")
    if num_workers < 0 or shuffle_buffer < 1:
        raise ConfigError(f"need num_workers >= 0 and shuffle_buffer >= 1, got {num_workers} and {shuffle_buffer}")
    return ShardDataset(folder, read_index(folder), num_workers, shuffle_buffer, validation_split)
