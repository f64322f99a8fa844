"""``TensorBoard``: Keras' callback of that name, to watch a long run's curves while it trains.

Epoch values go to ``log_dir`` (step = epoch, 1-based like history.csv's ``epoch`` column), batch values
to ``log_dir/batch`` (step = batches trained since the run began, kept in checkpoints). They need two
folders because of how a resumed run hides what a killed run wrote after its last checkpoint: the new
event file starts with a restart mark (SummaryWriter's ``purge_step``), and TensorBoard then drops every
earlier point at or after that step, whatever its tag; epochs and batches count in different steps.
"""

from __future__ import annotations

import numbers
from pathlib import Path

import numpy as np

from cnnlab.core.errors import ConfigError
from cnnlab.train.callbacks import Callback, CallbackList
from cnnlab.train.distributed import is_main_process

SAMPLE_IMAGES = 16  # images in the grid of training samples


def _summary_writer_class() -> type:
    """PyTorch's SummaryWriter; it needs the tensorboard package, an optional extra of cnnlab."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise ConfigError(
            f"the TensorBoard callback needs the tensorboard package ({error}): pip install 'cnnlab[tensorboard]'"
        ) from error
    return SummaryWriter


def _as_uint8(images) -> np.ndarray:
    """NHWC uint8 images as given; floats are taken as scaled to [-1, 1] (the lab's inputs) and mapped back."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ConfigError(f"sample_images must be NHWC images (4 axes), got shape {images.shape}")
    if images.dtype == np.uint8:
        return images
    return np.clip(np.rint((images + 1) * 127.5), 0, 255).astype(np.uint8)


class TensorBoard(Callback):
    """Write the run's curves for TensorBoard: every epoch's logs (``epoch/loss``, ``epoch/val_accuracy``,
    ...) and learning rate; with ``update_freq=N`` also ``batch/loss`` and ``batch/learning_rate`` every N
    batches; a grid of up to 16 ``sample_images`` (NHWC; uint8, or floats in [-1, 1]) when a run starts
    anew; and at a completed end the other callbacks' numeric run_metrics (energy, CO2eq) as ``run/<key>``.

    ``log_dir`` defaults to ``<run_dir>/tensorboard``. A resumed run appends to it and hides the points a
    killed run wrote after its last checkpoint; a run started anew there hides all earlier points, as its
    history.csv replaces the old one. Only rank 0 of a distributed run writes.
    """

    order = 70  # after the carbon tracker (0) has its figures; before the checkpoint (80), so see _open
    wants_callback_list = True  # CallbackList sets self.callbacks: the run_metrics come from the others
    callbacks: CallbackList

    def __init__(self, log_dir: str | Path | None = None, update_freq: str | int = "epoch",
                 write_images: bool = True, sample_images=None):  # fmt: skip
        if update_freq != "epoch" and (type(update_freq) is not int or update_freq < 1):
            raise ConfigError(f"update_freq is 'epoch' or a number of batches >= 1, got {update_freq!r}")
        self._writer_class = _summary_writer_class()  # fail here, before any data is loaded
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.update_freq, self.write_images, self.sample_images = update_freq, write_images, sample_images
        self.step, self.epochs_done = 0, 0
        self._epochs = self._batches = None

    def on_train_begin(self, logs=None):
        if self.log_dir is None and self.run_dir is None:
            raise ConfigError("TensorBoard needs a folder to write to: give it log_dir=..., or give fit run_dir=...")
        self.folder = self.log_dir or self.run_dir / "tensorboard"
        self.step, self.epochs_done = 0, 0  # a resume sets the step back (set_state) after this

    def on_epoch_begin(self, epoch, logs=None):
        if self._epochs is None and is_main_process():
            self._open(epoch)

    def _open(self, first_epoch: int) -> None:
        """Open the writers when the first epoch to train is known and a resume has restored the step.

        Points from that epoch and batch on are hidden: a killed run wrote them after its last checkpoint
        (epoch points are written before the checkpoint, so none is lost between the two). A run started
        anew (epoch 0) hides every earlier point, sample images included."""
        self._epochs = self._writer_class(self.folder, purge_step=first_epoch + 1 if first_epoch else 0)
        if self.update_freq != "epoch":
            self._batches = self._writer_class(self.folder / "batch", purge_step=self.step + 1)
        if first_epoch == 0 and self.write_images and self.sample_images is not None:
            grid = _as_uint8(self.sample_images[:SAMPLE_IMAGES])
            self._epochs.add_images("samples/training_images", grid, 0, dataformats="NHWC")

    def _learning_rate(self) -> float:
        return float(self.model.optimizer.param_groups[0]["lr"])

    def on_train_batch_end(self, step, logs=None):
        self.step += 1
        if self._batches is not None and self.step % self.update_freq == 0:
            self._batches.add_scalar("batch/loss", float(logs["loss"]), self.step)  # waits for the device
            self._batches.add_scalar("batch/learning_rate", self._learning_rate(), self.step)

    def on_epoch_end(self, epoch, logs=None):
        self.epochs_done = epoch + 1
        if self._epochs is None:
            return
        for key, value in (logs or {}).items():
            self._epochs.add_scalar(f"epoch/{key}", float(value), self.epochs_done)
        self._epochs.add_scalar("epoch/learning_rate", self._learning_rate(), self.epochs_done)
        for writer in self._writers():
            writer.flush()

    def on_train_end(self, logs=None):
        if self._epochs is None:
            return
        if not (logs or {}).get("interrupted"):
            for key, value in self._run_metrics().items():
                self._epochs.add_scalar(f"run/{key}", value, self.epochs_done)
        for writer in self._writers():
            writer.close()
        self._epochs = self._batches = None

    def _writers(self) -> list:
        return [writer for writer in (self._epochs, self._batches) if writer is not None]

    def _run_metrics(self) -> dict[str, float]:
        """The numbers the other callbacks add to metrics.json (text fields such as a status are left out)."""
        fields = {k: v for c in self.callbacks.callbacks if c is not self for k, v in c.run_metrics().items()}
        return {k: float(v) for k, v in fields.items() if isinstance(v, numbers.Real) and not isinstance(v, bool)}

    def get_state(self) -> dict:
        return {"step": self.step}

    def set_state(self, state: dict) -> None:
        self.step = int(state["step"])
