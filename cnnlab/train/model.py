"""A Keras-like ``Model`` around a PyTorch network: compile settings, fit, evaluate, predict, save.

The training loop is written by hand rather than taken from a trainer library on purpose: the lab's
models are tiny, so per-step overhead decides speed, and ``benchmarks/train_speed.py`` holds this
loop to a minimal hand-written one. Everything else fit does (progress, history.csv, checkpoints,
the NaN stop, the run folder's files) is a callback in cnnlab.callbacks. Data stays in one tensor on
the training device (uint8 images stay uint8 there and are scaled per batch); batches are index
slices of it, in NHWC memory, which PyTorch sees as channels_last NCHW for free.

"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from cnnlab.core.errors import ConfigError, DataError
from cnnlab.core.files import atomic_write
from cnnlab.core.runtime import cpu_has_bf16, pick_device
from cnnlab.train.callbacks import (
    BackupAndRestore,
    Callback,
    CallbackList,
    CSVLogger,
    EarlyStopping,
    History,
    ProgbarLogger,
    RunFolder,
    TerminateOnNaN,
)
from cnnlab.train.checkpoint import CHECKPOINT
from cnnlab.train.class_weights import resolve_class_weight
from cnnlab.train.distributed import join, share_buffers, sum_over_ranks
from cnnlab.train.feed import ALONE, Feed, TensorFeed, is_feed
from cnnlab.train.inputs import SYMMETRIC, Preprocessing, class_labels, device_images, nchw, scale_batch
from cnnlab.train.optim import MuonSGD
from cnnlab.train.summary import count_params, format_summary

__all__ = ["CHECKPOINT", "Callback", "EarlyStopping", "History", "Model", "check_compile_settings"]


LOSSES = ("categorical_crossentropy", "sparse_categorical_crossentropy")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop", "nadam", "muon")
MODEL_FORMAT = "cnnlab-model"
MODEL_FORMAT_VERSION = "1"


def check_compile_settings(
    optimizer: str, learning_rate: float, loss: str = LOSSES[0], l2: float = 0.0, weight_decay: float = 0.0,
    label_smoothing: float = 0.0,
) -> None:  # fmt: skip
    """The one place that says which training settings are valid (configs and Model both ask it)."""
    if loss not in LOSSES:
        raise ConfigError(f"unknown loss {loss!r}; choose one of {LOSSES} (both take logits internally)")
    if str(optimizer).lower() not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {optimizer!r}; choose one of {OPTIMIZERS}")
    if not learning_rate > 0 or l2 < 0 or weight_decay < 0 or not 0 <= label_smoothing < 1:
        raise ConfigError("need learning_rate > 0, l2 >= 0, weight_decay >= 0 and 0 <= label_smoothing < 1")


class Model:
    """A compiled network: Keras' fit/evaluate/predict/summary on PyTorch.

    Inputs are NHWC arrays or tensors: uint8 images (kept uint8 on the device and scaled per batch,
    as airbench does) or floats already scaled to [-1, 1]; labels are integers or one-hot.
    ``config`` (a model config such as CNNConfig) describes the network so ``save``/``load_model``
    can rebuild it; a bare network without one needs ``num_classes``.
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
        config: Any | None = None,
        device: str | torch.device | None = "auto",
        variable_input_size: bool = False,
        mixed_precision: bool = True,
        num_classes: int | None = None,
        preprocessing: Preprocessing | None = None,
        filter_lr: float = 0.24,
        cpu_bf16: bool = False,
    ):
        check_compile_settings(optimizer, learning_rate, loss, l2, weight_decay, label_smoothing)
        if config is None and num_classes is None:
            raise ConfigError("a Model needs a config (e.g. CNNConfig) or num_classes")
        self.device = pick_device(device)
        self.network = network.to(self.device, memory_format=torch.channels_last)
        self.input_shape = tuple(int(v) for v in input_shape)
        self.optimizer_name, self.learning_rate, self.loss_name = optimizer.lower(), learning_rate, loss
        self.l2, self.label_smoothing, self.weight_decay = l2, label_smoothing, weight_decay
        self.filter_lr = filter_lr  # Muon's step for conv filters (optimizer "muon"); airbench94_muon's 0.24
        self.cpu_bf16 = cpu_bf16
        self.config = config
        self.num_classes = int(config.num_classes if config is not None else num_classes)
        names = getattr(config, "class_names", None)
        self.class_names: tuple[str, ...] = tuple(names) if names else tuple(str(i) for i in range(self.num_classes))
        self.preprocessing = preprocessing or SYMMETRIC
        self.variable_input_size = variable_input_size
        self.optimizer = self._make_optimizer()
        self.amp_dtype = self._amp_dtype() if mixed_precision else None
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.stop_training = False
        self.history: History | None = None
        self._order = torch.Generator()  # the shuffling order of fit, part of its checkpoints
        self._initial_epoch = 0
        self._class_weights: torch.Tensor | None = None  # fit's class_weight, one per class, training loss only
        self._seed = 0  # fit's seed: feeds that shuffle themselves derive each epoch's order from it
        self.shard = ALONE  # this process's share of each batch in a distributed run
        self._ddp = None  # fit's DistributedDataParallel around the network, for the training step only
        # Keras' l2 regularizer penalises kernels only, not biases or BatchNorm.
        self._kernels = [m.weight for m in self.network.modules() if isinstance(m, nn.Conv2d | nn.Linear)]

    def _make_optimizer(self) -> torch.optim.Optimizer:
        params, lr, wd = self.network.parameters(), self.learning_rate, self.weight_decay
        # Keras defaults: Adam/RMSprop epsilon 1e-7, RMSprop rho 0.9.
        return {
            "adam": lambda: torch.optim.Adam(params, lr=lr, eps=1e-7, weight_decay=wd),
            "adamw": lambda: torch.optim.AdamW(params, lr=lr, eps=1e-7, weight_decay=wd or 0.01),
            "nadam": lambda: torch.optim.NAdam(params, lr=lr, eps=1e-7, weight_decay=wd),
            "sgd": lambda: torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=wd),
            "rmsprop": lambda: torch.optim.RMSprop(params, lr=lr, alpha=0.9, eps=1e-7, weight_decay=wd),
            "muon": lambda: MuonSGD(self.network, lr=lr, filter_lr=self.filter_lr, weight_decay=wd),
        }[self.optimizer_name]()

    def _amp_dtype(self):
        if self.device.type == "cpu":
            # Opt-in: bfloat16 makes RecipeNet's steps 1.6x faster on CPUs with bf16 units; the lab's
            # small models keep float32 so their numbers stay those of the lab.
            return torch.bfloat16 if self.cpu_bf16 and cpu_has_bf16() else None
        if self.device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    @contextmanager
    def in_float32(self):
        """Compute in float32 inside the block, whatever the model's mixed precision (an ONNX export is
        float32, so its parity check compares against this)."""
        saved, self.amp_dtype = self.amp_dtype, None
        try:
            yield self
        finally:
            self.amp_dtype = saved

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()

    def _images(self, x, name: str = "x") -> torch.Tensor:
        """NHWC array -> NHWC tensor on the device: uint8 stays uint8 (``scaled`` makes floats per
        batch), anything else becomes float32. Batches are permuted to NCHW views later."""
        tensor = device_images(x, self.device, name)
        if tensor.dtype == torch.uint8 and self.preprocessing.scale != "symmetric":
            raise DataError(
                f"{name} is uint8, but this model takes {self.preprocessing.scale}-scaled inputs; "
                "prepare them as its preprocessing says"
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
        return tensor

    def scaled(self, images: torch.Tensor) -> torch.Tensor:
        """A batch as the network takes it: uint8 scaled to [-1, 1] (x / 127.5 - 1), floats unchanged."""
        return scale_batch(images)

    def _labels(self, y, n: int, name: str = "y") -> torch.Tensor:
        """Integer labels (N,), (N, 1) or one-hot (N, C) -> int64 tensor on the device."""
        return class_labels(y, n, self.num_classes, name).to(self.device)

    def _fit_data(self, x, y, validation_data, validation_split: float) -> tuple[Feed, Feed | None]:
        """The training and validation feeds: arrays go onto the device, split as Keras splits (the last part);
        a streamed split is taken as it is (its data set made the validation split up front)."""
        if is_feed(x):
            if y is not None or validation_split:
                raise ConfigError("a streamed data set holds its labels and split: give fit(data.train, None, "
                                  "validation_data=data.validation) without y or validation_split")  # fmt: skip
            return x, self._feed(validation_data, "validation x") if validation_data is not None else None
        images = self._images(x)
        labels = self._labels(y, len(images))
        val_feed = None
        if validation_data is not None:
            if validation_split:
                raise ConfigError("give validation_data or validation_split, not both")
            val_feed = self._feed(validation_data, "validation x")
        elif validation_split:
            if not 0 < validation_split < 1:
                raise ConfigError(f"validation_split must be in (0, 1), got {validation_split}")
            cut = len(images) - int(round(len(images) * validation_split))
            images, labels, val_feed = images[:cut], labels[:cut], TensorFeed(images[cut:], labels[cut:])
        if len(images) == 0:
            raise DataError("no training images")
        return TensorFeed(images, labels), val_feed

    def _feed(self, data, name: str = "x") -> Feed:
        """A feed of ``data``: a feed as it is (alone or as ``(feed, None)``), or an (x, y) pair of arrays moved
        onto the device."""
        x, y = (data, None) if is_feed(data) else data
        if is_feed(x):
            return x
        images = self._images(x, name)
        return TensorFeed(images, self._labels(y, len(images), name.replace("x", "y")))

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor | None = None):
        """Cross-entropy (+ the l2 penalty). With ``class_weights`` each image's loss is multiplied by its
        class's weight and averaged over the batch, as Keras does (not divided by the weights' sum)."""
        if logits.ndim == 3:  # an ensemble while training: (members, N, classes), each member on its own
            logits, labels = logits.flatten(0, 1), labels.repeat(len(logits))
        if class_weights is None:
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        else:
            each = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing, reduction="none")
            loss = (each * class_weights[labels]).mean()
        if self.l2:
            loss = loss + self._l2_penalty()
        return loss

    def _train_step(self, images: torch.Tensor, labels: torch.Tensor):
        with self._autocast():
            logits = (self.network if self._ddp is None else self._ddp)(images)
        loss = self._loss(logits, labels, self._class_weights)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        predicted = (logits.detach().mean(0) if logits.ndim == 3 else logits.detach()).argmax(1)
        return loss.detach(), (predicted == labels).sum()

    @torch.no_grad()
    def _logits(self, images: torch.Tensor, batch_size: int) -> torch.Tensor:
        self.network.eval()
        outputs = []
        for start in range(0, len(images), batch_size):
            outputs.append(self._batch_logits(images[start : start + batch_size]))
        return torch.cat(outputs) if outputs else torch.empty(0, self.num_classes, device=self.device)

    def _batch_logits(self, images: torch.Tensor) -> torch.Tensor:
        batch = nchw(self.scaled(images.to(self.device, non_blocking=True)))
        with self._autocast():
            return self.network(batch).float()

    @torch.no_grad()
    def _evaluate_feed(self, feed: Feed, batch_size: int) -> dict[str, float]:
        """Loss and accuracy over a feed, summed batch by batch (this process's shard, then over all ranks)."""
        self.network.eval()
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss sum, hits, images
        for images, labels in feed.batches(batch_size, shard=self.shard):
            logits, labels = self._batch_logits(images), labels.to(self.device, non_blocking=True)
            each = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing, reduction="sum")
            totals += torch.stack([each.double(), (logits.argmax(1) == labels).sum().double(), labels.new_tensor(
                len(labels), dtype=torch.float64)])  # fmt: skip
        loss_sum, hits, count = sum_over_ranks(totals, self.shard).tolist()
        if not count:
            return {"loss": float("nan"), "accuracy": float("nan")}
        penalty = self._l2_penalty().item() if self.l2 else 0.0
        return {"loss": loss_sum / count + penalty, "accuracy": hits / count}

    def _l2_penalty(self) -> torch.Tensor:
        """Keras' kernel_regularizer=l2(...): l2 times the squared kernels, added to the loss once per batch."""
        return self.l2 * sum(w.pow(2).sum() for w in self._kernels)

    def _train_epoch(self, feed: Feed, batch_size: int, shuffle: bool, augment, callbacks: CallbackList, epoch: int):
        """One pass over the training feed; the loss and hit counts are summed on the device and read once at
        the end, so no step waits for the device."""
        self.network.train()
        order = None
        if shuffle and not feed.shuffles_itself:
            order = torch.randperm(feed.samples, generator=self._order)
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss sum, hits, images
        batches = feed.batches(batch_size, order, epoch=epoch, seed=self._seed, shard=self.shard, train=True)
        for step, (images, labels) in enumerate(batches):
            batch_images = nchw(self.scaled(images.to(self.device, non_blocking=True)))  # channels_last NCHW
            if augment is not None:
                batch_images = augment(batch_images)
            batch_labels = labels.to(self.device, non_blocking=True)
            logs = {"size": len(batch_labels)}
            callbacks.on_train_batch_begin(step, logs)
            loss, hits = self._train_step(batch_images, batch_labels)
            totals += torch.stack([loss.double() * logs["size"], hits.double(), totals.new_tensor(logs["size"])])
            logs["loss"], logs["correct"] = loss, hits
            callbacks.on_train_batch_end(step, logs)
        share_buffers(self.network, self.shard)
        loss_sum, hits, count = sum_over_ranks(totals, self.shard).tolist()
        return {"loss": loss_sum / count, "accuracy": hits / count}

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
        class_weight: str | dict | None = None,
    ) -> History:
        """Train; one epoch is one pass over ``x``. Returns a History with loss/accuracy (+ val_*).

        ``x`` holds uint8 NHWC images (scaled per batch on the device) or floats in [-1, 1].
        ``augment`` transforms each training batch (NCHW float tensor on the device) and never
        touches validation data; its get_state/set_state, if it has them, go into checkpoints.
        With ``run_dir`` every epoch is checkpointed (the last two kept, each verified) and
        ``resume=True`` continues a killed run from its last intact checkpoint.
        ``class_weight`` ("balanced" or {class_index: weight}) weighs the training loss per class, as in
        Keras; validation and evaluate stay unweighted. "balanced" counts the training split's labels.
        Run where torch.distributed holds several processes, fit trains as one of them (cnnlab.train.distributed).
        """
        if batch_size < 1 or epochs < 0:
            raise ConfigError(f"need batch_size >= 1 and epochs >= 0, got {batch_size} and {epochs}")
        feed, val_feed = self._fit_data(x, y, validation_data, validation_split)
        weights = resolve_class_weight(class_weight, feed.labels, self.num_classes)  # every feed knows its labels
        self._class_weights = None if weights is None else torch.tensor(weights, device=self.device).float()
        seed = int(getattr(self.config, "seed", None) or 0) if seed is None else seed
        torch.manual_seed(seed)
        self._order, self._initial_epoch, self._seed = torch.Generator().manual_seed(seed), 0, seed
        params = {"batch_size": batch_size, "epochs": epochs, "samples": feed.samples, "seed": seed}
        self.shard, self._ddp = join(self, params, verbose)  # one process of several?
        if weights is not None:
            params["class_weight"] = [float(w) for w in weights]
        run = Path(run_dir) if run_dir else None
        if run:
            run.mkdir(parents=True, exist_ok=True)
        history = History()
        callback_list = self._callback_list(history, list(callbacks or []), verbose, run, resume, augment, params)
        self.history, self.stop_training, completed = history, False, False
        eval_batch = max(batch_size, 512)
        try:
            callback_list.on_train_begin()
            for epoch in range(self._initial_epoch, epochs):
                callback_list.on_epoch_begin(epoch)
                logs = self._train_epoch(feed, batch_size, shuffle, augment, callback_list, epoch)
                if val_feed is not None:
                    val = self._evaluate_feed(val_feed, eval_batch)
                    logs.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
                callback_list.on_epoch_end(epoch, logs)
                if self.stop_training:
                    break
            completed = True
        finally:
            callback_list.on_train_end({} if completed else {"interrupted": True})
            self.shard, self._ddp = ALONE, None  # evaluate and predict after fit run in this process alone
        return history

    def _callback_list(self, history, user, verbose, run, resume, augment, params) -> CallbackList:
        """fit's own callbacks beside the user's; CallbackList puts them in order (``Callback.order``):
        the checkpoint before history.csv, so the csv never shows an epoch a resume would lose. Of several
        processes, rank 0 alone prints and writes the run folder; every rank reads its checkpoint."""
        history.params, main = params, self.shard.rank == 0
        callbacks = [history, TerminateOnNaN(), *user]
        if verbose and main:
            callbacks.append(ProgbarLogger(verbose))
        writers = [BackupAndRestore(run, resume, augment, verbose and main)] if run else []
        if run and main:
            writers.append(RunFolder(run, history))
            callbacks.append(CSVLogger(run / "history.csv", history))
        callback_list = CallbackList([*callbacks, *writers], self, params, run if main else None)
        for writer in writers:
            writer.callbacks = callback_list
        return callback_list

    def evaluate(self, x, y=None, batch_size: int = 512, verbose: int = 0) -> list[float]:
        """[loss, accuracy] on arrays or a feed, in inference mode (dropout off, BatchNorm frozen)."""
        result = self._evaluate_feed(self._feed(x if is_feed(x) else (x, y)), batch_size)
        if verbose:
            print(f"loss: {result['loss']:.4f} - accuracy: {result['accuracy']:.4f}")
        return [result["loss"], result["accuracy"]]

    def predict(self, x, batch_size: int = 512) -> np.ndarray:
        """Class probabilities (softmax of the logits), shape (N, num_classes), of arrays or a feed (in its order)."""
        if is_feed(x):
            return self.predict_feed(x, batch_size)[0]
        return torch.softmax(self._logits(self._images(x), batch_size), 1).cpu().numpy()

    @torch.no_grad()
    def predict_feed(self, feed: Feed, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, labels) of a feed's images, in its order: the labels of the images that decoded (a
        file unreadable while streaming drops out of both)."""
        self.network.eval()
        outputs = [(torch.softmax(self._batch_logits(x), 1).cpu(), y) for x, y in feed.batches(batch_size)]
        if not outputs:
            return np.zeros((0, self.num_classes), np.float32), np.zeros(0, np.int64)
        return torch.cat([p for p, _ in outputs]).numpy(), torch.cat([y for _, y in outputs]).numpy()

    def summary(self, print_fn: Callable[[str], None] | None = print) -> str:
        text = format_summary(self.network, self.input_shape, title=getattr(self.config, "kind", "model"))
        if print_fn:
            print_fn(text)
        return text

    def count_params(self):
        return count_params(self.network)

    def metadata(self) -> dict[str, str]:
        """What a saved model file says about itself, as safetensors metadata (strings only)."""
        if self.config is None:
            raise ConfigError("only a model built from a config (create_model, build_cnn, ...) can be saved")
        from cnnlab.core.version import __version__

        return {
            "format": MODEL_FORMAT,
            "format_version": MODEL_FORMAT_VERSION,
            "kind": self.config.kind,
            "config": json.dumps(self.config.to_dict()),
            "class_names": json.dumps(list(self.class_names)),
            "input_shape": json.dumps(list(self.input_shape)),
            "preprocessing": json.dumps(self.preprocessing.to_dict()),
            "cnnlab_version": __version__,
        }

    def save(self, path: str | os.PathLike) -> None:
        """Weights as safetensors whose metadata describes the model, so ``load_model`` can rebuild it."""
        meta = self.metadata()
        state = {k: v.detach().cpu().contiguous() for k, v in self.network.state_dict().items()}
        atomic_write(Path(path), lambda tmp: save_file(state, tmp, metadata=meta))

    def training_state(self, epochs_done: int) -> dict:
        """Everything fit needs to continue after ``epochs_done`` epochs, as BackupAndRestore saves it."""
        return {
            "epochs_done": epochs_done,
            "network": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "torch_rng": torch.get_rng_state(),
            "order_rng": self._order.get_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "config": self.config.to_dict() if self.config is not None else None,
            "class_weight": self._class_weight_list(),
        }

    def load_training_state(self, state: dict, folder: Path) -> None:
        """Continue from ``training_state``'s dict; ``folder`` names the run in the error when the
        saved model configuration differs from this model's."""
        saved, current = state.get("config"), None
        if self.config is not None:  # read through from_dict, so settings added since then take their old meaning
            current = self.config.to_dict()
            saved = type(self.config).from_dict(saved).to_dict() if saved is not None else None
        if saved != current:
            raise ConfigError(
                f"{folder} was written by a different model configuration; resume with the same settings, "
                "or start a new run folder"
            )
        saved, current = state.get("class_weight"), self._class_weight_list()
        if saved != current:
            raise ConfigError(
                f"{folder} was trained with class weights {_rounded(saved)}, this run has {_rounded(current)}; "
                "resume with the same --class-weight (class_weight), or start a new run folder"
            )
        self.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"].cpu())
        self._order.set_state(state["order_rng"].cpu())
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        self._initial_epoch = int(state["epochs_done"])

    def _class_weight_list(self) -> list[float] | None:
        """fit's class weights as checkpoints hold them: a resume must weigh the loss as the run did."""
        return None if self._class_weights is None else self._class_weights.tolist()


def _rounded(weights: list[float] | None) -> str:
    return "none" if weights is None else "[" + ", ".join(f"{w:.3g}" for w in weights) + "]"
