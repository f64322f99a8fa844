"""Feeds: what ``fit``, ``evaluate`` and ``predict`` draw their batches from.

Arrays held in memory become a ``TensorFeed`` (one tensor on the device, batches are index slices of it);
a streamed data set (``cnnlab.data.stream``) brings its own feed, whose batches are decoded by worker
processes. Every feed takes the epoch's order from fit (a permutation of sample indices drawn from fit's
checkpointed generator, so a resumed run sees the batches an uninterrupted one saw) and this process's
``Shard`` of each global batch, so one training loop serves one process or many.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from cnnlab.data.batches import batch_windows


@dataclass(frozen=True)
class Shard:
    """This process's place among the processes of one run: rank ``rank`` of ``world``. Each global batch is
    dealt out as ``batch[rank::world]``, so the ranks' shares together are exactly the one-process batch.
    Feeds cut an epoch with ``batch_windows(samples, batch_size, world)``: every share then holds two images
    or more, and every rank takes the same number of steps (DDP needs each rank at every step)."""

    rank: int = 0
    world: int = 1

    def take(self, index: torch.Tensor) -> torch.Tensor:
        return index if self.world == 1 else index[self.rank :: self.world]


ALONE = Shard()


@runtime_checkable
class Feed(Protocol):
    """A data source fit can train on. ``samples`` images per epoch (all ranks together), ``labels`` theirs in
    the order of a plain pass (what "balanced" class weights count). ``batches`` yields
    (uint8 or float NHWC images, int64 labels) tensors, on any device (fit moves them), one per global step:
    in ``order`` when it is given, else in the feed's own order (``shuffles_itself`` feeds shuffle with
    ``seed`` and ``epoch``); only this ``shard``'s share of each global batch. ``train`` says a training epoch
    (fit's) from one plain pass (evaluate, predict): a feed that shuffles itself shuffles only the former."""

    samples: int
    labels: Sequence[int]
    shuffles_itself: bool

    def batches(
        self,
        batch_size: int,
        order: torch.Tensor | None = None,
        *,
        epoch: int = 0,
        seed: int = 0,
        shard: Shard = ALONE,
        train: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


def is_feed(x) -> bool:
    """Whether fit/evaluate/predict got a feed (a streamed data set's split) rather than arrays."""
    return isinstance(x, Feed)


class TensorFeed:
    """Images and labels already on the training device; a batch is an index slice (no copy when in order)."""

    shuffles_itself = False

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels, self.samples = images, labels, len(images)

    def batches(self, batch_size, order=None, *, epoch=0, seed=0, shard=ALONE, train=False):
        if order is not None:
            order = order.to(self.images.device)
        elif shard.world > 1:
            order = torch.arange(self.samples, device=self.images.device)
        for window in batch_windows(self.samples, batch_size, shard.world):
            index = window if order is None else shard.take(order[window])
            yield self.images[index], self.labels[index]
