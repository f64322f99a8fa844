"""fit/evaluate/predict: learning on real data, reproducibility, run folders, resume, divergence, bad input."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from cnnlab.data import load_lab_data, to_categorical
from cnnlab.errors import DataError, TrainingDiverged
from cnnlab.models import build_cnn
from cnnlab.training import Callback, EarlyStopping


def _csv_rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def _toy(n=64, size=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(n, size, size, 3)).astype(np.float32)
    y = rng.integers(0, 10, size=n)
    return x, y


@pytest.fixture(scope="module")
def lab_data(cifar10_archive, session_cache):
    return load_lab_data(cifar10_archive, n_train_val=2_700, n_test=500)


@pytest.mark.slow
def test_one_epoch_on_2000_real_images_learns(lab_data):
    model = build_cnn(n_conv_layers=2, n_filters=16, learning_rate=0.001, device="cpu")
    history = model.fit(
        lab_data.x_train[:2000],
        lab_data.y_train[:2000],
        batch_size=20,
        epochs=1,
        validation_data=(lab_data.x_val, lab_data.y_val),
        verbose=0,
    )
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    loss, accuracy = model.evaluate(lab_data.x_test, lab_data.y_test)
    assert accuracy > 0.25, f"1 epoch should be well above chance (10%), got {accuracy:.3f}"
    assert loss < 2.3


def test_one_hot_and_integer_labels_train_the_same():
    x, y = _toy()
    runs = []
    for labels in (y, to_categorical(y), y[:, None]):
        model = build_cnn(device="cpu", seed=1)
        runs.append(model.fit(x, labels, batch_size=16, epochs=1, verbose=0, seed=3).history["loss"])
    assert runs[0] == runs[1] == runs[2]


def test_same_seed_same_history_different_seed_differs():
    x, y = _toy()

    def run(seed):
        return build_cnn(device="cpu", seed=seed).fit(x, y, batch_size=16, epochs=2, verbose=0, seed=seed).history

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_predict_returns_probabilities_and_evaluate_matches():
    x, y = _toy(32)
    model = build_cnn(device="cpu")
    probs = model.predict(x)
    assert probs.shape == (32, 10)
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)
    _, accuracy = model.evaluate(x, y)
    assert accuracy == pytest.approx(float(np.mean(probs.argmax(1) == y)))


def test_validation_split_takes_the_last_part():
    x, y = _toy(40)
    history = build_cnn(device="cpu").fit(x, y, batch_size=10, epochs=1, validation_split=0.25, verbose=0)
    assert history.params["samples"] == 30 and "val_accuracy" in history.history


def test_run_folder_contents(tmp_path):
    x, y = _toy()
    model = build_cnn(device="cpu")
    model.fit(x, y, batch_size=16, epochs=2, validation_data=(x, y), run_dir=tmp_path, verbose=0)
    for name in ("config.json", "history.csv", "metrics.json", "weights.safetensors", "checkpoint.pt"):
        assert (tmp_path / name).exists(), name
    rows = _csv_rows(tmp_path / "history.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"] and "val_accuracy" in rows[0]
    assert json.loads((tmp_path / "metrics.json").read_text())["epochs_run"] == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temp files left behind"


class _Crash(Callback):
    """Simulate a kill after a given epoch (the checkpoint of that epoch is already on disk)."""

    def __init__(self, after_epoch):
        self.after_epoch = after_epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.after_epoch:
            raise KeyboardInterrupt


def test_resume_continues_exactly_where_it_stopped(tmp_path):
    x, y = _toy()
    straight = build_cnn(device="cpu").fit(x, y, batch_size=16, epochs=3, verbose=0, validation_data=(x, y))
    with pytest.raises(KeyboardInterrupt):
        build_cnn(device="cpu").fit(
            x, y, batch_size=16, epochs=3, verbose=0, validation_data=(x, y), run_dir=tmp_path, callbacks=[_Crash(2)]
        )
    resumed = build_cnn(device="cpu").fit(
        x, y, batch_size=16, epochs=3, verbose=0, validation_data=(x, y), run_dir=tmp_path, resume=True
    )
    assert resumed.epoch == [0, 1, 2]
    for key in straight.history:
        np.testing.assert_allclose(resumed.history[key], straight.history[key], rtol=1e-5)


def test_resume_after_a_real_kill(tmp_path, cifar10_archive, session_cache):
    """Kill `cnnlab train` with SIGKILL mid-run; --resume finishes it, losing at most the epoch in progress."""
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "cnnlab.cli",
        "train",
        "--out",
        str(out),
        "--epochs",
        "4",
        "--n-train-val",
        "1200",
        "--n-test",
        "200",
        "--batch-size",
        "20",
        "--quiet",
        "--data",
        str(cifar10_archive),
    ]
    env = {**os.environ, "CNNLAB_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "history.csv").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len(_csv_rows(out / "history.csv"))
    assert 1 <= done < 4, "killed after the first checkpoint, before the end"
    result = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"Resuming {out} after epoch {done}/4" in result.stdout
    assert [r["epoch"] for r in _csv_rows(out / "history.csv")] == ["1", "2", "3", "4"]
    assert json.loads((out / "metrics.json").read_text())["test_accuracy"] > 0


class _Poison(Callback):
    def on_train_batch_begin(self, step, logs=None):
        if len(self.model.history_so_far) == 1:
            with torch.no_grad():
                next(self.model.network.parameters()).fill_(float("nan"))

    def on_epoch_end(self, epoch, logs=None):
        self.model.history_so_far.append(epoch)


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path):
    x, y = _toy()
    model = build_cnn(device="cpu")
    model.history_so_far = []
    with pytest.raises(TrainingDiverged, match=r"became nan in epoch 2.*epoch 1\) is kept.*learning rate"):
        model.fit(x, y, batch_size=16, epochs=3, verbose=0, run_dir=tmp_path, callbacks=[_Poison()])
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["epochs_done"] == 1
    assert all(torch.isfinite(v).all() for v in state["network"].values() if v.is_floating_point())


def test_early_stopping_stops_and_restores_best():
    x, y = _toy(48)
    noise_x, noise_y = _toy(48, seed=9)  # validation on unrelated noise: val_loss soon stops improving
    model = build_cnn(device="cpu", learning_rate=0.05)
    stopper = EarlyStopping(patience=1)
    history = model.fit(
        x, y, batch_size=16, epochs=30, verbose=0, validation_data=(noise_x, noise_y), callbacks=[stopper]
    )
    assert len(history.epoch) < 30 and stopper.stopped_epoch is not None
    best = min(history.history["val_loss"])
    assert model.evaluate(noise_x, noise_y)[0] == pytest.approx(best, rel=1e-4)


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (np.zeros((4, 32, 32, 3), np.uint8), np.zeros(4, int), "scale_images"),
        (np.zeros((4, 32, 32), np.float32), np.zeros(4, int), "batch of images"),
        (np.zeros((4, 3, 32, 32), np.float32), np.zeros(4, int), "channels"),
        (np.zeros((4, 32, 32, 3), np.float32), np.zeros(3, int), "one label per image"),
        (np.zeros((4, 32, 32, 3), np.float32), np.array([0, 1, 2, 10]), "outside 0..9"),
        (np.zeros((4, 32, 32, 3), np.float32), np.array([0.5, 1, 2, 3]), "non-integer"),
    ],
)
def test_bad_training_input(x, y, message):
    with pytest.raises(DataError, match=message):
        build_cnn(device="cpu").fit(x, y, epochs=1, verbose=0)
