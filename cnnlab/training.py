"""A Keras-like ``Model`` around a PyTorch network: compile settings, fit, evaluate, predict.

The training loop is written by hand rather than taken from a trainer library on purpose: the lab's
models are tiny, so per-step overhead decides speed, and ``benchmarks/train_speed.py`` holds this
loop to a minimal hand-written one. Data stays in one tensor on the training device; batches are
index slices of it, in NHWC memory, which PyTorch sees as channels_last NCHW for free.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from cnnlab.device import pick_device
from cnnlab.errors import ConfigError, DataError, TrainingDiverged
from cnnlab.files import atomic_write, write_json
from cnnlab.summary import count_params, format_summary

LOSSES = ("categorical_crossentropy", "sparse_categorical_crossentropy")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop", "nadam")
CHECKPOINT = "checkpoint.pt"


class History:
    """What ``fit`` returns, as in Keras: ``history.history["val_accuracy"]`` is a list per epoch."""

    def __init__(self, model: Model | None = None):
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []
        self.model = model
        self.params: dict = {}

    def append(self, epoch: int, logs: dict[str, float]) -> None:
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))

    def to_rows(self) -> list[dict[str, float]]:
        return [
            {"epoch": e + 1, **{k: v[i] for k, v in self.history.items()}} for i, e in enumerate(self.epoch)
        ]


class Callback:
    """Hooks into ``fit``, named as in Keras. Before training starts, fit sets ``self.model``,
    ``self.params`` (batch_size, epochs, samples, seed) and ``self.run_dir`` (None without a run folder)."""

    model: Model
    params: dict
    run_dir: Path | None

    def on_train_begin(self, logs: dict | None = None) -> None: ...
    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None: ...
    def on_train_batch_begin(self, step: int, logs: dict | None = None) -> None: ...
    def on_train_batch_end(self, step: int, logs: dict | None = None) -> None: ...
    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None: ...
    def on_train_end(self, logs: dict | None = None) -> None: ...

    def run_metrics(self) -> dict:
        """Fields this callback adds to the run's metrics.json; asked after on_train_end."""
        return {}


class EarlyStopping(Callback):
    """Stop when the monitored value has not improved for ``patience`` epochs; keep the best weights."""

    def __init__(
        self,
        monitor: str = "val_loss",
        patience: int = 3,
        min_delta: float = 0.0,
        restore_best_weights: bool = True,
    ):
        if patience < 0:
            raise ConfigError(f"patience must be >= 0, got {patience}")
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.restore_best_weights = restore_best_weights
        self.sign = 1 if "loss" in monitor else -1  # losses go down, accuracies up

    def on_train_begin(self, logs=None):
        self.best, self.wait, self.best_state, self.stopped_epoch = math.inf, 0, None, None

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor not in (logs or {}):
            raise ConfigError(
                f"EarlyStopping monitors {self.monitor!r}, but fit logs only {sorted(logs or {})}"
            )
        value = self.sign * logs[self.monitor]
        if value < self.best - self.min_delta:
            self.best, self.wait = value, 0
            if self.restore_best_weights:
                self.best_state = {k: v.detach().clone() for k, v in self.model.network.state_dict().items()}
            return
        self.wait += 1
        if self.wait > self.patience:
            self.model.stop_training = True
            self.stopped_epoch = epoch

    def on_train_end(self, logs=None):
        if self.stopped_epoch is not None and self.best_state is not None:
            self.model.network.load_state_dict(self.best_state)


class Model:
    """A compiled network: Keras' fit/evaluate/predict/summary on PyTorch.

    Inputs are NHWC float arrays (as the lab has them) or tensors; labels are integers or one-hot.
    """

    def __init__(
        self,
        network: nn.Module,
        input_shape: Sequence[int],
        optimizer: str = "adam",
        learning_rate: float = 0.01,
        loss: str = "categorical_crossentropy",
        l2: float = 0.0,
        label_smoothing: float = 0.0,
        weight_decay: float = 0.0,
        config: dict | None = None,
        device: str | torch.device | None = "auto",
        variable_input_size: bool = False,
        mixed_precision: bool = True,
    ):
        if loss not in LOSSES:
            raise ConfigError(f"unknown loss {loss!r}; choose one of {LOSSES} (both take logits internally)")
        if optimizer.lower() not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {optimizer!r}; choose one of {OPTIMIZERS}")
        if learning_rate <= 0 or l2 < 0 or weight_decay < 0 or not 0 <= label_smoothing < 1:
            raise ConfigError(
                "need learning_rate > 0, l2 >= 0, weight_decay >= 0 and 0 <= label_smoothing < 1"
            )
        self.device = pick_device(device)
        self.network = network.to(self.device, memory_format=torch.channels_last)
        self.input_shape = tuple(int(v) for v in input_shape)
        self.optimizer_name, self.learning_rate, self.loss_name = optimizer.lower(), learning_rate, loss
        self.l2, self.label_smoothing, self.weight_decay = l2, label_smoothing, weight_decay
        self.config = dict(config or {})
        self.variable_input_size = variable_input_size
        self.optimizer = self._make_optimizer()
        self.amp_dtype = self._amp_dtype() if mixed_precision else None
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.stop_training = False
        self.history: History | None = None
        # Keras' l2 regularizer penalises kernels only, not biases or BatchNorm.
        self._kernels = [m.weight for m in self.network.modules() if isinstance(m, nn.Conv2d | nn.Linear)]

    # ------------------------------------------------------------------ setup
    def _make_optimizer(self) -> torch.optim.Optimizer:
        params, lr, wd = self.network.parameters(), self.learning_rate, self.weight_decay
        # Keras defaults: Adam/RMSprop epsilon 1e-7, RMSprop rho 0.9.
        return {
            "adam": lambda: torch.optim.Adam(params, lr=lr, eps=1e-7, weight_decay=wd),
            "adamw": lambda: torch.optim.AdamW(params, lr=lr, eps=1e-7, weight_decay=wd or 0.01),
            "nadam": lambda: torch.optim.NAdam(params, lr=lr, eps=1e-7, weight_decay=wd),
            "sgd": lambda: torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=wd),
            "rmsprop": lambda: torch.optim.RMSprop(params, lr=lr, alpha=0.9, eps=1e-7, weight_decay=wd),
        }[self.optimizer_name]()

    def _amp_dtype(self):
        if self.device.type != "cuda":
            return None  # CPU autocast is slower than float32 for these small convs
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()

    # ------------------------------------------------------------------ data
    def _images(self, x, name: str = "x") -> torch.Tensor:
        """NHWC array -> NHWC float tensor on the device (batches are permuted to NCHW views later)."""
        tensor = _as_tensor(x)
        if tensor.dtype == torch.uint8:
            raise DataError(
                f"{name} is uint8 (0..255); scale it first with cnnlab.scale_images(...) to [-1, 1]"
            )
        if tensor.ndim != 4:
            raise DataError(
                f"{name} must be a batch of images (N, height, width, channels), got shape {tuple(tensor.shape)}"
            )
        if tensor.shape[3] != self.input_shape[2]:
            raise DataError(
                f"{name} has {tensor.shape[3]} channels; the model expects {self.input_shape[2]} (NHWC layout)"
            )
        if tuple(tensor.shape[1:3]) != self.input_shape[:2] and not self.variable_input_size:
            raise DataError(
                f"{name} has images of {tensor.shape[1]}x{tensor.shape[2]}, but this model was built for "
                f"{self.input_shape[0]}x{self.input_shape[1]}: its Flatten layer feeds a Dense layer whose size "
                "depends on the image size. Build it with head='gap' (global average pooling) or head='fcn' "
                "to accept any size"
            )
        if not tensor.is_floating_point():
            tensor = tensor.float()
        return tensor.to(self.device, torch.float32).contiguous()

    def _labels(self, y, n: int, name: str = "y") -> torch.Tensor:
        """Integer labels (N,), (N, 1) or one-hot (N, C) -> int64 tensor on the device."""
        labels = _as_tensor(y)
        classes = self.num_classes
        if labels.ndim == 2 and labels.shape[1] == classes:
            labels = labels.argmax(1)
        elif labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 1 or len(labels) != n:
            raise DataError(
                f"{name} must hold one label per image ({n}), as integers or one-hot; got {tuple(labels.shape)}"
            )
        if labels.is_floating_point() and not torch.equal(labels, labels.round()):
            raise DataError(
                f"{name} holds non-integer values; give class indices 0..{classes - 1} or one-hot rows"
            )
        labels = labels.long()
        if n and (labels.min() < 0 or labels.max() >= classes):
            raise DataError(
                f"{name} has labels outside 0..{classes - 1} (min {int(labels.min())}, max {int(labels.max())})"
            )
        return labels.to(self.device)

    @property
    def num_classes(self) -> int:
        return int(self.config.get("num_classes", 10))

    # ------------------------------------------------------------------ steps
    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        if self.l2:
            loss = loss + self.l2 * sum(w.pow(2).sum() for w in self._kernels)
        return loss

    def _train_step(self, images: torch.Tensor, labels: torch.Tensor):
        with self._autocast():
            logits = self.network(images)
        loss = self._loss(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        return loss.detach(), (logits.detach().argmax(1) == labels).sum()

    @torch.no_grad()
    def _logits(self, images: torch.Tensor, batch_size: int) -> torch.Tensor:
        self.network.eval()
        outputs = []
        for start in range(0, len(images), batch_size):
            with self._autocast():
                outputs.append(self.network(images[start : start + batch_size].permute(0, 3, 1, 2)).float())
        return torch.cat(outputs) if outputs else torch.empty(0, self.num_classes, device=self.device)

    def _evaluate_tensors(self, images, labels, batch_size: int) -> dict[str, float]:
        logits = self._logits(images, batch_size)
        loss = self._loss(logits, labels).item() if len(labels) else float("nan")
        return {"loss": loss, "accuracy": (logits.argmax(1) == labels).float().mean().item()}

    # ------------------------------------------------------------------ public API
    def fit(
        self,
        x,
        y,
        batch_size: int = 32,
        epochs: int = 1,
        verbose: int = 1,
        validation_data: tuple | None = None,
        validation_split: float = 0.0,
        shuffle: bool = True,
        callbacks: Sequence[Callback] | None = None,
        seed: int | None = None,
        run_dir: str | os.PathLike | None = None,
        resume: bool = False,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> History:
        """Train; one epoch is one pass over ``x``. Returns a History with loss/accuracy (+ val_*).

        ``augment`` transforms each training batch (NCHW float tensor on the device) and never
        touches validation data. With ``run_dir`` every epoch is checkpointed atomically and
        ``resume=True`` continues a killed run from its last finished epoch.
        """
        if batch_size < 1 or epochs < 0:
            raise ConfigError(f"need batch_size >= 1 and epochs >= 0, got {batch_size} and {epochs}")
        images = self._images(x)
        labels = self._labels(y, len(images))
        if validation_data is not None:
            if validation_split:
                raise ConfigError("give validation_data or validation_split, not both")
            val_images, val_labels = self._images(validation_data[0], "validation x"), None
            val_labels = self._labels(validation_data[1], len(val_images), "validation y")
        elif validation_split:
            if not 0 < validation_split < 1:
                raise ConfigError(f"validation_split must be in (0, 1), got {validation_split}")
            cut = len(images) - int(round(len(images) * validation_split))  # Keras takes the last part
            images, val_images, labels, val_labels = images[:cut], images[cut:], labels[:cut], labels[cut:]
        else:
            val_images = val_labels = None
        if len(images) == 0:
            raise DataError("no training images")

        seed = int(self.config.get("seed") or 0) if seed is None else seed
        torch.manual_seed(seed)
        order = torch.Generator().manual_seed(seed)
        history = History(self)
        history.params = {"batch_size": batch_size, "epochs": epochs, "samples": len(images), "seed": seed}
        run = Path(run_dir) if run_dir else None
        start_epoch = 0
        if run:
            run.mkdir(parents=True, exist_ok=True)
            if resume and (run / CHECKPOINT).exists():
                start_epoch = self._restore(run / CHECKPOINT, history, order)
                if verbose:
                    print(f"Resuming {run} after epoch {start_epoch}/{epochs}")
            write_json(
                run / "config.json",
                {
                    "model": self.config,
                    "fit": history.params,
                    "optimizer": self.optimizer_name,
                    "learning_rate": self.learning_rate,
                },
            )

        callbacks = list(callbacks or [])
        for callback in callbacks:
            callback.model, callback.params, callback.run_dir = self, history.params, run
        self.stop_training = False
        for callback in callbacks:
            callback.on_train_begin()
        steps = math.ceil(len(images) / batch_size)
        eval_batch = max(batch_size, 512)
        for epoch in range(start_epoch, epochs):
            for callback in callbacks:
                callback.on_epoch_begin(epoch)
            started = time.perf_counter()
            self.network.train()
            perm = torch.randperm(len(images), generator=order).to(self.device) if shuffle else None
            loss_sum = torch.zeros((), device=self.device)
            correct = torch.zeros((), dtype=torch.long, device=self.device)
            bar = tqdm(
                total=steps,
                desc=f"Epoch {epoch + 1}/{epochs}",
                leave=False,
                unit="step",
                disable=verbose != 1,
                dynamic_ncols=True,
                mininterval=0.5,
            )
            for step in range(steps):
                index = (
                    perm[step * batch_size : (step + 1) * batch_size]
                    if shuffle
                    else slice(step * batch_size, (step + 1) * batch_size)
                )
                batch_images = images[index].permute(0, 3, 1, 2)  # NHWC memory = channels_last NCHW
                if augment is not None:
                    batch_images = augment(batch_images)
                batch_labels = labels[index]
                for callback in callbacks:
                    callback.on_train_batch_begin(step)
                loss, hits = self._train_step(batch_images, batch_labels)
                for callback in callbacks:
                    callback.on_train_batch_end(step)
                loss_sum += loss * len(batch_labels)
                correct += hits
                if bar.update(1) and verbose == 1:  # update() is truthy only when the bar redraws
                    seen = min((step + 1) * batch_size, len(images))
                    bar.set_postfix(
                        loss=f"{loss_sum.item() / seen:.4f}",
                        accuracy=f"{correct.item() / seen:.4f}",
                        refresh=False,
                    )
            bar.close()
            logs = {"loss": loss_sum.item() / len(images), "accuracy": correct.item() / len(images)}
            if not math.isfinite(logs["loss"]):
                raise TrainingDiverged(
                    f"the training loss became {logs['loss']} in epoch {epoch + 1}; stopped. "
                    + (
                        f"The last good checkpoint (epoch {epoch}) is kept in {run}. "
                        if run and epoch
                        else ""
                    )
                    + f"Lower the learning rate (now {self.learning_rate}) or add BatchNorm/clipping"
                )
            if val_images is not None:
                val = self._evaluate_tensors(val_images, val_labels, eval_batch)
                logs.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
            history.append(epoch, logs)
            for callback in callbacks:
                callback.on_epoch_end(epoch, logs)
            seconds = time.perf_counter() - started
            if verbose:
                shown = " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())
                print(f"Epoch {epoch + 1}/{epochs} - {steps}/{steps} - {seconds:.1f}s - {shown}", flush=True)
            if run:
                self._checkpoint(run, epoch + 1, history, order)
            if self.stop_training:
                break
        for callback in callbacks:
            callback.on_train_end()
        self.history = history
        if run:
            self.save(run / "weights.safetensors")
            final = {k: v[-1] for k, v in history.history.items()}
            extra = {k: v for callback in callbacks for k, v in callback.run_metrics().items()}
            write_json(run / "metrics.json", {"epochs_run": len(history.epoch), **final, **extra})
        return history

    def evaluate(self, x, y, batch_size: int = 512, verbose: int = 0) -> list[float]:
        """[loss, accuracy] on the given data, in inference mode (dropout off, BatchNorm frozen)."""
        images = self._images(x)
        result = self._evaluate_tensors(images, self._labels(y, len(images)), batch_size)
        if verbose:
            print(f"loss: {result['loss']:.4f} - accuracy: {result['accuracy']:.4f}")
        return [result["loss"], result["accuracy"]]

    def predict(self, x, batch_size: int = 512) -> np.ndarray:
        """Class probabilities (softmax of the logits), shape (N, num_classes)."""
        return torch.softmax(self._logits(self._images(x), batch_size), 1).cpu().numpy()

    def summary(self, print_fn: Callable[[str], None] | None = print) -> str:
        text = format_summary(self.network, self.input_shape, title=self.config.get("name", "cnn"))
        if print_fn:
            print_fn(text)
        return text

    def count_params(self):
        return count_params(self.network)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """Weights as safetensors, with the build config in its metadata so ``load_model`` can rebuild."""
        path = Path(path)
        state = {k: v.detach().cpu().contiguous() for k, v in self.network.state_dict().items()}
        meta = {"config": json.dumps(self.config, default=str)}
        atomic_write(path, lambda tmp: save_file(state, tmp, metadata=meta))

    def _checkpoint(self, run: Path, epochs_done: int, history: History, order: torch.Generator) -> None:
        state = {
            "epochs_done": epochs_done,
            "network": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "history": history.history,
            "epoch": history.epoch,
            "torch_rng": torch.get_rng_state(),
            "order_rng": order.get_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "config": self.config,
        }
        atomic_write(run / CHECKPOINT, lambda tmp: torch.save(state, tmp))
        atomic_write(run / "history.csv", lambda tmp: _write_csv(tmp, history.to_rows()))

    def _restore(self, path: Path, history: History, order: torch.Generator) -> int:
        state = torch.load(path, map_location=self.device, weights_only=True)
        if state.get("config") != self.config:
            raise ConfigError(
                f"{path} was written by a different model configuration; resume with the same settings, "
                "or start a new run folder"
            )
        self.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        history.history = {k: list(v) for k, v in state["history"].items()}
        history.epoch = list(state["epoch"])
        torch.set_rng_state(state["torch_rng"])
        order.set_state(state["order_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        return int(state["epochs_done"])


def _as_tensor(data) -> torch.Tensor:
    """A tensor view of an array; read-only arrays (memory-mapped caches) are copied first."""
    if isinstance(data, torch.Tensor):
        return data
    array = np.asarray(data)
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def _write_csv(path: str, rows: list[dict]) -> None:
    with open(path, "w", newline="") as handle:
        if rows:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
