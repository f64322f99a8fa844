"""How an epoch of N images is cut into batches: one rule for arrays in memory and streamed data alike."""

from __future__ import annotations

import math
from collections.abc import Iterator


def steps_per_epoch(samples: int, batch_size: int, world: int = 1) -> int:
    """Training steps in one epoch. A last batch of a single image joins the batch before it: PyTorch's
    BatchNorm cannot normalise one image's dense features while training (Keras can), so 225 photos in
    batches of 32 would stop the lab CNN's dense BatchNorm at the end of the first epoch. Shared among
    ``world`` processes, a last batch too small to give each of them two images joins the one before it
    too, so no process gets an empty or one-image share (one process: the rule above)."""
    steps = math.ceil(samples / batch_size)
    return steps - 1 if steps > 1 and samples % batch_size < 2 * world and samples % batch_size else steps


def batch_windows(samples: int, batch_size: int, world: int = 1) -> Iterator[slice]:
    """The positions of each batch in an epoch's order, as ``steps_per_epoch`` counts them."""
    steps = steps_per_epoch(samples, batch_size, world)
    for step in range(steps):
        yield slice(step * batch_size, samples if step == steps - 1 else (step + 1) * batch_size)
