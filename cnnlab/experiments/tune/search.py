"""Running a search end to end: open or continue the study, run the trials on the chosen engine, and
write the trials table, the best configuration (a TOML file ``cnnlab train --config`` takes) and the plots.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from cnnlab.core.files import write_csv, write_json
from cnnlab.core.locks import folder_lock
from cnnlab.data.split import LabData
from cnnlab.experiments.tune.engines import run_optuna, run_ray
from cnnlab.experiments.tune.objective import build_and_fit
from cnnlab.experiments.tune.results import (
    best_trial,
    pareto_rows,
    train_config,
    trial_columns,
    trial_rows,
    write_plots,
    write_toml,
)
from cnnlab.experiments.tune.space import SearchSpace
from cnnlab.experiments.tune.study import (
    TuneSettings,
    check_sqlite_study,
    finished_trials,
    open_storage,
    open_study,
    set_aside_study,
    storage_url,
)


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
        errors = run_ray(study, storage, space, data, settings, count, out)
    elif count:
        run_optuna(study, space, data, settings, count)

    rows = trial_rows(study, settings.epochs)
    files = {"study": Path(url.removeprefix("sqlite:///"))} if url.startswith("sqlite:///") else {}
    files["trials"] = write_csv(out / "trials.csv", rows, trial_columns(rows))
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
        files["pareto_table"] = write_csv(out / "pareto.csv", pareto, trial_columns(pareto))
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
