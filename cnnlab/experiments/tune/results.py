"""What a search leaves: the trials table (CSV and text), the best configuration as TOML, and plots."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from cnnlab.core.errors import CnnlabError
from cnnlab.core.files import write_text
from cnnlab.core.tables import text_table
from cnnlab.experiments.tune.objective import DEFAULT_BATCH_SIZE, OUTCOME_KEYS
from cnnlab.experiments.tune.space import BUILD_DEFAULTS, PARAMETERS, augment_spec


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


def trial_columns(rows: list[dict]) -> list[str]:
    """The table's columns: trial, state and outcomes first, then the parameters any row has."""
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
        c for c in trial_columns(rows)
        if any(row.get(c) is not None for row in rows)
        and (not only_varying or c in ("trial", "state", "val_accuracy") or len({_cell(r.get(c)) for r in rows}) > 1)
    ]  # fmt: skip
    return text_table([[_cell(row.get(c)) for c in columns] for row in rows], columns)


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
    write_text(path, "\n".join(lines) + "\n")
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
