"""The feed of a packed shard set: DataLoader workers read the WebDataset tar shards and decode their images.

A training epoch (``train=True``, from fit) with ``seed`` and ``epoch``: the feed's pieces (runs of one
shard's samples) are shuffled with (seed, epoch), identically on every rank; rank r of w takes every w-th
piece from the r-th, and its worker k of n every n-th of those (webdataset's ``split_by_worker``). Each worker
mixes its samples in a shuffle buffer seeded with (seed, epoch, rank, worker), so a given seed gives the same
batches on every run. Every rank yields exactly ``samples // world`` images in the batches that
``batch_windows(samples // world, batch_size // world)`` cuts: the same number of steps on every rank, which
DistributedDataParallel needs (a rank with one step more would wait forever in its all-reduce). A rank whose
pieces hold fewer samples than that reads them again from the start (cycles); one with more stops early.

A plain pass (``train=False``: evaluate, predict) reads rank r's pieces (every w-th) once each, in pack order;
the main process puts the workers' batches back into that order, so ``labels`` matches ``predict``.

A shard feed is a streamed split as ``cnnlab.data.stream`` defines one (``streamed``, ``labels``, ``subset``,
``load``), so the lab split, `cnnlab train` and `cnnlab evaluate` take it as they take a streamed folder.
"""

from __future__ import annotations

import math
import os
import random
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from itertools import cycle, groupby, islice

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, get_worker_info

from cnnlab.core.errors import ConfigError, DataError
from cnnlab.core.files import file_sha256
from cnnlab.data.batches import batch_windows

Batch = tuple[torch.Tensor, torch.Tensor]
LOAD_BATCH = 256  # images per batch when a few are read outside training (figures, the recipe's whitening)


@dataclass(frozen=True)
class Piece:
    """The samples of one shard file at ``positions`` (increasing: their places in the order pack wrote them)."""

    path: str
    sha256: str
    positions: Sequence[int]


def verify(pieces: Iterable[Piece]) -> None:
    """Before this process reads a shard, compare its sha256 with the index's (computed once per file version:
    path, size and mtime), so a damaged or swapped shard stops the run with one line instead of bad batches."""
    for path, expected in {piece.path: piece.sha256 for piece in pieces}.items():
        folder, name = os.path.split(path)
        try:
            actual = file_sha256(path)
        except FileNotFoundError:
            raise DataError(f"shard {name} is missing from {folder}: re-pack with cnnlab pack --overwrite") from None
        if actual != expected:
            raise DataError(
                f"shard {name} fails its checksum (index says {expected[:12]}…, file has {actual[:12]}…): "
                f"re-pack {folder} with cnnlab pack --overwrite"
            )


class ShardFeed:
    """Samples of a packed shard set as a feed: uint8 NHWC batches and int64 labels on the CPU. ``labels`` are
    the samples' labels in pack order (the order of a one-process plain pass, and of ``subset`` positions)."""

    shuffles_itself = True
    streamed = True
    skipped = ()  # what a pass could not read: nothing, pack decoded every image already

    def __init__(self, pieces: list[Piece], labels: np.ndarray, image_shape, workers: int = 2, buffer: int = 1000):
        self.pieces, self.labels, self.image_shape = list(pieces), labels, tuple(image_shape)
        self.samples = sum(len(piece.positions) for piece in self.pieces)
        self.workers, self.buffer = workers, buffer

    @property
    def files(self) -> list[str]:
        """A name per sample, in feed order: shard and place in it (what a file name is to a streamed folder)."""
        return [f"{os.path.basename(piece.path)}#{place}" for piece in self.pieces for place in piece.positions]

    def subset(self, positions) -> ShardFeed:
        """The samples at ``positions`` (of this feed) as a feed of their own, in this feed's order: a stream is
        read front to back, so the order given is not kept."""
        wanted = np.unique(np.asarray(positions, dtype=np.int64))
        pieces, start = [], 0
        for piece in self.pieces:
            stop = start + len(piece.positions)
            local = wanted[np.searchsorted(wanted, start) : np.searchsorted(wanted, stop)] - start
            if len(local):
                pieces.append(replace(piece, positions=tuple(np.asarray(piece.positions)[local].tolist())))
            start = stop
        return ShardFeed(pieces, self.labels[wanted], self.image_shape, self.workers, self.buffer)

    def load(self, positions) -> tuple[np.ndarray, np.ndarray]:
        """The images at ``positions``, in the order given, as uint8 arrays with their labels: the few a figure
        or the recipe's whitening needs."""
        positions = np.asarray(positions, dtype=np.int64)
        parts = list(self.subset(positions).batches(LOAD_BATCH))
        if not parts:
            return np.zeros((0, *self.image_shape), np.uint8), np.zeros(0, np.int64)
        order = np.searchsorted(np.unique(positions), positions)
        return torch.cat([x for x, _ in parts]).numpy()[order], torch.cat([y for _, y in parts]).numpy()[order]

    def batches(self, batch_size, order=None, *, epoch=0, seed=0, shard=None, train=False) -> Iterator[Batch]:
        if order is not None:
            raise ConfigError("a shard feed shuffles itself (with fit's seed and the epoch); it takes no order")
        rank, world = (shard.rank, shard.world) if shard is not None else (0, 1)
        if not train:
            units = self.pieces[rank::world]
            return _in_order(self._loader(units, partial(_unit_batches, size=batch_size)), units, batch_size)
        quota, local = self.samples // world, max(1, batch_size // world)
        if quota < 1:
            raise DataError(f"{self.samples} sample(s) cannot be dealt out to {world} ranks")
        units = _rank_units(self.pieces, quota, random.Random(f"{seed}/{epoch}"), rank, world)
        shuffled = partial(_shuffled, buffer=self.buffer, seed=f"{seed}/{epoch}/{rank}")
        return _exact(self._loader(units, shuffled, partial(_batched, size=local)), batch_windows(quota, local))

    def _loader(self, units: list[Piece], *stages) -> DataLoader:
        """Workers that read ``units`` (worker k: units k, k+n, ...) through ``stages``; checksums first."""
        verify(units)
        read = partial(_read, shape=self.image_shape)
        pipeline = wds.DataPipeline(partial(iter, list(enumerate(units))), wds.split_by_worker, read, *stages)
        workers = min(self.workers, len(units))
        return DataLoader(pipeline, batch_size=None, num_workers=workers, pin_memory=torch.cuda.is_available())


def _rank_units(pieces: list[Piece], quota: int, rng: random.Random, rank: int, world: int) -> list[Piece]:
    """This rank's pieces for one epoch: every world-th of the shuffled pieces, cycled or cut to ``quota``."""
    shuffled = list(pieces)
    rng.shuffle(shuffled)
    mine = shuffled[rank::world]
    if not mine:
        raise DataError(
            f"{len(pieces)} shard(s) cannot be split over {world} ranks (each rank reads whole shards): "
            "re-pack with a smaller --shard-size"
        )
    units, left = [], quota
    for piece in cycle(mine):
        if not left:
            break
        units.append(replace(piece, positions=piece.positions[:left]))
        left -= len(units[-1].positions)
    return units


def _read(units, shape: tuple[int, int, int]) -> Iterator[tuple[int, np.ndarray, int]]:
    """(unit position, image, label) for each sample of this worker's units (webdataset reads the tar). pack
    writes C-order uint8 .npy images, whose pixels are the file's last h*w*c bytes: read in place, 30x faster
    than np.load, which parses each header (33 us an image, a third of a worker's time per sample)."""
    size = math.prod(shape)
    for position, unit in units:
        wanted = iter(unit.positions)
        target = next(wanted, None)
        for place, sample in enumerate(wds.tarfile_samples([{"url": unit.path}])):
            if target is None:
                break
            if place == target:
                npy = sample["npy"]
                yield position, np.frombuffer(npy, np.uint8, size, len(npy) - size).reshape(shape), int(sample["cls"])
                target = next(wanted, None)


def _shuffled(items, buffer: int, seed: str):
    """webdataset's shuffle buffer with a generator of this worker's own, seeded from the epoch's seed."""
    worker = get_worker_info()
    rng = random.Random(f"{seed}/{worker.id if worker else 0}")
    return wds.shuffle(buffer, buffer, rng=rng)(items)


def _batched(items, size: int) -> Iterator[Batch]:
    items = iter(items)
    while chunk := list(islice(items, size)):
        images = torch.from_numpy(np.stack([image for _, image, _ in chunk]))
        yield images, torch.tensor([label for _, _, label in chunk], dtype=torch.int64)


def _unit_batches(items, size: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Batches that each hold one unit's samples, tagged with the unit's position, for ``_in_order``."""
    for position, group in groupby(items, key=lambda item: item[0]):
        for images, labels in _batched(group, size):
            yield position, images, labels


def _exact(loader: DataLoader, windows: Iterable[slice]) -> Iterator[Batch]:
    """The workers' batches cut to the epoch's windows, so each step's batch has the size fit expects."""
    stream, images, labels, held = iter(loader), [], [], 0
    for window in windows:
        need = window.stop - window.start
        while held < need:
            x, y = next(stream)
            images.append(x)
            labels.append(y)
            held += len(y)
        x, y = (torch.cat(images), torch.cat(labels)) if len(images) > 1 else (images[0], labels[0])
        yield x[:need], y[:need]
        images, labels, held = [x[need:]], [y[need:]], held - need


def _in_order(loader: DataLoader, units: list[Piece], batch_size: int) -> Iterator[Batch]:
    """The workers' batches in unit order: a unit's batches wait until every unit before it is through."""
    left = [math.ceil(len(unit.positions) / batch_size) for unit in units]
    waiting, current = defaultdict(deque), 0
    for position, images, labels in loader:
        waiting[position].append((images, labels))
        while current < len(units) and waiting[current]:
            yield waiting[current].popleft()
            left[current] -= 1
            current += not left[current]
