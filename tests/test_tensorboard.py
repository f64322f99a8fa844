"""The TensorBoard callback and `cnnlab train --tensorboard`: what the event files hold, read back as TensorBoard reads
them, against history.csv; resuming; the run's carbon fields; rank 0 only; the errors."""

from __future__ import annotations

import contextlib
import csv
import io
import sys
import time

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_training import KillAtEpoch

from cnnlab.cli import main
from cnnlab.core.errors import ConfigError
from cnnlab.models.cnn import build_cnn
from cnnlab.train.callbacks import Callback
from cnnlab.train.tensorboard import TensorBoard

EPOCH_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")
STEPS_PER_EPOCH = 5  # 40 images in batches of 8


def _data(n=40):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(n, 16, 16, 3), dtype=np.uint8), rng.integers(0, 3, size=n)


def _fit(run_dir=None, callbacks=(), resume=False, epochs=3):
    x, y = _data()
    model = build_cnn(input_shape=(16, 16, 3), class_names=["a", "b", "c"], n_conv_layers=1, n_filters=4,
                      n_dense_layers=0, device="cpu")  # fmt: skip
    return model.fit(x, y, batch_size=8, epochs=epochs, verbose=0, validation_data=(x, y), run_dir=run_dir,
                     resume=resume, callbacks=list(callbacks))  # fmt: skip


def _events(folder) -> EventAccumulator:
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def _series(events: EventAccumulator, tag: str) -> tuple[list[int], list[float]]:
    points = events.Scalars(tag)
    return [p.step for p in points], [p.value for p in points]


def _history_csv(run) -> list[dict[str, str]]:
    with open(run / "history.csv") as handle:
        return list(csv.DictReader(handle))


def _assert_epochs_match_history_csv(run, folder=None):
    rows, events = _history_csv(run), _events(folder or run / "tensorboard")
    for key in EPOCH_KEYS:
        steps, values = _series(events, f"epoch/{key}")
        assert steps == [int(row["epoch"]) for row in rows], key
        np.testing.assert_allclose(values, [float(row[key]) for row in rows], rtol=0, atol=1e-6, err_msg=key)


def test_epoch_series_equal_history_csv_and_batches_are_logged_every_n(tmp_path):
    x, _ = _data()
    _fit(tmp_path, [TensorBoard(update_freq=2, sample_images=x[:16])])
    _assert_epochs_match_history_csv(tmp_path)
    events = _events(tmp_path / "tensorboard")
    assert _series(events, "epoch/learning_rate") == ([1, 2, 3], [pytest.approx(0.01)] * 3)
    assert [image.step for image in events.Images("samples/training_images")] == [0]
    batches = _events(tmp_path / "tensorboard" / "batch")
    steps, losses = _series(batches, "batch/loss")
    assert steps == list(range(2, 3 * STEPS_PER_EPOCH + 1, 2)), "every 2nd of 15 batches, counted across epochs"
    assert all(np.isfinite(losses))
    assert _series(batches, "batch/learning_rate")[0] == steps


class KillBeforeCheckpoint(Callback):
    """A kill after TensorBoard has written the points of epoch ``after_epoch + 1`` but before its checkpoint."""

    order = 75

    def __init__(self, after_epoch):
        self.after_epoch = after_epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.after_epoch:
            raise KeyboardInterrupt


def _next_second():
    """Event files are named by the second and then by a counter: a resume within the same second as the killed run
    could get a name that sorts before the killed run's file (counter 10 < 9), and TensorBoard reads files in name
    order. Real resumes come seconds later."""
    time.sleep(1 - time.time() % 1 + 0.01)


@pytest.mark.parametrize("kill", [KillAtEpoch, KillBeforeCheckpoint], ids=["as-epoch-2-begins", "before-checkpoint"])
def test_a_resumed_run_has_one_point_per_epoch_and_continues_the_batch_count(tmp_path, kill):
    """Killed after epoch 1's checkpoint: as epoch 2 begins, or after epoch 2's points were written but not its
    checkpoint. The resume gets the same callbacks (checkpoints find a callback's state by its place in the list)."""
    x, _ = _data()
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path, [TensorBoard(update_freq=2, sample_images=x[:16]), kill(1)])
    _next_second()
    _fit(tmp_path, [TensorBoard(update_freq=2, sample_images=x[:16]), kill(99)], resume=True)
    _assert_epochs_match_history_csv(tmp_path)
    assert len(_events(tmp_path / "tensorboard").Images("samples/training_images")) == 1, "written once, not on resume"
    steps, _ = _series(_events(tmp_path / "tensorboard" / "batch"), "batch/loss")
    assert steps == list(range(2, 3 * STEPS_PER_EPOCH + 1, 2))


class Energy(Callback):
    def run_metrics(self):
        return {"energy_kwh": 0.5, "carbon_status": "ok", "carbon_flag": True}


def test_numeric_run_metrics_of_other_callbacks_are_logged_at_the_end(tmp_path):
    _fit(callbacks=[Energy(), TensorBoard(tmp_path / "logs", write_images=False)], epochs=2)
    events = _events(tmp_path / "logs")
    assert _series(events, "run/energy_kwh") == ([2], [0.5])
    assert not [tag for tag in events.Tags()["scalars"] if tag.startswith("run/") and tag != "run/energy_kwh"]
    assert not events.Tags()["images"] and not (tmp_path / "logs" / "batch").exists()


def test_cli_train_tensorboard_writes_the_run_folders_curves(tmp_path):
    x, y = _data(60)
    np.savez(tmp_path / "tiny.npz", x_train=x, y_train=y % 3, x_test=x[:12], y_test=y[:12] % 3)
    out = tmp_path / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["train", "--data", str(tmp_path / "tiny.npz"), "--epochs", "1", "--quiet", "--n-conv-layers", "1",
                     "--n-filters", "4", "--n-dense-layers", "0", "--out", str(out), "--tensorboard"])  # fmt: skip
    assert code == 0, printed.getvalue()
    assert f"TensorBoard: {out}/tensorboard (tensorboard --logdir {out}/tensorboard)" in printed.getvalue()
    rows, events = _history_csv(out), _events(out / "tensorboard")
    assert _series(events, "epoch/loss") == ([1], [pytest.approx(float(rows[0]["loss"]), abs=1e-6)])
    assert events.Tags()["images"] == ["samples/training_images"]


def test_only_rank_0_writes(tmp_path, monkeypatch):
    monkeypatch.setattr("cnnlab.train.tensorboard.is_main_process", lambda: False)  # as on rank 1 of 2
    _fit(callbacks=[TensorBoard(tmp_path / "logs", update_freq=1)], epochs=1)
    assert not (tmp_path / "logs").exists()


def test_errors_name_the_fix(monkeypatch):
    with pytest.raises(ConfigError, match="give it log_dir=..., or give fit run_dir=..."):
        _fit(callbacks=[TensorBoard()], epochs=1)
    for bad in (0, "batch", 2.0, True):
        with pytest.raises(ConfigError, match="update_freq"):
            TensorBoard(update_freq=bad)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the package were missing
    with pytest.raises(ConfigError, match=r"pip install 'cnnlab\[tensorboard\]'"):
        TensorBoard()
