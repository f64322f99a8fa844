"""Search settings and the Optuna study that holds every trial (SQLite by default, so a search resumes)."""

from __future__ import annotations

import sqlite3
import time
import warnings
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from cnnlab.carbon.settings import CarbonSettings
from cnnlab.core.errors import ConfigError

ENGINES = ("optuna", "ray")
OBJECTIVES = ("accuracy", "accuracy+energy")
PRUNERS = ("median", "hyperband", "none")


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


def make_sampler(seed: int, trials_so_far: int) -> optuna.samplers.BaseSampler:
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
        sampler=make_sampler(settings.seed, len(existing.trials) if existing else 0),
        pruner=_pruner(settings),
        load_if_exists=True,
    )
    if existing is None:
        study.set_user_attr("settings", recorded)
    return study


def finished_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Trials that ran to an end (completed or pruned): these count towards the requested total."""
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


HEARTBEAT_SECONDS = 10  # a trial whose process died is marked failed 3 heartbeats later
