"""Part 8: Hyperparameter search.

A small Optuna search over the lab's CNN settings (the lab's optional part 8): each trial trains a few
epochs and reports its validation accuracy; weak trials are pruned; the best configuration is trained
again once and tested. The study is kept in SQLite, so a killed run continues its search.
"""

from __future__ import annotations

from cnnlab.data.cifar import accuracy_caveat
from cnnlab.experiments.tune.search import tune
from cnnlab.experiments.tune.space import parse_space
from cnnlab.experiments.tune.study import TuneSettings
from cnnlab.lab.context import LabContext
from cnnlab.lab.store import Section, Table

ESTIMATED_SECONDS = {"full": 290, "quick": 35, "tiny": 20}
SPACE = {
    "n_conv_layers": {"low": 1, "high": 4},
    "n_filters": {"low": 8, "high": 32, "log": True},
    "n_dense_layers": {"low": 0, "high": 1},
    "n_nodes": {"low": 32, "high": 128, "step": 32},
    "use_dropout": {"choices": [True, False]},
    "learning_rate": {"low": 1e-3, "high": 3e-2, "log": True},
    "batch_size": {"choices": [32, 64, 128]},
    "augment_strength": {"low": 0.0, "high": 1.0},
}
SHOWN = ("trial", "state", "val_accuracy", "epochs_run", "seconds", *SPACE)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def run(ctx: LabContext) -> Section:
    data = ctx.lab_data()
    caveat = accuracy_caveat(data.source)
    settings = TuneSettings(
        trials=ctx.setting(16, 4, tiny=2), epochs=ctx.setting(4, 1, tiny=1), device=ctx.device, study_name="cnnlab-lab"
    )
    out = ctx.out / "runs" / "tuning"
    result = tune(parse_space(SPACE, "the lab's search space"), data, out, settings)
    figures = [
        (f"runs/tuning/{path.name}", caption)
        for name, caption in (
            ("history", "Validation accuracy of each trial, and the best so far"),
            ("importances", "How much each setting mattered to the validation accuracy"),
        )
        if (path := result.files.get(name))
    ]

    best = result.best
    finished = [row for row in result.rows if row.get("val_accuracy") is not None]
    pruned = sum(row["state"] == "pruned" for row in result.rows)
    worst = min(finished, key=lambda row: row["val_accuracy"])
    part4 = ctx.earlier_facts("cnn")
    compared = ""
    if part4:
        hand_picked = part4["runs"][part4["best"]]
        compared = (
            f" Part 4's best hand-picked run, {part4['best']}, reached {hand_picked['test_accuracy']:.1%} "
            f"after {hand_picked['epochs']} epochs."
        )
    config = ", ".join(f"{key}={_cell(value)}" for key, value in best["config"].items())
    answers = [
        (
            "What did the search find?",
            f"{len(result.rows)} trials of {settings.epochs} epoch{'s' * (settings.epochs > 1)} each ({pruned} pruned "
            f"early by the median rule). Trial {best['trial']} was best with validation accuracy "
            f"{best['val_accuracy']:.1%}: {config}. Trained again and tested once, it scores "
            f"{best['test_accuracy']:.1%} on the test images{caveat}.{compared} This search is kept short; "
            "`cnnlab tune` runs longer ones, with more trials and epochs per trial.",
        ),
        (
            "How much do the settings matter?",
            f"The finished trials' validation accuracies range from {worst['val_accuracy']:.1%} (trial "
            f"{worst['trial']}) to {best['val_accuracy']:.1%} (trial {best['trial']}), on the same data and the same "
            "number of epochs: the choice of settings alone makes that difference"
            + (
                ", and the importance plot shows which settings made most of it."
                if any(name == "importances" for name in result.files)
                else "."
            ),
        ),
    ]
    if result.notes:
        answers.append(("Notes from the search", "; ".join(result.notes)))
    return Section(
        key="tuning",
        title="Part 8: Hyperparameter search",
        intro=f"Optuna (TPE sampler, median pruner) searched {', '.join(SPACE)}; every trial trained "
        f"{settings.epochs} epoch{'s' * (settings.epochs > 1)} on the {len(data.x_train):,} training images and was "
        f"scored on the {len(data.x_val):,} validation images{caveat}. Study: `runs/tuning/study.db`.",
        figures=figures,
        tables=[Table("Trials", list(SHOWN), [[_cell(row.get(key)) for key in SHOWN] for row in result.rows])],
        answers=answers,
        facts={"best": best, "trials": len(result.rows), "pruned": pruned},
    )
