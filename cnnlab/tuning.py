"""Hyperparameter search for the lab's CNN (lab part 8): a TOML search space, one objective, two engines.

Optuna runs trials in this process and keeps the study in SQLite, so a stopped or crashed search
continues where it was when run again. Ray Tune runs the same objective on the free cores, or on a
Ray cluster, stopping weak trials with ASHA and sampling with Optuna; its trials go into the same
kind of study, so the trials table, the best configuration and the plots are made alike for both.
"""

from __future__ import annotations

import csv
import difflib
import inspect
import io
import logging
import math
import os
import socket
import sqlite3
import time
import tomllib
import warnings
from collections.abc import Callable
from contextlib import closing, redirect_stdout
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from cnnlab.augment import Augmentation, parse_augment_spec
from cnnlab.carbon import CarbonCallback, CarbonSettings
from cnnlab.data import IMAGE_SHAPE, LabData
from cnnlab.device import THREADS_ENV, available_cores, configure_threads
from cnnlab.errors import CnnlabError, ConfigError, TrainingDiverged
from cnnlab.files import atomic_write, write_json
from cnnlab.locks import folder_lock
from cnnlab.models import HEADS, build_cnn
from cnnlab.training import OPTIMIZERS, Callback, Model

ENGINES = ("optuna", "ray")
OBJECTIVES = ("accuracy", "accuracy+energy")
PRUNERS = ("median", "hyperband", "none")
DEFAULT_BATCH_SIZE = 32
OUTCOME_KEYS = ("val_accuracy", "epochs_run", "seconds", "energy_kwh", "co2eq_g", "note")
RAY_TRIAL_KEY = "optuna_trial"  # carries a Ray trial's Optuna trial number in its configuration
HEARTBEAT_SECONDS = 10  # a trial whose process died is marked failed 3 heartbeats later

# ----------------------------------------------------------------------------------- search space


@dataclass(frozen=True)
class Parameter:
    """A setting the search may vary: its type and the values that can work."""

    kind: type
    valid: Callable[[Any], bool]
    rule: str


MAX_CONV_LAYERS = min(IMAGE_SHAPE[:2]).bit_length() - 1  # 2x2 pooling halves 32x32 five times, to 1x1

# Parents come before the settings that depend on them (ACTIVE_WHEN): suggestions follow this order.
PARAMETERS: dict[str, Parameter] = {
    "n_conv_layers": Parameter(
        int,
        lambda v: 1 <= v <= MAX_CONV_LAYERS,
        f"1 to {MAX_CONV_LAYERS}: each conv block halves the {IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]} image with "
        f"2x2 pooling, so {MAX_CONV_LAYERS + 1} blocks would shrink it below 1x1",
    ),
    "n_filters": Parameter(int, lambda v: v >= 1, "at least 1"),
    "n_dense_layers": Parameter(int, lambda v: v >= 0, "0 or more"),
    "n_nodes": Parameter(int, lambda v: v >= 1, "at least 1"),
    "use_dropout": Parameter(bool, lambda v: True, "true or false"),
    "dropout_rate": Parameter(float, lambda v: 0 <= v < 1, "in [0, 1)"),
    "l2": Parameter(float, lambda v: v >= 0, "0 or more"),
    "learning_rate": Parameter(float, lambda v: v > 0, "above 0"),
    "optimizer": Parameter(str, lambda v: v in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
    "head": Parameter(str, lambda v: v in HEADS, f"one of {', '.join(HEADS)}"),
    "batch_size": Parameter(int, lambda v: v >= 1, "at least 1"),
    "augment_strength": Parameter(
        float, lambda v: 0 <= v <= 1, "in [0, 1]: 0 is none, 1 is rotation=20,shift=0.15,flip"
    ),
}
# A setting that matters only when another allows it; suggesting it otherwise would blur importances.
ACTIVE_WHEN: dict[str, tuple[str, Callable[[Any], bool], str]] = {
    "dropout_rate": ("use_dropout", bool, "use_dropout is true"),
    "n_nodes": ("n_dense_layers", lambda v: v > 0, "n_dense_layers is above 0"),
}
NOT_SEARCHABLE = {
    "epochs": "every trial trains for --epochs epochs (the pruner stops weak ones earlier)",
    "seed": "all trials share --seed, so they differ only in the searched settings",
    "augment": "search augment_strength (0 to 1); the best configuration gets the matching augment spec",
}
BUILD_DEFAULTS = {name: p.default for name, p in inspect.signature(build_cnn).parameters.items()}
_TOML_TYPES = {int: (int,), float: (int, float), bool: (bool,), str: (str,)}
_KIND_NAMES = {int: "a whole number", float: "a number", bool: "true or false", str: "a string"}


@dataclass(frozen=True)
class SearchSpace:
    """Searched settings as Optuna distributions, and settings fixed for every trial."""

    distributions: dict[str, BaseDistribution]
    fixed: dict[str, Any]

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """One configuration; a setting with no effect (dropout_rate without dropout) is left out."""
        config: dict[str, Any] = {}
        for name in PARAMETERS:
            if name in ACTIVE_WHEN:
                parent, active, _ = ACTIVE_WHEN[name]
                if not active(config.get(parent, BUILD_DEFAULTS[parent])):
                    continue
            if name in self.fixed:
                config[name] = self.fixed[name]
            elif name in self.distributions:
                config[name] = _suggest(trial, name, self.distributions[name])
        return config


class _DefineByRun:
    """The space as Ray's OptunaSearch wants it: a picklable function of an Optuna trial. The trial's
    number travels in the configuration so results can be filed under it in the study."""

    def __init__(self, space: SearchSpace):
        self.space = space

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        return {**self.space.suggest(trial), RAY_TRIAL_KEY: trial.number}


def _suggest(trial: optuna.Trial, name: str, distribution: BaseDistribution) -> Any:
    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(name, distribution.choices)
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(
            name, distribution.low, distribution.high, step=distribution.step, log=distribution.log
        )
    return trial.suggest_float(name, distribution.low, distribution.high, step=distribution.step, log=distribution.log)


# The lab's search space: what `cnnlab tune` searches without --space (examples/space.toml is this, commented).
DEFAULT_SPACE: dict[str, Any] = {
    "n_conv_layers": {"low": 1, "high": 4},
    "n_filters": {"low": 8, "high": 48, "log": True},
    "n_dense_layers": {"low": 0, "high": 2},
    "n_nodes": {"low": 32, "high": 256, "step": 32},
    "use_dropout": {"choices": [True, False]},
    "dropout_rate": {"low": 0.1, "high": 0.5},
    "batch_size": {"choices": [16, 32, 64, 128]},
    "learning_rate": {"low": 1e-4, "high": 3e-2, "log": True},
    "optimizer": {"choices": ["adam", "sgd", "rmsprop"]},
    "augment_strength": {"low": 0.0, "high": 1.0},
    "head": "flatten",
}


def load_space(path: str | os.PathLike | None = None) -> SearchSpace:
    """Read and check a search-space TOML file (format: examples/space.toml); None is DEFAULT_SPACE."""
    if path is None:
        return parse_space(DEFAULT_SPACE, "the lab's search space")
    path = Path(path)
    try:
        spec = tomllib.loads(path.read_text())
    except OSError as error:
        raise ConfigError(
            f"cannot read search space {path}: {error.strerror}; pass a TOML file like examples/space.toml"
        ) from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from error
    return parse_space(spec, str(path))


def parse_space(spec: dict[str, Any], origin: str = "search space") -> SearchSpace:
    """Check a search space given as a mapping. Each key is a setting; its value is fixed (``3``),
    a range (``{low = 1, high = 4}``, floats may add ``log = true``, either may add ``step``) or
    categorical (``{choices = [...]}``). Raises ConfigError naming the setting and the fix."""
    distributions: dict[str, BaseDistribution] = {}
    fixed: dict[str, Any] = {}
    for name, value in spec.items():
        if name not in PARAMETERS:
            raise ConfigError(_unknown_parameter(name, origin))
        where = f"{origin}: {name}"
        if isinstance(value, dict):
            distributions[name] = _distribution(where, PARAMETERS[name], value)
        else:
            fixed[name] = _checked(where, PARAMETERS[name], value, "value")
    for child, (parent, active, condition) in ACTIVE_WHEN.items():
        possible = _possible_values(parent, distributions, fixed)
        if child in spec and not any(active(v) for v in possible):
            raise ConfigError(
                f"{origin}: {child} would never be used: it matters only when {condition}, and {parent} "
                f"can only be {' or '.join(map(repr, possible))}; search {parent} too, or drop {child}"
            )
    if not distributions:
        raise ConfigError(
            f"{origin}: nothing to search; give at least one setting a range ({{ low = 1, high = 4 }}) "
            "or choices ({ choices = [...] })"
        )
    return SearchSpace(distributions, fixed)


def _unknown_parameter(name: str, origin: str) -> str:
    if name in NOT_SEARCHABLE:
        return f"{origin}: {name} is not searched here: {NOT_SEARCHABLE[name]}"
    close = difflib.get_close_matches(name, PARAMETERS, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{origin}: unknown parameter {name!r}; {hint}searchable settings: {', '.join(PARAMETERS)}"


def _checked(where: str, parameter: Parameter, value: Any, role: str) -> Any:
    """A TOML value of the right type that can work, as the setting's Python type."""
    if isinstance(value, list):
        raise ConfigError(f"{where}: a bare list is ambiguous; write {{ choices = {value} }} to search among them")
    if (isinstance(value, bool) and parameter.kind is not bool) or not isinstance(value, _TOML_TYPES[parameter.kind]):
        raise ConfigError(f"{where}: {role} {value!r} is not {_KIND_NAMES[parameter.kind]}")
    if not parameter.valid(value):
        raise ConfigError(f"{where}: {role} {value!r} cannot work; it must be {parameter.rule}")
    return float(value) if parameter.kind is float else value


def _distribution(where: str, parameter: Parameter, table: dict[str, Any]) -> BaseDistribution:
    keys = set(table)
    if "choices" in keys:
        if keys != {"choices"}:
            raise ConfigError(f"{where}: give choices or a range (low, high), not both; got {sorted(keys)}")
        choices = table["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: choices is empty; list at least one value, e.g. choices = [...]")
        values = [_checked(where, parameter, choice, "choice") for choice in choices]
        if len(set(values)) < len(values):
            raise ConfigError(f"{where}: choices {choices} repeat a value; list each once")
        return CategoricalDistribution(values)
    unknown = keys - {"low", "high", "log", "step"}
    if unknown or not {"low", "high"} <= keys:
        raise ConfigError(
            f"{where}: a range is {{ low = ..., high = ... }} with optional log = true or step = ...; "
            f"got keys {sorted(keys)}" + (f" ({', '.join(sorted(unknown))} unknown)" if unknown else "")
        )
    if parameter.kind in (bool, str):
        raise ConfigError(
            f"{where}: {_KIND_NAMES[parameter.kind]} setting takes choices = [...] or a value, not a range"
        )
    low, high = _checked(where, parameter, table["low"], "low"), _checked(where, parameter, table["high"], "high")
    log, step = table.get("log", False), table.get("step")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false, got {log!r}")
    if low > high:
        raise ConfigError(f"{where}: low ({low}) is above high ({high}); swap them")
    if log and low <= 0:
        raise ConfigError(
            f"{where}: a log range needs low > 0 (the log of {low} is undefined); raise low or drop log = true"
        )
    if step is not None:
        if log:
            raise ConfigError(f"{where}: use log = true or step, not both")
        if isinstance(step, bool) or not isinstance(step, _TOML_TYPES[parameter.kind]) or step <= 0:
            raise ConfigError(f"{where}: step must be a positive {_KIND_NAMES[parameter.kind][2:]}, got {step!r}")
        intervals = (high - low) / step
        if abs(intervals - round(intervals)) > 1e-9:
            raise ConfigError(f"{where}: high - low ({high - low:g}) is not a multiple of step ({step}); adjust high")
    if parameter.kind is int:
        return IntDistribution(low, high, log=log, step=step or 1)
    return FloatDistribution(low, high, log=log, step=None if step is None else float(step))


def _possible_values(name: str, distributions: dict[str, BaseDistribution], fixed: dict[str, Any]) -> list:
    """The values a setting can take: enough to decide whether a dependent setting is ever used."""
    if name in fixed:
        return [fixed[name]]
    distribution = distributions.get(name)
    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    if distribution is not None:
        return [distribution.low, distribution.high]
    return [BUILD_DEFAULTS.get(name, 0.0)]


# ----------------------------------------------------------------------------------- augmentation and energy


def augment_spec(strength: float) -> str | None:
    """augment_strength in [0, 1] as an augment spec for `cnnlab train`: 0 is none, 1 the strongest."""
    if strength <= 0:
        return None
    return f"rotation={20 * strength:.3g},shift={0.15 * strength:.3g},flip"


def _augmentation(strength: float, seed: int) -> Augmentation | None:
    spec = augment_spec(strength)
    return parse_augment_spec(spec, seed=seed) if spec else None


def _energy_so_far(tracker: CarbonCallback) -> dict[str, float]:
    """Energy and CO2eq of the epochs tracked so far; nothing when tracking failed."""
    report = tracker.report
    if report is None or report.status == "failed" or not report.epochs:
        return {}
    return {key: sum(epoch[key] for epoch in report.epochs) for key in ("energy_kwh", "co2eq_g")}


# ----------------------------------------------------------------------------------- the objective


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
        augment=_augmentation(config.get("augment_strength", 0.0), seed),
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


def _record(trial: optuna.Trial, config: dict[str, Any], outcome: TrialOutcome) -> None:
    trial.set_user_attr("config", config)
    for key in OUTCOME_KEYS:
        if getattr(outcome, key) is not None:
            trial.set_user_attr(key, getattr(outcome, key))


# ----------------------------------------------------------------------------------- settings and study


@dataclass(frozen=True)
class TuneSettings:
    """How to search. ``trials`` is the total the study should hold: a rerun only adds the missing ones."""

    trials: int = 20
    epochs: int = 3
    seed: int = 0
    engine: str = "optuna"
    objective: str = "accuracy"
    pruner: str = "median"
    study_name: str = "cnnlab-tune"
    storage: str | None = None  # SQLAlchemy URL or a file path; default: study.db in the output folder
    address: str | None = None  # Ray cluster to join (engine "ray")
    max_concurrent: int | None = None  # Ray trials at once; default: free cores / threads per trial
    device: str = "auto"
    carbon: CarbonSettings = field(default_factory=CarbonSettings)  # how each trial's energy is tracked

    def __post_init__(self):
        if self.trials < 1 or self.epochs < 1:
            raise ConfigError(f"need trials >= 1 and epochs >= 1, got {self.trials} and {self.epochs}")
        for value, allowed, what in (
            (self.engine, ENGINES, "engine"),
            (self.objective, OBJECTIVES, "objective"),
            (self.pruner, PRUNERS, "pruner"),
        ):
            if value not in allowed:
                raise ConfigError(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ConfigError(f"max_concurrent must be at least 1, got {self.max_concurrent}")
        if self.address and self.engine != "ray":
            raise ConfigError("an address joins a Ray cluster; it needs engine 'ray'")

    @property
    def multi_objective(self) -> bool:
        return self.objective == "accuracy+energy"

    @property
    def directions(self) -> list[str]:
        return ["maximize", "minimize"] if self.multi_objective else ["maximize"]


def storage_url(storage: str | None, out: Path) -> str:
    """An SQLAlchemy URL; a plain path means an SQLite file there."""
    if storage and "://" in storage:
        return storage
    path = Path(storage) if storage else out / "study.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path.resolve()}"


def check_sqlite_study(url: str) -> None:
    """Refuse a damaged SQLite study in one line (Optuna would fail deep inside SQLAlchemy).

    SQLite's own quick_check reads every page of the file: a truncated or overwritten database fails it.
    """
    if not url.startswith("sqlite:///"):
        return
    path = Path(url.removeprefix("sqlite:///"))
    if not path.exists() or path.stat().st_size == 0:
        return
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
            verdict = connection.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.DatabaseError as error:
        verdict = str(error)
    if verdict != "ok":
        raise ConfigError(
            f"{path}: the study database is damaged ({verdict}); move it away (its trials are lost) and run again, "
            "or run again with --fresh (it is kept as a .old file beside and a new study starts)"
        )


def set_aside_study(url: str) -> Path | None:
    """Start a new study: rename the SQLite study file to <name>.<time>.old (never delete trials)."""
    path = Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None
    if path is None or not path.exists():
        return None
    kept = path.with_name(f"{path.name}.{time.strftime('%Y%m%d-%H%M%S')}.old")
    path.rename(kept)
    return kept


def _pruner(settings: TuneSettings) -> optuna.pruners.BasePruner:
    if settings.multi_objective or settings.pruner == "none":  # Optuna prunes single objectives only
        return optuna.pruners.NopPruner()
    if settings.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=settings.epochs, reduction_factor=3)
    # Judge nobody on its first epoch, and only against three finished trials.
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2)


def _sampler(seed: int, trials_so_far: int) -> optuna.samplers.BaseSampler:
    # Offsetting the seed by the trials already run keeps a resumed search from repeating the first
    # run's random start-up configurations.
    return optuna.samplers.TPESampler(seed=seed + trials_so_far)


def open_storage(url: str, heartbeat: bool = True) -> optuna.storages.RDBStorage:
    """The study's database. With heartbeats (Optuna's own loop only), a trial whose process died is
    marked failed after a grace period, so it neither counts as finished nor stays running."""
    if not heartbeat:
        return optuna.storages.RDBStorage(url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # Optuna labels heartbeats so
        return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=3 * HEARTBEAT_SECONDS)


def open_study(settings: TuneSettings, storage: optuna.storages.BaseStorage, data_description: dict) -> optuna.Study:
    """Create the study, or load it to continue; refuse one made with other settings or data."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        existing = optuna.load_study(study_name=settings.study_name, storage=storage)
    except KeyError:
        existing = None
    recorded = {"objective": settings.objective, "epochs": settings.epochs, "seed": settings.seed, **data_description}
    if existing is not None:
        before = existing.user_attrs.get("settings", {})
        differ = {k: (before.get(k), v) for k, v in recorded.items() if before.get(k) != v}
        if differ:
            changes = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in differ.items())
            raise ConfigError(
                f"study {settings.study_name!r} was run with other settings ({changes}); its trials "
                "would not be comparable. Rerun with the same settings, or pass a new --study-name"
            )
    study = optuna.create_study(
        storage=storage,
        study_name=settings.study_name,
        directions=settings.directions,
        sampler=_sampler(settings.seed, len(existing.trials) if existing else 0),
        pruner=_pruner(settings),
        load_if_exists=True,
    )
    if existing is None:
        study.set_user_attr("settings", recorded)
    return study


def finished_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Trials that ran to an end (completed or pruned): these count towards the requested total."""
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


# ----------------------------------------------------------------------------------- engines


def _run_optuna(study: optuna.Study, space: SearchSpace, data: LabData, settings: TuneSettings, count: int) -> None:
    def objective(trial: optuna.Trial):
        config = space.suggest(trial)

        def report(metrics: dict) -> bool:
            trial.report(metrics["val_accuracy"], metrics["epochs_run"])
            return trial.should_prune()

        pruning = None if settings.multi_objective else report
        outcome = train_trial(config, data, settings.epochs, settings.seed, pruning, settings.device, settings.carbon)
        _record(trial, config, outcome)
        if outcome.stopped_early:
            raise optuna.TrialPruned(outcome.note or f"stopped after epoch {outcome.epochs_run}")
        if settings.multi_objective:
            if outcome.energy_kwh is None:
                raise CnnlabError(f"trial {trial.number}: {outcome.note}; objective 'accuracy+energy' needs it")
            return outcome.val_accuracy, outcome.energy_kwh
        return outcome.val_accuracy

    with tqdm(total=count, desc="trials", unit="trial", dynamic_ncols=True) as bar:

        def progress(study: optuna.Study, trial: FrozenTrial) -> None:
            bar.update()
            accuracy = trial.user_attrs.get("val_accuracy")
            bar.set_postfix_str(
                f"#{trial.number} {trial.state.name.lower()}"
                + (f" val_accuracy {accuracy:.4f}" if accuracy is not None else "")
            )

        study.optimize(objective, n_trials=count, callbacks=[progress])


def _in_order(config: dict[str, Any]) -> dict[str, Any]:
    """A Ray trial's configuration without the trial number, its settings in PARAMETERS order."""
    return {name: config[name] for name in PARAMETERS if name in config}


def threads_per_trial() -> int:
    """Threads each Ray trial gives PyTorch: $CNNLAB_THREADS, else 1 (many one-thread trials beat
    few many-thread ones on these small models, and oversubscribed cores make torch crawl)."""
    return int(os.environ.get(THREADS_ENV) or 1)


def free_cores() -> int:
    """Cores not already busy: the cores this process may use minus the 1-minute load average."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    return max(1, available_cores() - round(load))


def _ray_trial(config: dict, data: LabData, epochs: int, seed: int, threads: int, carbon: CarbonSettings) -> None:
    """A Ray Tune function trainable: the shared objective, reporting each epoch to Tune (ASHA)."""
    from ray import tune

    configure_threads(threads)
    config = _in_order(config)

    def report(metrics: dict) -> bool:
        tune.report(metrics)
        return False  # ASHA stops trials from Tune's side

    train_trial(config, data, epochs, seed, report, device="cpu", carbon=carbon)


RAY_TOKEN_FILE = Path("~/.ray/auth_token")  # where `ray start` and `ray get-auth-token --generate` keep it


def use_ray_token_if_available() -> bool:
    """Turn on Ray's token authentication for this driver when a token is at hand; True if on.

    Ray (2.5x+) makes `ray start --head` use token authentication whenever a token exists, but a driver
    given an explicit --address never turns it on by itself, so it is refused with "Failed to connect".
    A token is taken from where Ray looks: $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token;
    a cluster without authentication accepts a driver that sends one. $RAY_AUTH_MODE, when set, decides.
    """
    if "RAY_AUTH_MODE" in os.environ:
        return os.environ["RAY_AUTH_MODE"].lower() == "token"
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or RAY_TOKEN_FILE).expanduser()
    if not (os.environ.get("RAY_AUTH_TOKEN") or token_file.is_file()):
        return False
    os.environ["RAY_AUTH_MODE"] = "token"
    try:  # Ray caches its configuration when imported: make it read the environment again, as Ray itself does
        from ray._raylet import Config

        Config.initialize("")
    except ImportError:  # a Ray without token authentication
        pass
    return True


def _check_reachable(address: str) -> None:
    """Fail in one line, in seconds, when nothing listens at the cluster's address (Ray retries for a minute)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address {address!r} is not HOST:PORT (e.g. 127.0.0.1:6379 or ray://head:10001)")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as error:
        raise CnnlabError(
            f"no Ray cluster answers at {address} ({error.strerror or error}); start one on the head machine "
            f"with `ray start --head --port {port}`, or check the address and the firewall"
        ) from error


def _start_ray(ray, address: str | None, local_cpus: int, threads: int) -> None:
    """Start Ray here, or join the cluster at ``address``; a cluster that refuses this driver is one line."""
    token = False
    if address:
        _check_reachable(address)
        token = use_ray_token_if_available()
    try:
        ray.init(
            address=address,
            num_cpus=None if address else local_cpus,
            include_dashboard=False,
            log_to_driver=False,  # trials print nothing useful; failures come back in the results
            logging_level=logging.ERROR,
            runtime_env={"env_vars": {THREADS_ENV: str(threads)}},
        )
    except (ConnectionError, ray.exceptions.AuthenticationError) as error:
        if not address:
            raise
        sent = "the token it was given" if token else "no token (none found)"
        raise CnnlabError(
            f"the Ray cluster at {address} answers but did not accept this driver, which sent {sent} "
            f"({str(error).strip().splitlines()[-1]}); if the cluster uses token authentication, put its token "
            "(`ray get-auth-token` on the head) in $RAY_AUTH_TOKEN or pass --ray-token-file FILE; also check that "
            "this machine runs the same Ray version as the cluster"
        ) from error


def _file_results(tune, storage: optuna.storages.BaseStorage, study_name: str, count: int):
    """A Tune callback that copies each result into the study's trial (as Optuna's engine does) and
    counts finished trials on a progress bar. Tune pickles its callbacks, so the bar is made once it starts."""

    class FileResults(tune.Callback):
        def __init__(self):
            self.storage, self.study_id = storage, storage.get_study_id_from_name(study_name)

        def setup(self, **info):
            self.bar = tqdm(total=count, desc="ray trials", unit="trial", dynamic_ncols=True)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            number = trial.config[RAY_TRIAL_KEY]
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)
            self.storage.set_trial_user_attr(trial_id, "config", _in_order(trial.config))
            for key in OUTCOME_KEYS:
                if key in result:
                    self.storage.set_trial_user_attr(trial_id, key, result[key])

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.bar.update()

        def on_trial_error(self, iteration, trials, trial, **info):
            self.bar.update()

        def on_experiment_end(self, trials, **info):
            self.bar.close()

    return FileResults()


def _run_ray(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    space: SearchSpace,
    data: LabData,
    settings: TuneSettings,
    count: int,
    out: Path,
) -> list[str]:
    """Run ``count`` trials with Ray Tune; returns the error of each trial that failed."""
    try:
        import ray
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler
        from ray.tune.search.optuna import OptunaSearch
    except ImportError as error:
        raise ConfigError(
            f"engine 'ray' needs Ray Tune ({error}); install it with: pip install 'cnnlab[ray]'"
        ) from error

    threads = threads_per_trial()
    started_here = not ray.is_initialized()
    if started_here:
        local_slots = settings.max_concurrent or max(1, free_cores() // threads)
        _start_ray(ray, settings.address, local_slots * threads, threads)
    try:
        concurrency = settings.max_concurrent or max(1, int(ray.cluster_resources().get("CPU", 1)) // threads)
        metric, mode = ("val_accuracy", "max") if not settings.multi_objective else (
            ["val_accuracy", "energy_kwh"], ["max", "min"])  # fmt: skip
        searcher = OptunaSearch(
            _DefineByRun(space),
            metric=metric,
            mode=mode,
            sampler=_sampler(settings.seed, len(study.trials)),
            study_name=study.study_name,
            storage=storage,
        )
        # ASHA stops trials on accuracy alone; a Pareto front needs every trial trained in full.
        scheduler = None if settings.multi_objective else ASHAScheduler(
            metric="val_accuracy", mode="max", max_t=settings.epochs, grace_period=1, reduction_factor=3)  # fmt: skip

        trainable = tune.with_resources(
            tune.with_parameters(
                _ray_trial,
                data=data,
                epochs=settings.epochs,
                seed=settings.seed,
                threads=threads,
                carbon=settings.carbon,
            ),
            {"cpu": threads},
        )
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=count,
                max_concurrent_trials=concurrency,
                reuse_actors=True,  # a new trial in a warm process skips importing torch and codecarbon again
            ),
            run_config=tune.RunConfig(
                name=study.study_name,
                storage_path=str((out / "ray").resolve()),
                verbose=0,
                callbacks=[_file_results(tune, storage, study.study_name, count)],
            ),
        )
        with redirect_stdout(io.StringIO()):  # Tune prints a banner even at verbose=0
            results = tuner.fit()
        return [str(error).strip().splitlines()[-1] for error in results.errors]
    finally:
        if started_here:
            ray.shutdown()


# ----------------------------------------------------------------------------------- results


def trial_rows(study: optuna.Study, epochs: int) -> list[dict[str, Any]]:
    """One row per trial that ran: state, what it measured, and its configuration."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        if trial.state == TrialState.WAITING:
            continue
        attrs = trial.user_attrs
        state = trial.state.name.lower()
        if trial.state == TrialState.COMPLETE and attrs.get("epochs_run", epochs) < epochs:
            state = "pruned"  # Ray's ASHA stops a trial early, and Ray's searcher files it as complete
        rows.append(
            {
                "trial": trial.number,
                "state": state,
                **{k: attrs.get(k) for k in OUTCOME_KEYS},
                **attrs.get("config", trial.params),
            }
        )
    return rows


def _columns(rows: list[dict]) -> list[str]:
    keys = dict.fromkeys(key for row in rows for key in row)
    return [*dict.fromkeys(["trial", "state", *OUTCOME_KEYS]), *(k for k in PARAMETERS if k in keys)]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if 1e-3 <= abs(value) < 1e4 else f"{value:.3g}"
    return str(value)


def format_table(rows: list[dict], only_varying: bool = True) -> str:
    """A fixed-width text table; columns that are empty, or the same in every row, are left out."""
    if not rows:
        return "(no trials)"
    columns = [
        c for c in _columns(rows)
        if any(row.get(c) is not None for row in rows)
        and (not only_varying or c in ("trial", "state", "val_accuracy") or len({_cell(r.get(c)) for r in rows}) > 1)
    ]  # fmt: skip
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(line, widths, strict=True)) for line in cells]
    return "\n".join(lines)


def write_csv(rows: list[dict], path: Path) -> Path:
    columns = _columns(rows)

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows({c: row.get(c) for c in columns} for row in rows)

    atomic_write(path, write)
    return path


def train_config(config: dict[str, Any], epochs: int, seed: int) -> dict[str, Any]:
    """A trial's configuration as `cnnlab train --config` takes it: build_cnn's keywords, then fit's
    batch_size, epochs, seed and augment (augment_strength turned into its spec)."""
    settings = {key: value for key, value in config.items() if key in BUILD_DEFAULTS}
    settings.update(batch_size=config.get("batch_size", DEFAULT_BATCH_SIZE), epochs=epochs, seed=seed)
    spec = augment_spec(config.get("augment_strength", 0.0))
    if spec:
        settings["augment"] = spec
    return settings


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def write_toml(settings: dict[str, Any], path: Path, comment: str) -> Path:
    """Flat scalar keys only, which is all a train config holds (tomllib reads but cannot write)."""
    lines = [f"# {line}" for line in comment.splitlines()]
    lines += [f"{key} = {_toml_value(value)}" for key, value in settings.items()]
    atomic_write(path, lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))
    return path


def best_trial(study: optuna.Study, epochs: int) -> FrozenTrial:
    """The most accurate trial that trained all epochs; with two objectives, the most accurate on the
    Pareto front (the more frugal of equally accurate ones)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    # Ray's searcher files trials that ASHA stopped as complete, with the accuracy of fewer epochs.
    full = [trial for trial in complete if trial.user_attrs.get("epochs_run", epochs) >= epochs]
    if not full:
        raise CnnlabError(
            f"no trial of study {study.study_name!r} trained all {epochs} epochs (all were pruned or failed); "
            "run more trials, widen the space, or use --pruner none"
        )
    if len(study.directions) > 1:
        full = [trial for trial in full if trial.number in {best.number for best in study.best_trials}]
    return max(full, key=lambda trial: (trial.values[0], *(-value for value in trial.values[1:])))


def pareto_rows(study: optuna.Study, epochs: int) -> list[dict[str, Any]]:
    """Trials no other trial beats on both accuracy and energy, most accurate first."""
    front = {trial.number for trial in study.best_trials}
    rows = [row for row in trial_rows(study, epochs) if row["trial"] in front]
    return sorted(rows, key=lambda row: -row["val_accuracy"])


def write_plots(study: optuna.Study, out: Path) -> tuple[dict[str, Path], list[str]]:
    """Optimization history, parameter importances and (two objectives) the Pareto front as PNGs.

    A plot that cannot be made from this study becomes a note instead of an error.
    """
    from optuna.visualization import matplotlib as optuna_plots

    from cnnlab.plots import save_figure

    multi = len(study.directions) > 1
    accuracy = (
        {"target": (lambda t: t.values[0]), "target_name": "val_accuracy"} if multi else {"target_name": "val_accuracy"}
    )
    files, notes = {}, []
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", UserWarning)  # "few trials in some regimes": true of any small study
        plots = {"history": lambda: optuna_plots.plot_optimization_history(study, **accuracy)}
        names = {name for trial in complete for name in trial.params}
        if any(len({repr(trial.params.get(name)) for trial in complete}) > 1 for name in names):
            plots["importances"] = lambda: optuna_plots.plot_param_importances(study, **accuracy)
        else:
            notes.append(
                "parameter importances need at least 2 completed trials whose settings differ; "
                f"this study has {len(complete)} completed"
            )
        if multi:
            plots["pareto"] = lambda: optuna_plots.plot_pareto_front(study, target_names=["val_accuracy", "energy_kwh"])
        for name, plot in plots.items():
            try:
                axes = plot()
            except (RuntimeError, ValueError) as error:
                notes.append(f"{name} plot not made: {error}")
                continue
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
            files[name] = save_figure(figure, out / f"{name}.png")
    return files, notes


# ----------------------------------------------------------------------------------- the search


@dataclass
class TuneResult:
    """What a search produced; the files live in the output folder."""

    rows: list[dict[str, Any]]
    best: dict[str, Any]
    pareto: list[dict[str, Any]]
    finished_before: int
    new_trials: int
    files: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def tune(
    space: SearchSpace,
    data: LabData,
    out: str | os.PathLike,
    settings: TuneSettings | None = None,
    log: Callable[[str], None] | None = None,
    fresh: bool = False,
) -> TuneResult:
    """Search ``space`` until the study holds ``settings.trials`` finished trials, then evaluate the best
    configuration once on the test set and write trials.csv, best.toml, summary.json and plots to ``out``.

    The study lives in ``settings.storage`` (default ``out/study.db``): running again with the same
    study name continues it; ``fresh`` sets an SQLite study aside (renamed, not deleted) and starts anew.
    The output folder is locked while the search runs: a second search into it stops at once.
    """
    settings = settings or TuneSettings()
    with folder_lock(out, what="tuning study folder"):
        return _tune_locked(space, data, Path(out), settings, log, fresh)


def _tune_locked(
    space: SearchSpace, data: LabData, out: Path, settings: TuneSettings, log: Callable[[str], None] | None, fresh: bool
) -> TuneResult:
    url = storage_url(settings.storage, out)
    kept = set_aside_study(url) if fresh else None
    if kept and log:
        log(f"Earlier study set aside as {kept}")
    check_sqlite_study(url)
    described = {"n_train": len(data.x_train), "n_val": len(data.x_val), "data": str(data.source.get("source"))}
    storage = open_storage(url, heartbeat=settings.engine == "optuna")
    study = open_study(settings, storage, described)
    before = len(finished_trials(study))
    count = max(0, settings.trials - before)
    if log:
        log(
            f"Study {settings.study_name!r} ({url}): {before} of {settings.trials} trials finished; "
            + (f"running {count} more with {settings.engine}" if count else "nothing to run, reporting")
        )
    errors: list[str] = []
    if count and settings.engine == "ray":
        errors = _run_ray(study, storage, space, data, settings, count, out)
    elif count:
        _run_optuna(study, space, data, settings, count)

    rows = trial_rows(study, settings.epochs)
    files = {"study": Path(url.removeprefix("sqlite:///"))} if url.startswith("sqlite:///") else {}
    files["trials"] = write_csv(rows, out / "trials.csv")
    trial = best_trial(study, settings.epochs)
    config = train_config(trial.user_attrs.get("config", trial.params), settings.epochs, settings.seed)
    best = {
        "trial": trial.number,
        "val_accuracy": trial.values[0],
        "config": config,
        **_test_once(study, trial, data, settings),
    }
    notes = []
    if not math.isclose(best["retrained_val_accuracy"], best["val_accuracy"], abs_tol=0.02):
        notes.append(
            f"retraining trial {trial.number} gave val_accuracy {best['retrained_val_accuracy']:.4f} against its "
            f"{best['val_accuracy']:.4f}: the trial ran with other threads or hardware"
        )
    comment = (
        f"Best of study {study.study_name!r}: trial {trial.number}, val_accuracy {trial.values[0]:.4f}, "
        f"test_accuracy {best['test_accuracy']:.4f}\n({len(data.x_train)} training images, {settings.epochs} epochs). "
        f"Train it: cnnlab train --config best.toml{_data_flag(data)}"
    )
    files["best"] = write_toml(config, out / "best.toml", comment)
    pareto = pareto_rows(study, settings.epochs) if settings.multi_objective else []
    if pareto:
        files["pareto_table"] = write_csv(pareto, out / "pareto.csv")
    plots, plot_notes = write_plots(study, out)
    files.update(plots)
    notes += plot_notes + [f"trial failed: {error}" for error in errors]
    result = TuneResult(rows, best, pareto, before, count, files, notes)
    write_json(out / "summary.json", {"settings": asdict(settings), "data": data.source, **asdict(result)})
    return result


def _data_flag(data: LabData) -> str:
    """The --data a rerun needs to train on the same data set ('' for CIFAR-10, the default)."""
    if data.source.get("kind", "cifar10") == "cifar10":
        return ""
    return f" --data {data.source.get('path') or data.source.get('source')}"


def _test_once(study: optuna.Study, trial: FrozenTrial, data: LabData, settings: TuneSettings) -> dict[str, float]:
    """Retrain the best configuration as its trial did and measure it on the test set, once: the
    result is kept in the study and reused until another configuration becomes the best."""
    kept = study.user_attrs.get("test_evaluation")
    if kept and kept.get("trial") == trial.number:
        return {k: v for k, v in kept.items() if k != "trial"}
    config = trial.user_attrs.get("config", trial.params)
    model = build_and_fit(config, data, settings.epochs, settings.seed, device=settings.device)
    _, val_accuracy = model.evaluate(data.x_val, data.y_val)
    test_loss, test_accuracy = model.evaluate(data.x_test, data.y_test)
    evaluation = {"retrained_val_accuracy": val_accuracy, "test_accuracy": test_accuracy, "test_loss": test_loss}
    study.set_user_attr("test_evaluation", {"trial": trial.number, **evaluation})
    return evaluation
