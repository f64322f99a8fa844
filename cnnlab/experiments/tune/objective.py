"""One trial: build the CNN a configuration describes, train it, report each epoch (for pruning) and its energy."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna

from cnnlab.carbon.settings import CarbonSettings
from cnnlab.carbon.tracker import CarbonCallback
from cnnlab.core.errors import TrainingDiverged
from cnnlab.data.split import LabData
from cnnlab.experiments.tune.space import BUILD_DEFAULTS, augmentation_for_strength
from cnnlab.models.cnn import build_cnn
from cnnlab.train.callbacks import Callback
from cnnlab.train.model import Model

DEFAULT_BATCH_SIZE = 32
OUTCOME_KEYS = ("val_accuracy", "epochs_run", "seconds", "energy_kwh", "co2eq_g", "note")


def _energy_so_far(tracker: CarbonCallback) -> dict[str, float]:
    """Energy and CO2eq of the epochs tracked so far; nothing when tracking failed."""
    report = tracker.report
    if report is None or report.status == "failed" or not report.epochs:
        return {}
    return {key: sum(epoch[key] for epoch in report.epochs) for key in ("energy_kwh", "co2eq_g")}


@dataclass(frozen=True)
class TrialOutcome:
    """What one trial measured. ``val_accuracy`` is None only if training diverged in its first epoch."""

    val_accuracy: float | None
    epochs_run: int
    seconds: float
    energy_kwh: float | None = None
    co2eq_g: float | None = None
    note: str | None = None
    stopped_early: bool = False


class _EpochReport(Callback):
    """After each epoch, hand the validation accuracy (and energy so far) to the engine, which may
    answer that the trial should stop; the last epoch is only reported, never judged."""

    def __init__(self, report: Callable[[dict], bool], epochs: int, energy: CarbonCallback):
        self.report, self.epochs, self.energy = report, epochs, energy
        self.metrics: dict[str, Any] = {"val_accuracy": None, "epochs_run": 0, "seconds": 0.0}
        self.stopped = False

    def on_train_begin(self, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.metrics = {
            "val_accuracy": logs["val_accuracy"],
            "epochs_run": epoch + 1,
            "seconds": time.perf_counter() - self.started,
            **_energy_so_far(self.energy),
        }
        if self.report(self.metrics) and epoch + 1 < self.epochs:
            self.stopped = self.model.stop_training = True


def build_and_fit(
    config: dict[str, Any], data: LabData, epochs: int, seed: int, callbacks=(), device: str = "auto"
) -> Model:
    """Build one configuration and train it on data.x_train, validating on data.x_val after each epoch."""
    model = build_cnn(
        input_shape=data.input_shape,
        class_names=data.class_names,
        seed=seed,
        device=device,
        **{key: value for key, value in config.items() if key in BUILD_DEFAULTS},
    )
    model.fit(
        data.x_train,
        data.y_train,
        batch_size=config.get("batch_size", DEFAULT_BATCH_SIZE),
        epochs=epochs,
        verbose=0,
        validation_data=(data.x_val, data.y_val),
        callbacks=list(callbacks),
        seed=seed,
        augment=augmentation_for_strength(config.get("augment_strength", 0.0), seed),
    )
    return model


def train_trial(
    config: dict[str, Any],
    data: LabData,
    epochs: int,
    seed: int = 0,
    report: Callable[[dict], bool] | None = None,
    device: str = "auto",
    carbon: CarbonSettings | None = None,
) -> TrialOutcome:
    """The objective both engines share: train one configuration and measure it on the validation set,
    with its energy and CO2eq tracked by cnnlab.carbon.

    ``report(metrics)`` is called after every epoch; returning True stops the trial early (pruning).
    A diverged training ends the trial early with a note instead of failing the search.
    """
    tracker = CarbonCallback(carbon, verbose=False)
    reporter = _EpochReport(report or (lambda metrics: False), epochs, tracker)
    diverged = False
    try:
        build_and_fit(config, data, epochs, seed, [tracker, reporter], device)  # tracker first: reporter reads it
    except TrainingDiverged:
        tracker.on_train_end()  # fit stopped before its end hooks; close the tracker's open epoch
        diverged = True
    notes = ["diverged"] * diverged
    if tracker.report.status == "failed":
        notes.append(f"energy not tracked ({tracker.report.error})")
    return TrialOutcome(
        **{**reporter.metrics, **_energy_so_far(tracker)},
        note="; ".join(notes) or None,
        stopped_early=reporter.stopped or diverged,
    )


def record_outcome(trial: optuna.Trial, config: dict[str, Any], outcome: TrialOutcome) -> None:
    trial.set_user_attr("config", config)
    for key in OUTCOME_KEYS:
        if getattr(outcome, key) is not None:
            trial.set_user_attr(key, getattr(outcome, key))
