"""Callbacks run by ``Model.fit``, named and ordered as in Keras: the loop itself only trains.

Progress, the history, history.csv, checkpoints and resuming, the NaN stop and the run folder's
config.json/metrics.json/weights are each a callback, run through one ``CallbackList``. A callback
that keeps state across epochs (an average, a patience counter) defines ``get_state``/``set_state``;
checkpoints hold those states, so a resumed run continues exactly as an uninterrupted one.

"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from cnnlab.core.errors import ConfigError, TrainingDiverged
from cnnlab.core.files import write_csv, write_json
from cnnlab.data.batches import steps_per_epoch
from cnnlab.train.checkpoint import CHECKPOINT, PREVIOUS_CHECKPOINT, read_checkpoint, write_checkpoint

_BATCH_HOOKS = ("on_train_batch_begin", "on_train_batch_end")


class Callback:
    """Hooks into ``fit``, named as in Keras. Before training starts, fit sets ``self.model``,
    ``self.params`` (batch_size, epochs, samples, seed) and ``self.run_dir`` (None without a run folder).

    Batch hooks get ``logs`` with ``size`` (images in the batch); after the step also ``loss`` and
    ``correct`` as 0-dim tensors on the device (``float()`` them only when needed: each read waits
    for the device). ``on_train_end`` always runs (in a ``finally``); after an error its logs hold
    ``interrupted: True``.

    ``order`` places the callback in fit's list (lower runs first; equal orders keep the order they
    were given in): History -30 and TerminateOnNaN -20 see each epoch first, the user's callbacks sit
    at 0, progress output at 50 and the run folder's writers last (80-90), so those record what the
    others did.
    """

    order: ClassVar[int] = 0
    model: Any  # the Model being trained (not imported: cnnlab.train.model imports this module)
    params: dict
    run_dir: Path | None

    def on_train_begin(self, logs: dict | None = None) -> None: ...
    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None: ...
    def on_train_batch_begin(self, step: int, logs: dict | None = None) -> None: ...
    def on_train_batch_end(self, step: int, logs: dict | None = None) -> None: ...
    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None: ...
    def on_train_end(self, logs: dict | None = None) -> None: ...

    def get_state(self) -> dict | None:
        """What a checkpoint must hold to resume this callback exactly; None for a stateless one."""
        return None

    def set_state(self, state: dict) -> None:
        """Take back what ``get_state`` returned; called after ``on_train_begin`` when resuming."""

    def run_metrics(self) -> dict:
        """Fields this callback adds to the run's metrics.json; asked after on_train_end."""
        return {}


def _overrides(callback: Callback, hook: str) -> bool:
    return getattr(type(callback), hook) is not getattr(Callback, hook)


class CallbackList:
    """Calls every callback's hook in order. Batch hooks go only to callbacks that define them, so a
    fit without per-step callbacks pays no per-step Python calls for them."""

    def __init__(self, callbacks: Sequence[Callback], model: Any, params: dict, run_dir: Path | None):
        self.callbacks = sorted(callbacks, key=lambda callback: callback.order)  # sorted() is stable
        for callback in self.callbacks:
            callback.model, callback.params, callback.run_dir = model, params, run_dir
            if getattr(callback, "wants_callback_list", False):  # e.g. TensorBoard, which logs the others' metrics
                callback.callbacks = self
        self._batch_begin = [c for c in self.callbacks if _overrides(c, _BATCH_HOOKS[0])]
        self._batch_end = [c for c in self.callbacks if _overrides(c, _BATCH_HOOKS[1])]

    def on_train_begin(self, logs=None):
        for callback in self.callbacks:
            callback.on_train_begin(logs)

    def on_epoch_begin(self, epoch, logs=None):
        for callback in self.callbacks:
            callback.on_epoch_begin(epoch, logs)

    def on_train_batch_begin(self, step, logs=None):
        for callback in self._batch_begin:
            callback.on_train_batch_begin(step, logs)

    def on_train_batch_end(self, step, logs=None):
        for callback in self._batch_end:
            callback.on_train_batch_end(step, logs)

    def on_epoch_end(self, epoch, logs=None):
        for callback in self.callbacks:
            callback.on_epoch_end(epoch, logs)

    def on_train_end(self, logs=None):
        for callback in self.callbacks:
            callback.on_train_end(logs)

    def _keys(self) -> list[str]:
        return [f"{i}:{type(c).__name__}" for i, c in enumerate(self.callbacks)]

    def get_state(self) -> dict:
        states = {key: c.get_state() for key, c in zip(self._keys(), self.callbacks, strict=True)}
        return {key: state for key, state in states.items() if state is not None}

    def set_state(self, states: dict) -> None:
        for key, callback in zip(self._keys(), self.callbacks, strict=True):
            if key in states:
                callback.set_state(states[key])

    def run_metrics(self) -> dict:
        return {k: v for callback in self.callbacks for k, v in callback.run_metrics().items()}


class History(Callback):
    """What ``fit`` returns, as in Keras: ``history.history["val_accuracy"]`` is a list per epoch."""

    order = -30

    def __init__(self):
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []
        self.params: dict = {}

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))

    def to_rows(self) -> list[dict[str, float]]:
        return [{"epoch": e + 1, **{k: v[i] for k, v in self.history.items()}} for i, e in enumerate(self.epoch)]

    def get_state(self) -> dict:
        return {"history": self.history, "epoch": self.epoch}

    def set_state(self, state: dict) -> None:
        self.history = {k: list(v) for k, v in state["history"].items()}
        self.epoch = list(state["epoch"])


class ProgbarLogger(Callback):
    """A tqdm bar per epoch (verbose=1) and one line per finished epoch (verbose 1 or 2).

    The bar's running loss is summed on the device and read only when the bar redraws, so the
    progress display adds no per-step wait for the device."""

    order = 50

    def __init__(self, verbose: int = 1):
        self.verbose = verbose
        self.bar = None

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()
        self.seen, self.loss_sum, self.correct = 0, 0.0, 0
        self.steps = steps_per_epoch(self.params["samples"], self.params["batch_size"])
        self.bar = tqdm(
            total=self.steps,
            desc=f"Epoch {epoch + 1}/{self.params['epochs']}",
            leave=False,
            unit="step",
            disable=self.verbose != 1,
            dynamic_ncols=True,
            mininterval=0.5,
        )

    def on_train_batch_end(self, step, logs=None):
        if self.verbose != 1:
            return
        size = logs["size"]
        self.seen += size
        self.loss_sum = self.loss_sum + logs["loss"] * size
        self.correct = self.correct + logs["correct"]
        if self.bar.update(1):  # update() is truthy only when the bar redraws
            self.bar.set_postfix(
                loss=f"{float(self.loss_sum) / self.seen:.4f}",
                accuracy=f"{float(self.correct) / self.seen:.4f}",
                refresh=False,
            )

    def on_epoch_end(self, epoch, logs=None):
        self.bar.close()
        self.bar = None
        seconds = time.perf_counter() - self._started
        shown = " - ".join(f"{k}: {v:.4f}" for k, v in (logs or {}).items())
        print(
            f"Epoch {epoch + 1}/{self.params['epochs']} - {self.steps}/{self.steps} - {seconds:.1f}s - {shown}",
            flush=True,
        )

    def on_train_end(self, logs=None):
        if self.bar is not None:
            self.bar.close()


class TerminateOnNaN(Callback):
    """Stop with TrainingDiverged when an epoch's training loss is NaN or infinite.

    Checked once per epoch, not per batch as Keras does: a per-step check would make every step
    wait for the device."""

    order = -20

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss", 0.0)
        if math.isfinite(loss):
            return
        kept = f"The last good checkpoint (epoch {epoch}) is kept in {self.run_dir}. " if self.run_dir and epoch else ""
        raise TrainingDiverged(
            f"the training loss became {loss} in epoch {epoch + 1}; stopped. {kept}"
            f"Lower the learning rate (now {self.model.learning_rate}) or add BatchNorm/clipping"
        )


class CSVLogger(Callback):
    """history.csv in the run folder, rewritten whole (atomically) after every epoch."""

    order = 85

    def __init__(self, path: str | Path, history: History):
        self.path, self.history = Path(path), history

    def on_epoch_end(self, epoch, logs=None):
        rows = self.history.to_rows()
        write_csv(self.path, rows)


class EarlyStopping(Callback):
    """Stop when the monitored value has not improved for ``patience`` epochs (Keras 3: once
    ``wait >= patience``); with ``restore_best_weights`` the best epoch's weights are put back at
    the end of training, whether or not it stopped early."""

    def __init__(
        self,
        monitor: str = "val_loss",
        patience: int = 3,
        min_delta: float = 0.0,
        restore_best_weights: bool = True,
    ):
        if patience < 0:
            raise ConfigError(f"patience must be >= 0, got {patience}")
        self.monitor, self.patience, self.min_delta = monitor, patience, abs(min_delta)
        self.restore_best_weights = restore_best_weights
        self.sign = 1 if "loss" in monitor else -1  # losses go down, accuracies up

    def on_train_begin(self, logs=None):
        self.best, self.wait, self.best_state, self.stopped_epoch, self.best_epoch = math.inf, 0, None, None, None

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor not in (logs or {}):
            raise ConfigError(f"EarlyStopping monitors {self.monitor!r}, but fit logs only {sorted(logs or {})}")
        value = self.sign * logs[self.monitor]
        self.wait += 1
        if value < self.best - self.min_delta:
            self.best, self.wait, self.best_epoch = value, 0, epoch
            if self.restore_best_weights:
                self.best_state = {k: v.detach().clone() for k, v in self.model.network.state_dict().items()}
            return
        if self.wait >= self.patience and epoch > 0:
            self.model.stop_training = True
            self.stopped_epoch = epoch

    def on_train_end(self, logs=None):
        if not (logs or {}).get("interrupted") and self.restore_best_weights and self.best_state is not None:
            self.model.network.load_state_dict(self.best_state)

    def get_state(self) -> dict:
        return {"best": self.best, "wait": self.wait, "best_epoch": self.best_epoch, "best_state": self.best_state}

    def set_state(self, state: dict) -> None:
        self.best, self.wait, self.best_epoch = float(state["best"]), int(state["wait"]), state["best_epoch"]
        self.best_state = state["best_state"]


class BackupAndRestore(Callback):
    """Checkpoint the whole training state after every epoch and, with ``resume``, continue from the
    newest intact checkpoint: weights, optimizer, random generators, the augmentation's generators
    and every callback's state. Keeps the last two checkpoints, each verified by size and sha256."""

    order = 80

    callbacks: CallbackList  # set by fit: the list whose states the checkpoints hold

    def __init__(self, folder: Path, resume: bool, augment=None, verbose: int = 0):
        self.folder, self.resume, self.augment, self.verbose = Path(folder), resume, augment, verbose

    def on_train_begin(self, logs=None):
        has_checkpoint = (self.folder / CHECKPOINT).exists() or (self.folder / PREVIOUS_CHECKPOINT).exists()
        if not (self.resume and has_checkpoint):
            return
        state = read_checkpoint(self.folder, self.model.device)
        self.model.load_training_state(state, self.folder)
        self.callbacks.set_state(state["callbacks"])
        if state.get("augment") is not None and hasattr(self.augment, "set_state"):
            self.augment.set_state(state["augment"])
        if self.verbose:
            print(f"Resuming {self.folder} after epoch {state['epochs_done']}/{self.params['epochs']}")

    def on_epoch_end(self, epoch, logs=None):
        state = self.model.training_state(epoch + 1)
        state["callbacks"] = self.callbacks.get_state()
        state["augment"] = self.augment.get_state() if hasattr(self.augment, "get_state") else None
        write_checkpoint(self.folder / CHECKPOINT, state)


class RunFolder(Callback):
    """The run folder's config.json (at the start), then weights.safetensors and metrics.json (at a
    completed end, after every other callback, so an EMA or restored best weights are what is saved)."""

    order = 90

    callbacks: CallbackList  # set by fit: the list asked for run_metrics

    def __init__(self, folder: Path, history: History):
        self.folder, self.history = Path(folder), history

    def on_train_begin(self, logs=None):
        model = self.model
        config = model.config.to_dict() if model.config is not None else None
        write_json(
            self.folder / "config.json",
            {
                "model": config,
                "fit": self.params,
                "optimizer": model.optimizer_name,
                "learning_rate": model.learning_rate,
            },
        )

    def on_train_end(self, logs=None):
        if (logs or {}).get("interrupted"):
            return
        self.model.save(self.folder / "weights.safetensors")
        final = {k: v[-1] for k, v in self.history.history.items()}
        metrics = {"epochs_run": len(self.history.epoch), **final, **self.callbacks.run_metrics()}
        write_json(self.folder / "metrics.json", metrics)


class WeightEMA(Callback):
    """Keep an exponential moving average of the weights (and BatchNorm statistics) during training
    and put it into the model at the end: the average sits nearer the flat middle of the minimum
    than the last noisy step does. The average is part of checkpoints, so a resumed run continues it.

    The decay warms up as (1 + n) / (10 + n) after n updates (as TensorFlow's moving averages do),
    so in a short run the average is not dominated by the untrained starting weights. With
    ``every`` > 1 the average is updated every that many steps with ``decay ** every``: the same
    memory in steps, at a fraction of the cost (a full pass over the weights each time).
    """

    def __init__(self, decay: float = 0.98, every: int = 1):
        if not 0 < decay < 1:
            raise ConfigError(f"EMA decay must lie in (0, 1), got {decay}")
        if every < 1:
            raise ConfigError(f"EMA updates every {every} steps: need at least 1")
        self.decay, self.every = decay, every

    def current_decay(self) -> float:
        return min(self.decay**self.every, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def _blend(self, averaged: list[torch.Tensor], current: list[torch.Tensor], _n_averaged) -> None:
        weight = 1 - self.current_decay()
        for average, value in zip(averaged, current, strict=True):
            if average.is_floating_point():
                average.lerp_(value, weight)
            else:  # BatchNorm's batch counter
                average.copy_(value)

    def on_train_begin(self, logs=None):
        self.steps = self.updates = 0
        self.average = AveragedModel(self.model.network, multi_avg_fn=self._blend, use_buffers=True)

    def on_train_batch_end(self, step, logs=None):
        self.steps += 1
        if (self.steps - 1) % self.every:
            return
        self.updates += 1  # the first update copies the weights; blending starts with the second
        self.average.update_parameters(self.model.network)

    def on_train_end(self, logs=None):
        if not (logs or {}).get("interrupted"):
            self.model.network.load_state_dict(self.average.module.state_dict())

    def get_state(self) -> dict:
        return {"average": self.average.state_dict(), "steps": self.steps, "updates": self.updates}

    def set_state(self, state: dict) -> None:
        self.average.load_state_dict(state["average"])
        self.steps, self.updates = int(state["steps"]), int(state["updates"])
