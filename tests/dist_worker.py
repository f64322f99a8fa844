"""Run by tests/test_distributed.py (under torchrun, or as a plain script): trains through cnnlab's API or its
`train` command and leaves what the tests compare. Not a test module itself.

    dist_worker.py fit OUT [--batchnorm] [--batch B] [--epochs E]   fit a tiny model, save each rank's weights
    dist_worker.py cli [--marker FILE] -- TRAIN-ARGS...              `cnnlab train TRAIN-ARGS` plus KillOnce
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnnlab.train.callbacks import Callback

SIZE, CLASSES = 8, 4


def toy_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images whose red channel gives the class away, so the loss can fall within two epochs."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n)
    images = rng.integers(0, 120, (n, SIZE, SIZE, 3)).astype(np.uint8)
    images[..., 0] += (labels * 40).astype(np.uint8)[:, None, None]
    return images, labels


def write_npz(path: Path, n_train: int = 96, n_test: int = 24) -> Path:
    """A data set `cnnlab train --data` takes: Keras' x_train/y_train/x_test/y_test names."""
    (x, y), (x_test, y_test) = toy_data(n_train, 0), toy_data(n_test, 1)
    np.savez(path, x_train=x, y_train=y, x_test=x_test, y_test=y_test)
    return path


def tiny_model(batchnorm: bool):
    """The lab CNN (its conv block has BatchNorm), or a network of the same shape without any: Conv, ReLU,
    MaxPool, Flatten, Dense, no dropout."""
    from cnnlab.models.cnn import build_cnn
    from cnnlab.train.model import Model

    if batchnorm:
        return build_cnn((SIZE, SIZE, 3), n_conv_layers=1, n_filters=4, num_classes=CLASSES, device="cpu", seed=0)
    torch.manual_seed(0)
    network = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, CLASSES)
    )
    return Model(network, (SIZE, SIZE, 3), num_classes=CLASSES, device="cpu", learning_rate=0.01)


class KillOnce(Callback):
    """SIGKILL rank 1 of several after the first step of epoch 2, on the first attempt only: torchrun's
    TORCHELASTIC_RESTART_COUNT says which attempt this is; under Ray a marker file does (made before the kill),
    and the kill waits until Ray has registered epoch 1's checkpoint (a report Ray's controller has not yet
    collected dies with its worker, and Ray then resumes from the checkpoint before it)."""

    def __init__(self, marker: str | None = None):
        self.marker, self.epoch = marker, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, step, logs=None):
        if self.epoch != 1 or step != 0 or self.model.shard.rank != 1:
            return
        if self.marker is None:
            first = os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0"
        else:
            first = not Path(self.marker).exists()
            Path(self.marker).touch()
            if first:  # Ray's controller collects reports every 2 s: wait until it holds epoch 1's checkpoint
                from ray import train

                train.get_all_reported_checkpoints()
        if first:
            os.kill(os.getpid(), signal.SIGKILL)


def fit(out: Path, batchnorm: bool, batch: int, epochs: int) -> None:
    """Fit the tiny model on 64 images as this process's rank; each rank saves its weights and history."""
    from cnnlab.train.distributed import current_shard, init_from_env, leave

    init_from_env("cpu", threads=1)
    x, y = toy_data(64)
    model = tiny_model(batchnorm)
    history = model.fit(x, y, batch_size=batch, epochs=epochs, verbose=0, seed=0, validation_data=toy_data(32, 2))
    state = {k: v.detach().clone() for k, v in model.network.state_dict().items()}
    torch.save({"state": state, "history": history.history}, out / f"rank{current_shard().rank}.pt")
    leave()  # after an error the process just ends: torchrun stops the others


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    fit_parser = sub.add_parser("fit")
    fit_parser.add_argument("out", type=Path)
    fit_parser.add_argument("--batchnorm", action="store_true")
    fit_parser.add_argument("--batch", type=int, default=16)
    fit_parser.add_argument("--epochs", type=int, default=2)
    cli = sub.add_parser("cli")
    cli.add_argument("--marker")
    cli.add_argument("train", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.mode == "fit":
        fit(args.out, args.batchnorm, args.batch, args.epochs)
        return 0
    from cnnlab.cli import build_parser

    train_args = build_parser().parse_args(["--threads", "1", "train", *[a for a in args.train if a != "--"]])
    return train_args.func(train_args, callbacks=[KillOnce(args.marker)])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
