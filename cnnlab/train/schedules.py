"""Learning-rate schedules as callbacks: the one-cycle schedule of the fast recipes, set per step."""

from __future__ import annotations

from cnnlab.data.batches import steps_per_epoch
from cnnlab.train.callbacks import Callback


def one_cycle(progress: float, warmup: float, start: float = 0.1) -> float:
    """Learning-rate factor at ``progress`` (0..1) of training: linear from ``start`` to 1 over the
    warm-up, then linear down to 0 at the end."""
    if progress < warmup:
        return start + (1 - start) * progress / warmup
    return max(0.0, (1 - progress) / (1 - warmup))


class OneCycle(Callback):
    """Set the optimizer's learning rate before every step from the one-cycle schedule; its peak is
    the model's learning rate. The step count comes from fit's params and the rate from (epoch, step)
    alone, so it keeps no state and a resumed run continues the schedule exactly."""

    def __init__(self, warmup: float = 0.2, start: float = 0.1):
        self.warmup, self.start = warmup, start

    def on_train_begin(self, logs=None):
        params = self.params
        self.steps_per_epoch = steps_per_epoch(params["samples"], params["batch_size"], params.get("world", 1))
        self.total = self.steps_per_epoch * self.params["epochs"]

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, step, logs=None):
        progress = (self.epoch * self.steps_per_epoch + step) / self.total
        factor = one_cycle(progress, self.warmup, self.start)
        for group in self.model.optimizer.param_groups:
            group["lr"] = group.setdefault("initial_lr", group["lr"]) * factor
